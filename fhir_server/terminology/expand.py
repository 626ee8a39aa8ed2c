"""``ValueSet/$expand`` (IHE ITI-97): a value set's codes with displays, filtered, paged, nested.

See http://hl7.org/fhir/R4/valueset-operation-expand.html. Two ways to the codes:

- A value set that includes whole code systems (``include.system`` with nothing else, no
  ``exclude``; every "all codes" ValueSet of ours is one) is answered by its CodeSystems'
  ``Content``: counts and pages come from the concept rows, so paging through all of LOINC and
  ``filter`` on it read one page, never the whole system. Unless ``excludeNested`` is true, a
  hierarchical system comes back nested (``contains.contains``), each code under its first
  parent in document order, so each code appears once and ``total`` counts codes. As the
  operation's definition says, paging only applies to flat expansions: a request with
  ``offset``/``count`` or ``filter`` gets a flat page.
- Any other value set is evaluated with the same compose code as the ``:in`` search modifier
  (``service.py``), up to ``MAX_EXPANSION`` codes, then decorated with displays, designations
  and status from the stored CodeSystems, the compose's listed concepts (whose display, if
  given, wins, as ``ValueSet.compose.include.concept.display`` says) or a stored expansion.

Order is stable (code system in compose order, then document order, else listed order, then
code), so ``offset``/``count`` pages never overlap or skip. ``filter`` matches every word
(case- and accent-insensitive, as substrings, so Chinese works) against the code, display and
designations. Without ``count``, an expansion larger than ``MAX_EXPANSION`` is refused as
too-costly (422) naming the limit; ``count`` is capped at the same limit.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session
from fhir_server.terminology.compose import TooMany
from fhir_server.terminology.concepts import Concept, Content, filter_words, fold, matches
from fhir_server.terminology.expansion import expansion_codes, is_complete
from fhir_server.terminology.locate import open_codesystem
from fhir_server.terminology.parameters import too_costly, unprocessable
from fhir_server.terminology.service import MAX_CODES, _Evaluation
from fhir_server.terminology.store import Matcher, NotStored
from fhir_server.util.clock import instant, now_us

#: the most codes one expansion (or one page of it) returns
MAX_EXPANSION = MAX_CODES
#: ValueSet elements copied into the answer (the definition, ``compose``, is not: includeDefinition is not supported)
_KEPT = (
    "id",
    "url",
    "identifier",
    "version",
    "name",
    "title",
    "status",
    "experimental",
    "date",
    "publisher",
    "description",
)


@dataclass
class ExpandOptions:
    """The ``$expand`` parameters that shape the answer."""

    filter: str | None = None
    offset: int = 0
    count: int | None = None
    include_designations: bool = False
    active_only: bool = False
    exclude_nested: bool = False
    display_language: str | None = None
    #: parameters to echo in ``expansion.parameter`` as given (name, value element)
    echo: list[dict[str, Any]] = field(default_factory=list)

    @property
    def paged(self) -> bool:
        return self.count is not None or self.offset > 0


@dataclass
class Entry:
    """One code of the expansion, before it becomes a ``contains`` element."""

    system: str | None
    code: str
    display: str | None = None
    version: str | None = None
    inactive: bool = False
    abstract: bool = False
    designations: list[dict[str, Any]] = field(default_factory=list)
    children: list[Entry] = field(default_factory=list)

    @classmethod
    def of(cls, system: str, version: str | None, concept: Concept, language: str | None) -> Entry:
        return cls(
            system,
            concept.code,
            concept.display_for(language),
            version,
            concept.inactive,
            concept.abstract,
            concept.designations,
        )

    def to_json(self, designations: bool) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.system:
            out["system"] = self.system
        if self.abstract:
            out["abstract"] = True
        if self.inactive:
            out["inactive"] = True
        if self.version:
            out["version"] = self.version
        out["code"] = self.code
        if self.display:
            out["display"] = self.display
        if designations and self.designations:
            out["designation"] = [{k: d[k] for k in ("language", "use", "value") if k in d} for d in self.designations]
        if self.children:
            out["contains"] = [c.to_json(designations) for c in self.children]
        return out


def whole_systems(valueset: dict[str, Any]) -> list[tuple[str, str | None]] | None:
    """(system, version) of each include, if the value set is only whole code systems."""
    expansion = valueset.get("expansion")
    if isinstance(expansion, dict) and is_complete(expansion, len(expansion_codes(expansion))):
        return None  # a complete stored expansion is the value set's own answer
    compose = valueset.get("compose")
    if not isinstance(compose, dict) or compose.get("exclude") or not compose.get("include"):
        return None
    parts = []
    for include in compose["include"]:
        if not isinstance(include, dict) or not include.get("system"):
            return None
        if set(include) - {"system", "version", "id", "extension"}:
            return None
        parts.append((include["system"], include.get("version")))
    return parts


def label_of(valueset: dict[str, Any]) -> str:
    url = valueset.get("url")
    if url:
        return f"ValueSet {url}" + (f"|{valueset['version']}" if valueset.get("version") else "")
    return f"ValueSet/{valueset['id']}" if valueset.get("id") else "the ValueSet given"


def open_included(session: Session, system: str, version: str | None, label: str, search: Matcher | None) -> Content:
    """The content of a CodeSystem a value set includes; a missing one makes the value set
    impossible to expand (422, "SHALL return an error" in the operation's definition)."""
    try:
        content = open_codesystem(session, system, version, search=search)
        content.info.require_codes()
    except FhirError as err:
        raise unprocessable(err, label) from None
    return content


def expand(
    session: Session,
    valueset: dict[str, Any],
    options: ExpandOptions,
    search: Matcher | None = None,
    *,
    reference: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """The ValueSet with its ``expansion``. ``reference`` names a stored value set (its
    evaluation is cached); without it ``valueset`` was given in the request. ``limit``:
    ``MAX_EXPANSION`` unless given."""
    limit = MAX_EXPANSION if limit is None else limit
    if options.count is not None and options.count > limit:
        raise too_costly(label_of(valueset), None, limit)
    label = label_of(valueset)
    used: dict[str, None] = {}
    parts = whole_systems(valueset)
    if parts is not None:
        total, entries = _from_systems(session, valueset, parts, options, label, limit, used, search)
    else:
        total, entries = _from_compose(session, valueset, options, label, limit, used, search, reference)
    return _answer(valueset, options, total, entries, used)


def _from_systems(
    session: Session,
    valueset: dict[str, Any],
    parts: list[tuple[str, str | None]],
    options: ExpandOptions,
    label: str,
    limit: int,
    used: dict[str, None],
    search: Matcher | None,
) -> tuple[int, list[Entry]]:
    contents: list[tuple[str, Content]] = []
    for system, version in parts:
        content = open_included(session, system, version, label, search)
        if all(c.info != content.info for _, c in contents):
            contents.append((system, content))
            used[f"{content.info.url}|{content.info.version}" if content.info.version else content.info.url] = None
    drop_inactive = options.active_only or valueset["compose"].get("inactive") is False
    words = filter_words(options.filter)
    if options.count is None:  # the whole expansion is asked for: refuse it before reading it
        size = sum(content.count(words, drop_inactive) for _, content in contents)
        if size - options.offset > limit:
            raise too_costly(label, size, limit)
    take = options.count if options.count is not None else limit
    nest = not options.exclude_nested and not options.paged and not words
    total = taken = 0
    entries: list[Entry] = []
    skip = options.offset
    for system, content in contents:
        size, concepts = content.page(words, drop_inactive, skip, take - taken)
        total += size
        taken += len(concepts)
        skip = max(skip - size, 0)
        page = [Entry.of(system, content.info.version, c, options.display_language) for c in concepts]
        entries += _nest(page, content.edges()) if nest and page else page
    return total, entries


def _nest(entries: list[Entry], edges: list[tuple[str, str]]) -> list[Entry]:
    """Entries as a forest: each under its first parent (edges come in document order)."""
    if not edges:
        return entries
    by_code = {e.code: e for e in entries}
    parent_of: dict[str, str] = {}
    for parent, child in edges:
        if child in by_code and parent in by_code and child not in parent_of:
            parent_of[child] = parent
    placed: set[str] = set()
    roots: list[Entry] = []

    def place(root: Entry) -> None:
        # iterative: hierarchies can be deep; a cycle cannot loop because placed codes are skipped
        stack = [root]
        placed.add(root.code)
        while stack:
            node = stack.pop()
            kids = [by_code[c] for c in kids_of.get(node.code, ()) if c not in placed]
            for kid in kids:
                placed.add(kid.code)
            node.children = kids
            stack.extend(reversed(kids))

    kids_of: dict[str, list[str]] = {}
    for entry in entries:
        if entry.code in parent_of:
            kids_of.setdefault(parent_of[entry.code], []).append(entry.code)
    for entry in entries:
        if entry.code not in parent_of:
            roots.append(entry)
            place(entry)
    for entry in entries:  # codes only reachable through a cycle: shown at the top, not lost
        if entry.code not in placed:
            roots.append(entry)
            place(entry)
    return roots


def composed_pairs(
    session: Session,
    valueset: dict[str, Any],
    label: str,
    limit: int,
    search: Matcher | None,
    reference: str | None,
) -> frozenset[tuple[str | None, str]]:
    """The (system, code) pairs of a value set's compose (or of the stored one ``reference``
    names), as operation errors: too many is ``too-costly``, unusable content a 422."""
    evaluation = _Evaluation(session, search, limit)
    try:
        return evaluation.valueset(reference) if reference else evaluation._codes_of(label, valueset)
    except TooMany:
        raise too_costly(label, None, limit) from None
    except NotStored as err:
        raise unprocessable(err, label) from None
    except FhirError as err:
        if err.kind != "invalid-param":
            raise
        raise unprocessable(err) from None


def _from_compose(
    session: Session,
    valueset: dict[str, Any],
    options: ExpandOptions,
    label: str,
    limit: int,
    used: dict[str, None],
    search: Matcher | None,
    reference: str | None,
) -> tuple[int, list[Entry]]:
    pairs = composed_pairs(session, valueset, label, limit, search, reference)
    listed, systems = _listed(valueset)
    entries = _decorate(session, pairs, listed, systems, options.display_language, used, search)
    words = filter_words(options.filter)
    if words:
        entries = [e for e in entries if matches(_text(e), words)]
    if options.active_only:
        entries = [e for e in entries if not e.inactive]
    total = len(entries)
    if options.count is None and total - options.offset > limit:
        raise too_costly(label, total, limit)
    end = options.offset + (options.count if options.count is not None else limit)
    return total, entries[options.offset : end]


def _listed(
    valueset: dict[str, Any],
) -> tuple[dict[tuple[str | None, str], tuple[int, dict[str, Any]]], dict[str, tuple[int, str | None]]]:
    """Concepts the value set itself writes out (compose concepts, stored expansion entries),
    by (system, code) with their position; and each compose system's rank and version."""
    listed: dict[tuple[str | None, str], tuple[int, dict[str, Any]]] = {}
    systems: dict[str, tuple[int, str | None]] = {}
    compose = valueset.get("compose") if isinstance(valueset.get("compose"), dict) else {}
    for include in compose.get("include") or ():
        system = include.get("system")
        if system and system not in systems:
            systems[system] = (len(systems), include.get("version"))
        for concept in include.get("concept") or ():
            if isinstance(concept.get("code"), str):
                listed.setdefault((system, concept["code"]), (len(listed), concept))
    expansion = valueset.get("expansion")
    if isinstance(expansion, dict):
        stack = list(reversed(expansion.get("contains") or ()))
        while stack:
            item = stack.pop()
            if isinstance(item, dict) and isinstance(item.get("code"), str):
                system = item.get("system") or None
                listed.setdefault((system, item["code"]), (len(listed), item))
                if system and system not in systems:
                    systems[system] = (len(systems), item.get("version"))
            if isinstance(item, dict):
                stack.extend(reversed(item.get("contains") or ()))
    return listed, systems


def _decorate(
    session: Session,
    pairs: frozenset[tuple[str | None, str]],
    listed: dict[tuple[str | None, str], tuple[int, dict[str, Any]]],
    systems: dict[str, tuple[int, str | None]],
    language: str | None,
    used: dict[str, None],
    search: Matcher | None,
) -> list[Entry]:
    by_system: dict[str | None, list[str]] = {}
    for system, code in pairs:
        by_system.setdefault(system, []).append(code)
    keyed: list[tuple[tuple[int, int, int, str], Entry]] = []
    for system, codes in by_system.items():
        found: dict[str, Concept] = {}
        version = systems.get(system or "", (0, None))[1]
        if system:
            try:
                content = open_codesystem(session, system, version, search=search)
                found = content.get_many(codes)
                version = content.info.version
                if found:
                    used[f"{content.info.url}|{version}" if version else content.info.url] = None
            except FhirError:
                found = {}  # listed codes of a code system this server does not hold: as written
        rank = systems.get(system or "", (len(systems), None))[0]
        for code in codes:
            entry = Entry(system, code, version=version)
            concept = found.get(code)
            if concept is not None:
                entry = Entry.of(system or "", version, concept, language)
            position = listed.get((system, code))
            if position is not None:
                written = position[1]
                entry.display = written.get("display") or entry.display
                entry.designations = [*(written.get("designation") or ()), *entry.designations]
                entry.inactive = entry.inactive or written.get("inactive") is True
                entry.abstract = entry.abstract or written.get("abstract") is True
                entry.version = entry.version or written.get("version")
            order = (0, position[0]) if position is not None else (1, concept.seq if concept is not None else 0)
            keyed.append(((rank, *order, code), entry))
    keyed.sort(key=lambda item: item[0])
    return [entry for _, entry in keyed]


def _text(entry: Entry) -> str:
    names = [entry.code, entry.display or "", *(str(d.get("value") or "") for d in entry.designations)]
    return "\n".join(fold(n) for n in names if n)


def _answer(
    valueset: dict[str, Any], options: ExpandOptions, total: int, entries: list[Entry], used: dict[str, None]
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "ValueSet"}
    for key in _KEPT:
        if key in valueset:
            out[key] = valueset[key]
    out.setdefault("status", "unknown")
    expansion: dict[str, Any] = {
        "identifier": f"urn:uuid:{uuid.uuid4()}",
        "timestamp": instant(now_us()),
        "total": total,
    }
    if options.paged:
        expansion["offset"] = options.offset
    echo = [*options.echo, *({"name": "used-codesystem", "valueUri": u} for u in used)]
    if echo:
        expansion["parameter"] = echo
    if entries:
        expansion["contains"] = [e.to_json(options.include_designations) for e in entries]
    out["expansion"] = expansion
    return out
