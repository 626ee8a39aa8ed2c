"""``CodeSystem/$lookup`` (IHE ITI-98): a concept's display, designations and properties.

See http://hl7.org/fhir/R4/codesystem-operation-lookup.html. Returned besides ``name``,
``version`` and ``display``: the designations, the concept's own properties with their
declared types, ``definition``, and the hierarchy as ``parent``/``child`` properties (with the
neighbour's display as ``description``), so a client can walk a hierarchy one lookup at a time.
``property`` narrows the answer to the listed codes (``designation`` and ``lang.X`` select
designations, per the operation's definition); ``displayLanguage`` picks the display from a
designation in that language when there is one.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.concepts import Concept, Content
from fhir_server.terminology.parameters import param, parameters

_VALUE_KEYS = (
    "valueCode",
    "valueCoding",
    "valueString",
    "valueInteger",
    "valueBoolean",
    "valueDateTime",
    "valueDecimal",
)


def lookup(
    content: Content, code: str, *, display_language: str | None = None, properties: list[str] | None = None
) -> dict[str, Any]:
    """The ``Parameters`` answer for ``code``; ``FhirError`` not-found if the code is not defined."""
    info = content.info
    info.require_codes()
    concept = content.get(code)
    if concept is None:
        raise FhirError("not-found", f"{info.label} has no code {code!r}")
    wanted = set(properties or ())

    def asked(name: str) -> bool:
        return not wanted or name in wanted

    out = [param("name", valueString=info.title or info.name or info.url)]
    if info.version:
        out.append(param("version", valueString=info.version))
    out.append(param("display", valueString=concept.display_for(display_language) or concept.code))
    out += _designations(concept, wanted)
    if concept.definition and asked("definition"):
        out.append(_property("definition", {"valueString": concept.definition}))
    hierarchy = (info.parent_property, info.child_property)
    for prop in concept.properties:
        pcode = prop["code"]
        value = {k: prop[k] for k in _VALUE_KEYS if k in prop}
        if pcode in hierarchy or not value or not asked(pcode):
            continue  # parent/child come from the hierarchy below, whichever way it is written
        out.append(_property(pcode, value))
    out += _neighbours(content, concept, "parent", content.parents(code), asked("parent"))
    out += _neighbours(content, concept, "child", content.children(code), asked("child"))
    return parameters(out)


def _designations(concept: Concept, wanted: set[str]) -> list[dict[str, Any]]:
    languages = {w[5:].lower() for w in wanted if w.startswith("lang.")}
    out = []
    for d in concept.designations:
        language = str(d.get("language") or "")
        if wanted and "designation" not in wanted and language.lower() not in languages:
            continue
        part = []
        if language:
            part.append(param("language", valueCode=language))
        if isinstance(d.get("use"), dict):
            part.append(param("use", valueCoding=d["use"]))
        part.append(param("value", valueString=str(d["value"])))
        out.append(param("designation", part=part))
    return out


def _property(code: str, value: dict[str, Any], description: str | None = None) -> dict[str, Any]:
    part = [param("code", valueCode=code), param("value", **value)]
    if description:
        part.append(param("description", valueString=description))
    return param("property", part=part)


def _neighbours(content: Content, concept: Concept, name: str, codes: list[str], asked: bool) -> list[dict[str, Any]]:
    if not asked or not codes:
        return []
    found = content.get_many(codes)
    return [_property(name, {"valueCode": c}, found[c].display if c in found else None) for c in codes]
