"""``ConceptMap/$translate`` (IHE ITI-101): a code's counterparts through stored ConceptMaps.

See http://hl7.org/fhir/R4/conceptmap-operation-translate.html and
http://hl7.org/fhir/R4/conceptmap.html. Rules this server follows where R4 leaves room:

- A map applies when its declared source/target value sets equal the ``source``/``target``
  parameters (compared without a ``|version``); a map that declares none applies to any.
- Groups are matched on ``group.source`` (and ``sourceVersion`` when both sides give one);
  ``targetsystem`` keeps only groups whose ``target`` is that system.
- ``unmapped`` applies when the group lists no element for the code: mode ``provided`` answers
  the code itself (equivalence ``equal``), ``fixed`` the given code (equivalence ``inexact``:
  R4 names none, and a catch-all code is at most an inexact match), ``other-map`` goes on in
  the named ConceptMap (at most ``MAX_CHAIN`` maps deep).
- ``reverse`` = true reads the maps backwards: the code is looked for among targets and the
  elements that map to it are answered; since the equivalence is stated from source to target,
  its direction is turned (``wider`` becomes ``narrower``, ``subsumes`` becomes
  ``specializes``, and back); the symmetric ones stay.
- ``result`` is true when some match has an equivalence other than ``unmatched``/``disjoint``.
- ``dependsOn`` is not evaluated (the ``dependency`` parameter is not supported): a target with
  dependencies is still answered, and the message says which dependencies it has.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.terminology.parameters import param, parameters
from fhir_server.terminology.validate import Coded

#: how many ConceptMaps an ``unmapped`` ``other-map`` chain may visit
MAX_CHAIN = 4
_NO_MATCH = frozenset({"unmatched", "disjoint"})
_TURNED = {"wider": "narrower", "narrower": "wider", "subsumes": "specializes", "specializes": "subsumes"}


@dataclass
class Match:
    equivalence: str | None
    concept: dict[str, Any] | None
    source: str | None
    products: list[dict[str, Any]]

    def to_json(self) -> dict[str, Any]:
        part = []
        if self.equivalence:
            part.append(param("equivalence", valueCode=self.equivalence))
        if self.concept:
            part.append(param("concept", valueCoding=self.concept))
        for product in self.products:
            inner = []
            if product.get("property"):
                inner.append(param("element", valueUri=product["property"]))
            coding = _coding(product.get("system"), None, product.get("value"), product.get("display"))
            if coding:
                inner.append(param("concept", valueCoding=coding))
            part.append(param("product", part=inner))
        if self.source:
            part.append(param("source", valueUri=self.source))
        return param("match", part=part)


def _coding(system: str | None, version: str | None, code: str | None, display: str | None) -> dict[str, Any] | None:
    if not code:
        return None
    out: dict[str, Any] = {}
    if system:
        out["system"] = system
    if version:
        out["version"] = version
    out["code"] = code
    if display:
        out["display"] = display
    return out


def _bare(canonical: str | None) -> str | None:
    return canonical.split("|", 1)[0] if canonical else None


def _scope(cmap: dict[str, Any], side: str) -> str | None:
    return _bare(cmap.get(f"{side}Uri") or cmap.get(f"{side}Canonical"))


def applies(cmap: dict[str, Any], source: str | None, target: str | None, reverse: bool) -> bool:
    """Whether ``cmap`` maps from value set ``source`` to ``target`` (either may be unknown)."""
    from_side, to_side = ("target", "source") if reverse else ("source", "target")
    for wanted, side in ((source, from_side), (target, to_side)):
        declared = _scope(cmap, side)
        if wanted and declared and _bare(wanted) != declared:
            return False
    return True


def _label(cmap: dict[str, Any]) -> str:
    return str(cmap.get("url") or f"ConceptMap/{cmap.get('id')}")


def _forward(
    cmap: dict[str, Any],
    coded: Coded,
    target_system: str | None,
    resolve: Callable[[str], dict[str, Any] | None],
    depth: int,
) -> tuple[list[Match], list[str]]:
    matches: list[Match] = []
    notes: list[str] = []
    url = cmap.get("url")
    for group in cmap.get("group") or ():
        if group.get("source") and group["source"] != coded.system:
            continue
        if coded.version and group.get("sourceVersion") and group["sourceVersion"] != coded.version:
            continue
        if target_system and group.get("target") != target_system:
            continue
        elements = [e for e in group.get("element") or () if e.get("code") == coded.code]
        for element in elements:
            for target in element.get("target") or ():
                concept = _coding(
                    group.get("target"), group.get("targetVersion"), target.get("code"), target.get("display")
                )
                matches.append(Match(target.get("equivalence"), concept, url, list(target.get("product") or ())))
                if target.get("dependsOn"):
                    needs = ", ".join(str(d.get("property")) for d in target["dependsOn"])
                    notes.append(
                        f"the match to {target.get('code')} in {_label(cmap)} depends on {needs}, which was not checked"
                    )
        if elements:
            continue
        unmapped = group.get("unmapped") or {}
        mode = unmapped.get("mode")
        if mode == "provided":
            matches.append(
                Match("equal", _coding(group.get("target"), group.get("targetVersion"), coded.code, None), url, [])
            )
        elif mode == "fixed":
            concept = _coding(
                group.get("target"), group.get("targetVersion"), unmapped.get("code"), unmapped.get("display")
            )
            matches.append(Match("inexact", concept, url, []))
        elif mode == "other-map" and unmapped.get("url"):
            if depth >= MAX_CHAIN:
                notes.append(f"{_label(cmap)}: unmapped codes go on to {unmapped['url']}, beyond {MAX_CHAIN} maps")
                continue
            other = resolve(unmapped["url"])
            if other is None:
                notes.append(f"{_label(cmap)}: unmapped codes go on to {unmapped['url']}, which is not stored")
                continue
            more, more_notes = _forward(other, coded, target_system, resolve, depth + 1)
            matches += more
            notes += more_notes
    return matches, notes


def _reverse(cmap: dict[str, Any], coded: Coded, target_system: str | None) -> list[Match]:
    matches: list[Match] = []
    url = cmap.get("url")
    for group in cmap.get("group") or ():
        if group.get("target") and group["target"] != coded.system:
            continue
        if coded.version and group.get("targetVersion") and group["targetVersion"] != coded.version:
            continue
        if target_system and group.get("source") != target_system:
            continue
        for element in group.get("element") or ():
            for target in element.get("target") or ():
                if target.get("code") != coded.code:
                    continue
                equivalence = target.get("equivalence")
                concept = _coding(
                    group.get("source"), group.get("sourceVersion"), element.get("code"), element.get("display")
                )
                matches.append(Match(_TURNED.get(equivalence, equivalence), concept, url, []))
    return matches


def translate(
    maps: list[dict[str, Any]],
    codings: list[Coded],
    *,
    source: str | None = None,
    target: str | None = None,
    target_system: str | None = None,
    reverse: bool = False,
    resolve: Callable[[str], dict[str, Any] | None] = lambda _url: None,
) -> dict[str, Any]:
    """The ``Parameters`` answer: every match of every coding in every applicable map."""
    matches: list[Match] = []
    notes: list[str] = []
    usable = [m for m in maps if applies(m, source, target, reverse)]
    for cmap in maps:
        if cmap not in usable:
            notes.append(f"{_label(cmap)} does not map from {source or 'any value set'} to {target or 'any value set'}")
    for coded in codings:
        for cmap in usable:
            if reverse:
                matches += _reverse(cmap, coded, target_system)
            else:
                found, more = _forward(cmap, coded, target_system, resolve, 1)
                matches += found
                notes += more
    result = any(m.equivalence not in _NO_MATCH for m in matches)
    out = [param("result", valueBoolean=result)]
    if not result:
        where = ", ".join(_label(m) for m in usable) or "no applicable ConceptMap"
        asked = ", ".join(c.label for c in codings)
        notes.insert(0, f"No {'reverse ' if reverse else ''}translation of {asked} found in {where}")
    if notes:
        out.append(param("message", valueString="; ".join(notes)))
    out += [m.to_json() for m in matches]
    return parameters(out)
