"""Composite search parameters: ``code-value-quantity=http://loinc.org|8480-6$lt60``.

http://hl7.org/fhir/R4/search.html#composite. Both values must come from the same element
(the same Observation, or the same ``Observation.component``), so the pair is indexed
together: the second value's row goes to its own type's table (quantity, token, date, string,
number) under an ``sp`` that also hashes the first value, a token. One composite predicate is
then one lookup in one table, with the same indexes as the plain parameter.

The first token is keyed twice, as ``code`` alone and as ``system|code``, so both search forms
find it. Supported: composites of two components whose first is a token (all of R4's except
MolecularSequence's coordinate ones, which say so with a 400).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.search.expression import infer_type
from fhir_server.search.hashing import hash64

_VALUE_TYPES = {"CodeableConcept", "Quantity", "Range", "Period", "DateTime", "string"}
_ESCAPED_DOLLAR = re.compile(r"(?<!\\)\$")


@dataclass(frozen=True)
class Composite:
    """A composite parameter the index and the query both understand."""

    first: Callable[[dict], list[tuple[Any, str]]]
    second: Callable[[dict], list[tuple[Any, str]]]
    second_type: str


def combined_sp(sp: int, first_key: str) -> int:
    """The ``sp`` under which the second component's rows of this first value are stored."""
    return hash64(f"{sp}${first_key}")


def first_keys(system: str | None, code: str | None) -> list[str]:
    """Index keys of a first-component token: by code alone and by system|code."""
    if not code:
        return []
    return [f"c:{code}", f"sc:{system or ''}|{code}"]


def split_composite(name: str, raw: str) -> tuple[str, str]:
    parts = _ESCAPED_DOLLAR.split(raw)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise FhirError("invalid-param", f"Search parameter {name}: {raw!r} is not [token]${{value}}")
    return parts[0].replace("\\$", "$"), parts[1].replace("\\$", "$")


def search_key(name: str, system: str | None, code: str | None, has_bar: bool) -> str:
    """The index key a search's first value looks up (``system|code``, ``|code`` or ``code``)."""
    if not code:
        raise FhirError("invalid-param", f"Search parameter {name}: the first value needs a code")
    return f"sc:{system or ''}|{code}" if has_bar else f"c:{code}"


def resolve(param: Any, registry: Any) -> Composite | None:
    """How to read ``param``'s two components from an element; None if not supported."""
    return _resolve(param.url or param.code, param.components, registry)


@functools.lru_cache(maxsize=512)
def _resolve(_key: str, components: tuple[tuple[str, str], ...], registry: Any) -> Composite | None:
    if len(components) != 2:
        return None
    types = []
    for definition, _expr in components:
        found = registry.by_url(definition)
        types.append(found.get("type") if found else None)
    if types[0] != "token" or types[1] not in ("token", "quantity", "string", "number", "date"):
        return None
    readers = [_reader(expr) for _d, expr in components]
    if None in readers:
        return None
    return Composite(readers[0], readers[1], types[1])  # type: ignore[arg-type]


def _reader(expression: str) -> Callable[[dict], list[tuple[Any, str]]] | None:
    """Values of a component expression relative to the composite's element.

    R4's component expressions are ``name``, ``value`` (any ``value[x]``) or unions of
    ``value.as(Type)``; anything else is unsupported.
    """
    picks: list[tuple[str, str]] = []  # (JSON key, FHIR type)
    for part in (p.strip() for p in expression.split("|")):
        m = re.fullmatch(r"value\.as\((\w+)\)", part)
        if m and m.group(1) in _VALUE_TYPES:
            fhir_type = "dateTime" if m.group(1) == "DateTime" else m.group(1)
            picks.append(("value" + m.group(1)[0].upper() + m.group(1)[1:], fhir_type))
        elif re.fullmatch(r"[a-z][A-Za-z]*", part):
            picks.append((part, ""))
        else:
            return None

    def read(element: dict) -> list[tuple[Any, str]]:
        out: list[tuple[Any, str]] = []
        for key, fhir_type in picks:
            if key == "value" and not fhir_type:  # value[x] of any type
                out.extend((v, k[5:]) for k, v in element.items() if k.startswith("value") and k != "value")
                continue
            v = element.get(key)
            if v is None:
                continue
            for item in v if type(v) is list else [v]:
                out.append((item, fhir_type or infer_type(item)))
        return out

    return read
