"""A stored CodeSystem read once into what subsumption and filters need.

Why: ``is-a``, ``:below`` and property filters ask the same questions of a CodeSystem again and
again (which codes exist, what is under or over a code, which concepts carry a property value).
Walking the nested JSON each time would cost as much as the search; the view is built once per
stored version and kept in the cache (``cache.py``).

The hierarchy is the union of the two ways R4 states it (http://hl7.org/fhir/R4/codesystem.html):
nested ``concept.concept``, and the ``parent``/``child`` concept properties (recognised by the
property's ``uri`` http://hl7.org/fhir/concept-properties#parent / #child, or by those codes).
It is read as subsumption unless ``hierarchyMeaning`` says it is something else
(``grouped-by``, ``part-of``); then is-a style questions are refused rather than answered with
a guess.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal

from fhir_server.errors import FhirError

Direction = Literal["below", "above"]

_PARENT_URI = "http://hl7.org/fhir/concept-properties#parent"
_CHILD_URI = "http://hl7.org/fhir/concept-properties#child"
#: hierarchyMeaning values under which the hierarchy may be read as is-a (absent: assumed is-a)
_SUBSUMPTION_MEANINGS = frozenset({None, "is-a", "classified-with"})
#: content values that list no (or no codes of their own)
_NO_CODES = frozenset({"not-present", "supplement"})
_VALUE_KEYS = (
    "valueCode",
    "valueString",
    "valueBoolean",
    "valueInteger",
    "valueDecimal",
    "valueDateTime",
    "valueCoding",
)


def property_value(prop: dict[str, Any]) -> str | None:
    """A concept property's value as the string a filter ``value`` would spell it."""
    for key in _VALUE_KEYS:
        if key in prop:
            value = prop[key]
            if key == "valueCoding":
                return value.get("code") if isinstance(value, dict) else None
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
    return None


@dataclass
class CodeSystemView:
    """Codes, hierarchy and property values of one CodeSystem version."""

    url: str
    version: str | None
    content: str | None
    hierarchy_meaning: str | None
    #: all codes, in document order
    codes: tuple[str, ...]
    children: dict[str, set[str]] = field(default_factory=dict)
    parents: dict[str, set[str]] = field(default_factory=dict)
    #: code → property code → values (strings, see ``property_value``)
    properties: dict[str, dict[str, list[str]]] = field(default_factory=dict)
    #: property codes declared in ``CodeSystem.property`` or used by some concept
    known_properties: frozenset[str] = frozenset()
    #: codes of ``CodeSystem.filter`` (filters the CodeSystem defines with its own meaning)
    defined_filters: frozenset[str] = frozenset()
    parent_property: str = "parent"
    child_property: str = "child"

    @property
    def code_set(self) -> frozenset[str]:
        return frozenset(self.codes)

    @property
    def label(self) -> str:
        return f"CodeSystem {self.url}" + (f"|{self.version}" if self.version else "")

    # -- construction ---------------------------------------------------------------------
    @classmethod
    def from_resource(cls, resource: dict[str, Any]) -> CodeSystemView:
        parent_prop, child_prop = "parent", "child"
        declared: set[str] = set()
        for prop in resource.get("property") or ():
            code = prop.get("code")
            if not isinstance(code, str):
                continue
            declared.add(code)
            if prop.get("uri") == _PARENT_URI:
                parent_prop = code
            elif prop.get("uri") == _CHILD_URI:
                child_prop = code
        view = cls(
            url=resource.get("url") or "",
            version=resource.get("version"),
            content=resource.get("content"),
            hierarchy_meaning=resource.get("hierarchyMeaning"),
            codes=(),
            defined_filters=frozenset(
                f["code"] for f in resource.get("filter") or () if isinstance(f.get("code"), str)
            ),
            parent_property=parent_prop,
            child_property=child_prop,
        )
        codes: dict[str, None] = {}  # ordered set
        used: set[str] = set()
        # (concept, nesting parent code) pairs, walked without recursion: hierarchies can be deep
        stack: list[tuple[dict[str, Any], str | None]] = [(c, None) for c in reversed(resource.get("concept") or ())]
        while stack:
            concept, nest_parent = stack.pop()
            code = concept.get("code")
            if not isinstance(code, str):
                continue
            codes[code] = None
            if nest_parent is not None:
                view._link(nest_parent, code)
            props = view.properties.setdefault(code, {})
            for prop in concept.get("property") or ():
                pcode, value = prop.get("code"), property_value(prop)
                if not isinstance(pcode, str) or value is None:
                    continue
                used.add(pcode)
                props.setdefault(pcode, []).append(value)
                if pcode == parent_prop:
                    view._link(value, code)
                elif pcode == child_prop:
                    view._link(code, value)
            stack.extend((c, code) for c in reversed(concept.get("concept") or ()))
        view.codes = tuple(codes)
        view.known_properties = frozenset(declared | used | {parent_prop, child_prop})
        return view

    def _link(self, parent: str, child: str) -> None:
        self.children.setdefault(parent, set()).add(child)
        self.parents.setdefault(child, set()).add(parent)

    # -- questions ------------------------------------------------------------------------
    def require_codes(self) -> None:
        """Refuse a CodeSystem that does not list its codes: "all codes" would be a silent nothing."""
        if self.content in _NO_CODES:
            raise FhirError(
                "invalid-param", f"{self.label} is stored with content={self.content!r}, so its codes are not known"
            )

    def require_subsumption(self) -> None:
        if self.hierarchy_meaning not in _SUBSUMPTION_MEANINGS:
            raise FhirError(
                "invalid-param",
                f"{self.label} has hierarchyMeaning={self.hierarchy_meaning!r}: its hierarchy is not "
                "subsumption (is-a), so is-a, descendent-of, is-not-a, generalizes, :above and :below "
                "are not defined on it",
            )

    def require_code(self, code: str) -> None:
        if code not in self.properties:
            raise FhirError("invalid-param", f"{self.label} has no code {code!r}")

    def closure(self, code: str, direction: Direction) -> frozenset[str]:
        """``code`` and everything transitively under it (below) or over it (above)."""
        self.require_codes()
        self.require_subsumption()
        self.require_code(code)
        edges = self.children if direction == "below" else self.parents
        seen = {code}
        todo = [code]
        while todo:
            for nxt in edges.get(todo.pop(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        # parent/child properties may name codes the CodeSystem does not define; keep only real codes
        return frozenset(c for c in seen if c in self.properties)

    def with_property(self, prop: str, values: Iterable[str]) -> frozenset[str]:
        """Codes with at least one value of ``prop`` among ``values``."""
        wanted = set(values)
        return frozenset(
            code for code, props in self.properties.items() if any(v in wanted for v in props.get(prop, ()))
        )

    def having_property(self, prop: str) -> frozenset[str]:
        return frozenset(code for code, props in self.properties.items() if props.get(prop))

    def inactive_codes(self) -> frozenset[str]:
        """Codes marked inactive (``inactive`` = true, or ``status`` retired/inactive)."""
        return self.with_property("inactive", ["true"]) | self.with_property("status", ["retired", "inactive"])
