"""Runs compiled searches: conditional matching for writes and paged searchset results.

Why keyset paging: the next page starts after the last row shown (its sort keys and ``rid``),
so page 1,000 costs what page 1 costs and a resource created meanwhile never shifts a page
boundary (no OFFSET scans). See :mod:`.sorting`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import and_, func, or_, select

from fhir_server.errors import FhirError
from fhir_server.search import includes, sorting
from fhir_server.search.contained import contained_mode
from fhir_server.search.query import compartment_predicate, compile_query, contained_marker, index_lookup
from fhir_server.storage.engine import BINARY_RESULTS
from fhir_server.storage.repository import CURRENT_COLUMNS, Session, StoredVersion, row_to_version
from fhir_server.storage.schema import resources

r = resources
#: the page's rows joined back to their content; built once (a new alias per search costs ~0.5 ms
#: of column-collection building)
_current = resources.alias("current")
_CURRENT = tuple(_current.c[c.name] for c in CURRENT_COLUMNS)


@dataclass(frozen=True)
class Cursor:
    """Where a page starts: after (or, for ``previous``, before) the row with these keys."""

    values: list[Any]
    rid: int
    before: bool = False


@dataclass
class SearchPage:
    versions: list[StoredVersion]
    #: sort-key values of each row of ``versions``, for the paging cursors
    keys: list[list[Any]]
    has_next: bool
    has_previous: bool
    total: int | None = None
    included: list[StoredVersion] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


class SearchEngine:
    def __init__(self, registry: Any, max_include: int = 1000) -> None:
        self.registry = registry
        self.max_include = max_include

    def _base(  # type: ignore[no-untyped-def]
        self, session: Session, res_type: str | None, params: list[tuple[str, str]], lenient: bool, compartment=None
    ):
        """The WHERE conditions of a search, the compiled query, and its ``_contained`` mode."""
        mode = contained_mode(params)
        conds = [r.c.deleted.is_(False)]
        visible = session.visible(r)
        if visible is not None:  # what the request may see (security/tenancy.py)
            conds.append(visible)
        if mode == "false":
            compiled = compile_query(self.registry, res_type, params, lenient, session, self)
            conds += compiled.filters
            if res_type is not None:
                conds.insert(0, r.c.res_type == res_type)
        else:  # the containers of matching contained resources (search/contained.py)
            if res_type is None or compartment is not None:
                raise FhirError("invalid-param", "_contained needs a type-level search")
            compiled = compile_query(self.registry, res_type, params, lenient, session, self, contained=True)
            containers = and_(contained_marker(r, res_type), *compiled.filters)
            if mode == "both":
                standalone = compile_query(self.registry, res_type, params, lenient, session, self)
                containers = or_(and_(r.c.res_type == res_type, *standalone.filters), containers)
            conds.append(containers)
        if compartment is not None:
            assert res_type is not None
            conds.append(compartment_predicate(self.registry, res_type, *compartment))
        return conds, compiled, mode

    def match(
        self, session: Session, res_type: str, params: list[tuple[str, str]], limit: int = 2
    ) -> list[StoredVersion]:
        """Current resources matching ``params`` (for conditional create/update/delete)."""
        session.flush()
        conds, _compiled, _mode = self._base(session, res_type, params, lenient=False)
        rids = session.conn.execute(select(r.c.rid).where(*conds).order_by(r.c.rid).limit(limit)).scalars().all()
        return session.read_many(rids)

    def search(
        self,
        session: Session,
        res_type: str | None,
        params: list[tuple[str, str]],
        count: int,
        cursor: Cursor | None = None,
        lenient: bool = False,
        want_total: bool = False,
        compartment: tuple[str, str] | None = None,
        where: list[Any] | None = None,
    ) -> SearchPage:
        """One page of matches; ``compartment`` is (type, id) for ``Patient/123/Observation``;
        ``where``: more conditions on the ``resources`` row (an operation's own selection)."""
        session.flush()
        conds, compiled, mode = self._base(session, res_type, params, lenient, compartment)
        if where:
            conds = [*conds, *where]
        warnings = compiled.warnings
        keys = sorting.parse_sort(self.registry, res_type, _param(params, "_sort"))
        if mode != "false" and any(k.table is not None for k in keys):
            raise FhirError("invalid-param", "_sort with _contained can only use _id and _lastUpdated")
        specs = includes.parse_includes(self.registry, params)
        total = None
        if want_total:
            one = (
                len(compiled.filters) == 1
                and res_type
                and mode == "false"
                and compartment is None
                and session.access is None
                and not where
            )
            lookup = index_lookup(compiled.filters[0]) if one else None
            if lookup is not None:  # one index lookup: count its rids alone
                table, lookup_conds = lookup
                counting = select(func.count(func.distinct(table.c.rid))).where(*lookup_conds)
            else:
                counting = select(func.count()).select_from(r).where(*conds)
            total = int(session.conn.execute(counting).scalar_one())
        if count == 0:
            return SearchPage([], [], False, False, total, warnings=warnings)
        exprs = [k.expression(r) for k in keys]
        before = cursor is not None and cursor.before
        ids = select(r.c.rid.label("rid"), *[e.label(f"k{i}") for i, e in enumerate(exprs)]).where(*conds)
        if cursor is not None:
            ids = ids.where(sorting.beyond(exprs, keys, r.c.rid, cursor.values, cursor.rid, before))
        ids = ids.order_by(*sorting.order_by(exprs, keys, r.c.rid, reverse=before)).limit(count + 1)
        # One statement: the page's rids and keys first (a LIMIT sub-query is planned on its own),
        # then the content of just those rows.
        page_ids = ids.subquery("page")
        page_keys = [page_ids.c[f"k{i}"] for i in range(len(exprs))]
        query = (
            select(*_CURRENT, *page_keys)
            .select_from(page_ids.join(_current, _current.c.rid == page_ids.c.rid))
            .order_by(*sorting.order_by(page_keys, keys, page_ids.c.rid, reverse=before))
        )
        rows = session.conn.execute(query.execution_options(**{BINARY_RESULTS: True})).all()
        more = len(rows) > count
        rows = rows[:count]
        if before:
            rows.reverse()
        width = len(CURRENT_COLUMNS)
        versions = [session.present(row_to_version(row[:width])) for row in rows]
        page = SearchPage(
            versions,
            [list(row[width:]) for row in rows],
            has_next=more if not before else True,
            has_previous=cursor is not None and (more if before else True),
            total=total,
            warnings=warnings,
        )
        page.included = includes.resolve(session, specs, versions, self.max_include)
        if len(page.included) >= self.max_include:
            page.warnings.append(f"Included resources were cut at {self.max_include}")
        return page


def _param(params: list[tuple[str, str]], name: str) -> str | None:
    values = [v for k, v in params if k == name]
    return ",".join(values) if values else None
