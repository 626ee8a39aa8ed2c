"""What the terminology operations know of a CodeSystem and its concepts, wherever they are kept.

Why an interface with two implementations: a CodeSystem is answered either from its concept
rows (``table.py``: every CodeSystem stored since migration 0006, including 100,000-concept
LOINC or ICD-10 imports) or, for one stored without rows, from its parsed content
(``memory.py``). ``$lookup``, ``$validate-code``, ``$subsumes`` and ``$expand`` only ask the
questions below, so they cannot tell the two apart, and the same tests run against both.

The rules that say what a concept *is* live here once, used by both implementations and by the
row builder: which concepts are inactive (``inactive`` = true, or ``status`` retired/inactive,
as ``CodeSystemView.inactive_codes``), which are abstract (``notSelectable`` = true, see
http://hl7.org/fhir/R4/codesystem-concept-properties.html), what text a ``filter`` searches
(code, display and designations, folded like string search so that it is case- and
accent-insensitive; substrings, so that 气虚 finds 气虚质 in a language without spaces).
"""

from __future__ import annotations

import functools
import sys
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhir_server.errors import FhirError
from fhir_server.terminology.codesystem import _CHILD_URI, _PARENT_URI, _SUBSUMPTION_MEANINGS, property_value

#: content values whose concepts are not (all) listed
NO_CODES = frozenset({"not-present", "supplement"})
_INACTIVE_STATUS = frozenset({"retired", "inactive"})


@functools.cache
def _combining() -> dict[int, None]:
    """``str.translate`` table deleting every combining character (built once, ~0.3 s)."""
    return {c: None for c in range(sys.maxunicode + 1) if unicodedata.combining(chr(c))}


def fold(text: str) -> str:
    """Case- and accent-folded text, exactly as ``normalize_string`` (the string search index)
    folds it, whole. Why not call it: its per-character filter took 3 of the 9 seconds of a
    100,000-concept import; ``str.translate`` does the same deletion in C."""
    if text.isascii():
        return " ".join(text.lower().split())
    return " ".join(unicodedata.normalize("NFKD", text).translate(_combining()).casefold().split())


def filter_words(text: str | None) -> list[str]:
    """The folded words of a ``filter``: each must occur in a concept's text (AND)."""
    return fold(text).split() if text else []


def _has_value(concept: dict[str, Any], prop: str, values: frozenset[str]) -> bool:
    for item in concept.get("property") or ():
        if item.get("code") == prop and property_value(item) in values:
            return True
    return False


def is_inactive(concept: dict[str, Any]) -> bool:
    return _has_value(concept, "inactive", frozenset({"true"})) or _has_value(concept, "status", _INACTIVE_STATUS)


def is_abstract(concept: dict[str, Any]) -> bool:
    return _has_value(concept, "notSelectable", frozenset({"true"}))


def searchable(concept: dict[str, Any]) -> str:
    """The folded text a ``filter`` is matched against, one line per name."""
    names = [concept.get("code"), concept.get("display")]
    names += [d.get("value") for d in concept.get("designation") or () if isinstance(d, dict)]
    return "\n".join(fold(n) for n in names if isinstance(n, str) and n)


def matches(text: str, words: list[str]) -> bool:
    return all(w in text for w in words)


def detail_of(concept: dict[str, Any]) -> dict[str, Any]:
    """The concept element without its nested concepts (those are concepts of their own)."""
    return {k: v for k, v in concept.items() if k != "concept"}


@dataclass(frozen=True, slots=True)
class Concept:
    """One concept of a CodeSystem version."""

    code: str
    display: str | None
    inactive: bool
    #: position in the CodeSystem (document order, nested concepts after their parent)
    seq: int
    #: the concept element as written, without nested concepts
    detail: dict[str, Any] = field(repr=False)

    @property
    def definition(self) -> str | None:
        value = self.detail.get("definition")
        return value if isinstance(value, str) else None

    @property
    def designations(self) -> list[dict[str, Any]]:
        return [d for d in self.detail.get("designation") or () if isinstance(d, dict) and d.get("value")]

    @property
    def properties(self) -> list[dict[str, Any]]:
        return [p for p in self.detail.get("property") or () if isinstance(p, dict) and p.get("code")]

    @property
    def abstract(self) -> bool:
        return is_abstract(self.detail)

    def display_for(self, language: str | None) -> str | None:
        """The display in ``language`` (a designation with that language, or one of its
        sub-tags: ``zh`` takes ``zh-CN``), else the concept's display."""
        if language:
            wanted = language.lower()
            for d in self.designations:
                lang = str(d.get("language") or "").lower()
                if lang and (lang == wanted or lang.startswith(wanted + "-") or wanted.startswith(lang + "-")):
                    return str(d["value"])
        return self.display

    def names(self) -> list[str]:
        """Every text this concept is known by: its display and its designations."""
        out = [self.display] if self.display else []
        return out + [str(d["value"]) for d in self.designations]


@dataclass(frozen=True)
class SystemInfo:
    """A CodeSystem version's header: everything but its concepts."""

    url: str
    version: str | None
    res_id: str | None
    name: str | None
    title: str | None
    content: str | None
    hierarchy_meaning: str | None
    count: int
    #: ``CodeSystem.property`` as written (code, uri, type, description)
    properties: tuple[dict[str, Any], ...]
    parent_property: str = "parent"
    child_property: str = "child"

    @classmethod
    def from_header(cls, header: dict[str, Any], res_id: str | None, count: int) -> SystemInfo:
        parent, child = hierarchy_properties(header)
        return cls(
            url=str(header.get("url") or ""),
            version=header.get("version") if isinstance(header.get("version"), str) else None,
            res_id=res_id,
            name=header.get("name"),
            title=header.get("title"),
            content=header.get("content"),
            hierarchy_meaning=header.get("hierarchyMeaning"),
            count=count,
            properties=tuple(p for p in header.get("property") or () if isinstance(p, dict)),
            parent_property=parent,
            child_property=child,
        )

    @property
    def label(self) -> str:
        return f"CodeSystem {self.url}" + (f"|{self.version}" if self.version else "")

    def require_codes(self) -> None:
        if self.content in NO_CODES:
            raise FhirError(
                "processing", f"{self.label} is stored with content={self.content!r}, so its codes are not known"
            )

    def require_subsumption(self) -> None:
        if self.hierarchy_meaning not in _SUBSUMPTION_MEANINGS:
            raise FhirError(
                "processing",
                f"{self.label} has hierarchyMeaning={self.hierarchy_meaning!r}: its hierarchy is not "
                "subsumption (is-a), so subsumption cannot be tested on it",
            )


def hierarchy_properties(header: dict[str, Any]) -> tuple[str, str]:
    """Codes of the properties that state parent and child (by their concept-properties uri)."""
    parent, child = "parent", "child"
    for prop in header.get("property") or ():
        if not isinstance(prop, dict) or not isinstance(prop.get("code"), str):
            continue
        if prop.get("uri") == _PARENT_URI:
            parent = prop["code"]
        elif prop.get("uri") == _CHILD_URI:
            child = prop["code"]
    return parent, child


def walk(resource: dict[str, Any]) -> Iterator[tuple[dict[str, Any], str | None]]:
    """Every concept with the code of the concept it is nested in, in document order, without
    recursion (hierarchies can be deep)."""
    stack: list[tuple[dict[str, Any], str | None]] = [(c, None) for c in reversed(resource.get("concept") or ())]
    while stack:
        concept, parent = stack.pop()
        if not isinstance(concept, dict):
            continue
        code = concept.get("code")
        if not isinstance(code, str):
            continue
        yield concept, parent
        stack.extend((c, code) for c in reversed(concept.get("concept") or ()))


def edges_of(
    concept: dict[str, Any], nest_parent: str | None, parent_prop: str, child_prop: str
) -> Iterator[tuple[str, str]]:
    """(parent, child) links one concept states: by nesting and by parent/child properties."""
    code = concept["code"]
    if nest_parent is not None:
        yield nest_parent, code
    for prop in concept.get("property") or ():
        pcode = prop.get("code") if isinstance(prop, dict) else None
        if pcode not in (parent_prop, child_prop):
            continue
        value = property_value(prop)
        if value is None:
            continue
        yield (value, code) if pcode == parent_prop else (code, value)


def header_of(resource: dict[str, Any]) -> dict[str, Any]:
    """The resource without its concepts and narrative (what ``SystemInfo`` is built from)."""
    return {k: v for k, v in resource.items() if k not in ("concept", "text")}


class Content(Protocol):
    """The questions the operations ask of one CodeSystem version."""

    info: SystemInfo

    def get(self, code: str) -> Concept | None:
        """The concept with this code (codes are compared exactly)."""
        ...

    def get_many(self, codes: Iterable[str]) -> dict[str, Concept]:
        """The concepts among ``codes`` that exist."""
        ...

    def parents(self, code: str) -> list[str]:
        """Direct parents of ``code`` that are concepts of this CodeSystem."""
        ...

    def children(self, code: str) -> list[str]:
        """Direct children of ``code`` that are concepts of this CodeSystem."""
        ...

    def is_ancestor(self, ancestor: str, code: str) -> bool:
        """Whether ``ancestor`` is (transitively) above ``code``; false for the code itself."""
        ...

    def count(self, words: list[str], active_only: bool) -> int:
        """How many concepts match every word (all of them when ``words`` is empty)."""
        ...

    def page(self, words: list[str], active_only: bool, offset: int, limit: int) -> tuple[int, list[Concept]]:
        """How many concepts match, and ``limit`` of them from ``offset`` in document order
        (one pass over the matches where the storage allows)."""
        ...

    def edges(self) -> list[tuple[str, str]]:
        """Every (parent, child) link between concepts of this CodeSystem."""
        ...
