"""``IndexMatch``: some row of an index table for a resource meets conditions, in the SQL form
each database plans well.

Why two forms: PostgreSQL turns a correlated ``EXISTS`` into a semi-join (and ``NOT EXISTS``
into an anti-join) and starts from whichever side is selective, so that is the form there
(``NOT IN`` would stop it from using an anti-join). SQLite runs a correlated ``EXISTS`` once
per candidate row, so ``Observation?code=`` probed the index once per Observation (13 ms on
26,000 of them for a code with no match); ``rid IN (SELECT rid ...)`` lets it start from the
index rows and look the few resources up by primary key (0.01 ms, with statistics; see
``storage.engine.analyze_sqlite``). The form is chosen when the statement is compiled, which
SQLAlchemy does once per statement shape, so building a search costs no more than before and
less: the sub-select is not built until then.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Boolean, ColumnElement, exists, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.visitors import InternalTraversal


class IndexMatch(ColumnElement[bool]):
    """Some row of ``table`` with ``table.rid = res.rid`` meets ``conds`` (which must not refer to
    ``res`` or to any other enclosing table)."""

    __visit_name__ = "index_match"
    _is_implicitly_boolean = True  # a predicate: no "= 1" after it where booleans are integers
    type = Boolean()
    _traverse_internals = [
        ("res", InternalTraversal.dp_clauseelement),
        ("table", InternalTraversal.dp_clauseelement),
        ("conds", InternalTraversal.dp_clauseelement_tuple),
    ]

    def __init__(self, res: Any, table: Any, conds: tuple[ColumnElement[bool], ...]) -> None:
        self.res = res
        self.table = table
        self.conds = conds

    def self_group(self, against: Any = None) -> IndexMatch:
        # Already one predicate in either form; the default would wrap it (in and_/or_ of one
        # element) and so hide it from query.index_lookup, which counts it on its index alone.
        return self


@compiles(IndexMatch)
def _as_in(element: IndexMatch, compiler: Any, **kw: Any) -> str:
    rids = select(element.table.c.rid).where(*element.conds).correlate(None)
    return f"({compiler.process(element.res.c.rid.in_(rids), **kw)})"


@compiles(IndexMatch, "postgresql")
def _as_exists(element: IndexMatch, compiler: Any, **kw: Any) -> str:
    table, res = element.table, element.res
    query = select(1).select_from(table).where(table.c.rid == res.c.rid, *element.conds).correlate(res)
    return compiler.process(exists(query), **kw)
