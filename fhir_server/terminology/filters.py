"""``ValueSet.compose.include.filter``: which codes of a CodeSystem one filter selects.

Why refuse rather than skip: a filter this server cannot evaluate (an operator it does not
implement, a filter the CodeSystem defines with its own meaning, a property the CodeSystem does
not have) would otherwise select nothing or everything, and a search would quietly return the
wrong resources. See http://hl7.org/fhir/R4/valueset.html#compose and
http://hl7.org/fhir/R4/codesystem-filter-operator.html.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.codesystem import CodeSystemView

#: the properties that name the concept itself
CONCEPT_PROPERTIES = frozenset({"concept", "code"})
CONCEPT_OPS = frozenset({"=", "in", "not-in", "is-a", "descendent-of", "is-not-a", "generalizes"})
PROPERTY_OPS = frozenset({"=", "in", "not-in", "exists"})


def _values(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def apply_filter(view: CodeSystemView, flt: dict[str, Any]) -> frozenset[str]:
    """The codes of ``view`` that ``flt`` ({property, op, value}) selects."""
    prop, op, value = flt.get("property"), flt.get("op"), flt.get("value")
    if not isinstance(prop, str) or not isinstance(op, str) or not isinstance(value, str):
        raise FhirError("invalid-param", f"{view.label}: a filter needs property, op and value, got {flt!r}")
    view.require_codes()
    if prop in CONCEPT_PROPERTIES:
        return _concept_filter(view, op, value)
    return _property_filter(view, prop, op, value)


def _concept_filter(view: CodeSystemView, op: str, value: str) -> frozenset[str]:
    if op not in CONCEPT_OPS:
        raise _unsupported(view, "concept", op, CONCEPT_OPS)
    everything = view.code_set
    if op in ("=", "in", "not-in"):
        listed = [value] if op == "=" else _values(value)
        for code in listed:
            view.require_code(code)
        return everything - frozenset(listed) if op == "not-in" else frozenset(listed)
    if op == "generalizes":
        return view.closure(value, "above")
    below = view.closure(value, "below")
    if op == "is-a":
        return below
    if op == "descendent-of":
        return below - {value}
    return everything - below  # is-not-a


def _property_filter(view: CodeSystemView, prop: str, op: str, value: str) -> frozenset[str]:
    if prop not in view.known_properties:
        if prop in view.defined_filters:
            raise FhirError(
                "invalid-param",
                f"{view.label} defines its own filter {prop!r}; this server does not know what it means",
            )
        raise FhirError("invalid-param", f"{view.label} has no property {prop!r} to filter on")
    if op not in PROPERTY_OPS:
        raise _unsupported(view, prop, op, PROPERTY_OPS)
    if op == "exists":
        if value not in ("true", "false"):
            raise FhirError("invalid-param", f"{view.label}: filter {prop} exists needs true or false, not {value!r}")
        having = _hierarchy_having(view, prop) if _is_hierarchy(view, prop) else view.having_property(prop)
        return having if value == "true" else view.code_set - having
    listed = [value] if op == "=" else _values(value)
    if _is_hierarchy(view, prop):
        # parent = X: the direct children of X however the hierarchy is written (nested or property)
        edges = view.children if prop == view.parent_property else view.parents
        selected = frozenset(c for v in listed for c in edges.get(v, ()) if c in view.properties)
    else:
        selected = view.with_property(prop, listed)
    return view.code_set - selected if op == "not-in" else selected


def _is_hierarchy(view: CodeSystemView, prop: str) -> bool:
    return prop in (view.parent_property, view.child_property)


def _hierarchy_having(view: CodeSystemView, prop: str) -> frozenset[str]:
    edges = view.parents if prop == view.parent_property else view.children
    return frozenset(c for c in view.codes if edges.get(c))


def _unsupported(view: CodeSystemView, prop: str, op: str, supported: frozenset[str]) -> FhirError:
    return FhirError(
        "invalid-param",
        f"{view.label}: filter operator {op!r} on {prop!r} is not supported "
        f"(supported: {', '.join(sorted(supported))})",
    )
