"""Codes of a ValueSet's stored ``expansion``.

Why trust it only when complete: an expansion may be one page of a larger one (``offset``, or
``total`` above what ``contains`` lists); searching with a page would silently miss resources,
so such an expansion is not used (the caller falls back to ``compose`` or refuses).
See http://hl7.org/fhir/R4/valueset.html#expansion.
"""

from __future__ import annotations

from typing import Any

Pair = tuple[str | None, str]


def expansion_codes(expansion: dict[str, Any]) -> list[Pair]:
    """(system, code) of every ``contains`` entry with a code, nested entries included.

    Entries without a code are headings (``abstract`` groupings) and contribute only their
    children; a code without a system comes back with system ``None``.
    """
    out: list[Pair] = []
    stack = list(reversed(expansion.get("contains") or ()))
    while stack:
        item = stack.pop()
        if not isinstance(item, dict):
            continue
        code = item.get("code")
        if isinstance(code, str) and code:
            system = item.get("system")
            out.append((system if isinstance(system, str) and system else None, code))
        stack.extend(reversed(item.get("contains") or ()))
    return out


def is_complete(expansion: dict[str, Any], listed: int) -> bool:
    """Whether ``expansion`` (listing ``listed`` codes) is the whole expansion, not a page of it."""
    offset = expansion.get("offset")
    if isinstance(offset, int) and offset > 0:
        return False
    total = expansion.get("total")
    return not (isinstance(total, int) and total > listed)
