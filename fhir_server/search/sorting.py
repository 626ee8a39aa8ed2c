"""``_sort`` and keyset paging over sort keys (http://hl7.org/fhir/R4/search.html#sort).

Why keyset paging here too: a page starts strictly after (or, for ``previous``, strictly
before) the sort key and ``rid`` of the row that ended the last page, so deep pages cost what
the first one costs and rows created or deleted meanwhile never shift a page boundary.

Sort keys: a parameter sorts by its smallest indexed value ascending and its largest
descending (a date by the start of its range ascending and the end descending), so a resource
with several values is placed by the one that decides the order. Resources without a value sort
last in both directions; ``rid`` breaks ties, which makes the order total.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, false, func, or_, select

from fhir_server.errors import FhirError
from fhir_server.storage.schema import idx_date, idx_number, idx_quantity, idx_reference, idx_string, idx_token, idx_uri

#: Index column a parameter type sorts by: (table, column ascending, column descending).
_SORT_COLUMNS: dict[str, tuple[Any, str, str]] = {
    "string": (idx_string, "value", "value"),
    "token": (idx_token, "code", "code"),
    "date": (idx_date, "lo", "hi"),
    "number": (idx_number, "value", "value"),
    "quantity": (idx_quantity, "value", "value"),
    "reference": (idx_reference, "target_id", "target_id"),
    "uri": (idx_uri, "uri", "uri"),
}
SORTABLE_TYPES = frozenset(_SORT_COLUMNS)


@dataclass(frozen=True)
class SortKey:
    name: str
    descending: bool
    #: builds the key's SQL expression for the ``resources`` row (or alias) ``res``
    table: Any = None
    column: str = ""
    sp: int = 0

    def expression(self, res: Any) -> ColumnElement[Any]:
        if self.name == "_id":
            return res.c.res_id
        if self.name == "_lastUpdated":
            return res.c.updated_us
        col = self.table.c[self.column]
        agg = func.max(col) if self.descending else func.min(col)
        return (
            select(agg)
            .where(self.table.c.rid == res.c.rid, self.table.c.sp == self.sp)
            .correlate(res)
            .scalar_subquery()
        )


def parse_sort(registry: Any, res_type: str | None, raw: str | None) -> list[SortKey]:
    """The keys of ``_sort=a,-b``; a 400 names a parameter that cannot sort."""
    if not raw:
        return []
    keys = []
    for item in raw.split(","):
        item = item.strip()
        descending = item.startswith("-")
        name = item.lstrip("-")
        if not name:
            raise FhirError("invalid-param", f"_sort={raw}: empty sort key")
        if name in ("_id", "_lastUpdated"):
            keys.append(SortKey(name, descending))
            continue
        if res_type is None:
            raise FhirError("invalid-param", f"_sort={name}: sorting a system-level search needs a resource type")
        param = registry.get(res_type, name)
        if param is None:
            raise FhirError("invalid-param", f"_sort: {name!r} is not a search parameter of {res_type}")
        spec = _SORT_COLUMNS.get(param.type)
        if spec is None or not param.indexed:
            raise FhirError("invalid-param", f"_sort: {res_type}.{name} ({param.type}) cannot be sorted on")
        table, asc_col, desc_col = spec
        keys.append(SortKey(name, descending, table, desc_col if descending else asc_col, param.sp))
    return keys


def order_by(exprs: list[Any], keys: list[SortKey], rid: Any, reverse: bool) -> list[Any]:
    """ORDER BY for the keys then ``rid``; ``reverse`` walks the same order backwards."""
    out = []
    for expr, key in zip(exprs, keys, strict=True):
        ascending = key.descending == reverse
        ordered = expr.asc() if ascending else expr.desc()
        out.append(ordered.nulls_first() if reverse else ordered.nulls_last())
    out.append(rid.desc() if reverse else rid.asc())
    return out


def beyond(
    exprs: list[Any], keys: list[SortKey], rid: Any, values: list[Any], last_rid: int, before: bool
) -> ColumnElement[bool]:
    """Rows strictly after (``before`` false) or strictly before the row with sort ``values``
    and ``last_rid`` in the order of ``keys`` (missing values last)."""
    alternatives = []
    equal_so_far: list[ColumnElement[bool]] = []
    for expr, key, value in zip(exprs, keys, values, strict=True):
        alternatives.append(and_(*equal_so_far, _past(expr, key.descending, value, before)))
        equal_so_far.append(expr.is_(None) if value is None else expr == value)
    alternatives.append(and_(*equal_so_far, rid < last_rid if before else rid > last_rid))
    return or_(*alternatives)


def _past(expr: Any, descending: bool, value: Any, before: bool) -> ColumnElement[bool]:
    if value is None:  # missing values sort last: only present ones come before, none after
        return expr.is_not(None) if before else false()
    later = expr < value if descending else expr > value
    earlier = expr > value if descending else expr < value
    return earlier if before else or_(later, expr.is_(None))
