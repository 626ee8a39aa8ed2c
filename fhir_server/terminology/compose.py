"""``ValueSet.compose`` evaluated to a set of (system, code) pairs.

Why it is kept apart from storage: the rules of http://hl7.org/fhir/R4/valueset.html#compose are
subtle enough to deserve tests without a database, so this module only asks a ``ComposeSource``
for CodeSystems and imported ValueSets and does set algebra:

- each ``include``/``exclude`` is the intersection of its parts: the system part (listed
  ``concept``s, or the ``filter``s ANDed, or the whole CodeSystem) and every ``valueSet`` it
  names;
- the value set is the union of the includes minus the union of the excludes.

Listed concepts are taken as written (the CodeSystem need not be stored: LOINC or SNOMED CT
concept lists are common and servers rarely hold those CodeSystems); everything that needs the
CodeSystem's content requires it to be stored.
"""

from __future__ import annotations

from typing import Any, Protocol

from fhir_server.errors import FhirError
from fhir_server.terminology.codesystem import CodeSystemView
from fhir_server.terminology.filters import apply_filter

Pair = tuple[str | None, str]


class ComposeSource(Protocol):
    """Where compose evaluation gets what it references."""

    def codesystem(self, system: str, version: str | None) -> CodeSystemView:
        """The stored CodeSystem (raises ``FhirError`` if it is not stored)."""
        ...

    def valueset(self, reference: str) -> frozenset[Pair]:
        """The codes of an imported ValueSet (raises ``FhirError`` if unknown or cyclic)."""
        ...


class TooMany(FhirError):
    """A value set or closure larger than the caller's limit (400 for a search; ``$expand``
    answers it as too-costly)."""

    def __init__(self, label: str, limit: int) -> None:
        super().__init__(
            "invalid-param",
            f"{label} has more than {limit} codes; this server does not search with value sets that large",
        )
        self.label = label
        self.limit = limit


def too_many(label: str, limit: int) -> TooMany:
    return TooMany(label, limit)


def evaluate_compose(label: str, compose: dict[str, Any], source: ComposeSource, limit: int) -> frozenset[Pair]:
    """The codes ``compose`` defines; ``label`` names the ValueSet in errors."""
    includes = compose.get("include") or []
    if not includes:
        raise FhirError("invalid-param", f"{label} has a compose without include")
    drop_inactive = compose.get("inactive") is False
    result: set[Pair] = set()
    for include in includes:
        result |= _part(label, include, source, drop_inactive)
        if len(result) > limit:
            raise too_many(label, limit)
    for exclude in compose.get("exclude") or ():
        if result:
            result -= _part(label, exclude, source, False)
    return frozenset(result)


def _part(label: str, part: dict[str, Any], source: ComposeSource, drop_inactive: bool) -> frozenset[Pair]:
    system = part.get("system")
    imports = part.get("valueSet") or []
    if not system and not imports:
        raise FhirError("invalid-param", f"{label}: an include/exclude names neither a system nor a valueSet")
    if part.get("concept") and part.get("filter"):
        raise FhirError("invalid-param", f"{label}: an include/exclude has both concept and filter (vsd-3)")
    selected: frozenset[Pair] | None = None
    if system:
        selected = _system_part(system, part, source, drop_inactive)
    for reference in imports:
        imported = source.valueset(reference)
        selected = imported if selected is None else selected & imported
    assert selected is not None
    return selected


def _system_part(system: str, part: dict[str, Any], source: ComposeSource, drop_inactive: bool) -> frozenset[Pair]:
    concepts = part.get("concept")
    if concepts:
        return frozenset((system, c["code"]) for c in concepts if isinstance(c.get("code"), str))
    view = source.codesystem(system, part.get("version"))
    view.require_codes()
    filters = part.get("filter") or []
    if filters:
        codes = apply_filter(view, filters[0])
        for flt in filters[1:]:
            codes &= apply_filter(view, flt)
    else:
        codes = view.code_set
    if drop_inactive:
        codes -= view.inactive_codes()
    return frozenset((system, code) for code in codes)
