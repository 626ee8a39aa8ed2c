"""Runs compiled searches: conditional matching for writes and paged searchset results.

Why keyset paging on ``rid``: the next page starts after the last row shown, so page 1,000
costs what page 1 costs and a resource created meanwhile never shifts a page boundary
(no OFFSET scans).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, select

from fhir_server.search.query import compile_query
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import resources

r = resources


@dataclass
class SearchPage:
    versions: list[StoredVersion]
    has_more: bool
    total: int | None = None
    warnings: list[str] = field(default_factory=list)


class SearchEngine:
    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def _base(self, res_type: str | None, params: list[tuple[str, str]], lenient: bool):  # type: ignore[no-untyped-def]
        compiled = compile_query(self.registry, res_type, params, lenient)
        conds = [r.c.deleted.is_(False), *compiled.filters]
        if res_type is not None:
            conds.insert(0, r.c.res_type == res_type)
        return conds, compiled.warnings

    def match(
        self, session: Session, res_type: str, params: list[tuple[str, str]], limit: int = 2
    ) -> list[StoredVersion]:
        """Current resources matching ``params`` (for conditional create/update/delete)."""
        session.flush()
        conds, _ = self._base(res_type, params, lenient=False)
        rids = session.conn.execute(select(r.c.rid).where(*conds).order_by(r.c.rid).limit(limit)).scalars().all()
        return session.read_many(rids)

    def search(
        self,
        session: Session,
        res_type: str | None,
        params: list[tuple[str, str]],
        count: int,
        after_rid: int | None = None,
        lenient: bool = False,
        want_total: bool = False,
    ) -> SearchPage:
        session.flush()
        conds, warnings = self._base(res_type, params, lenient)
        total = None
        if want_total:
            total = int(session.conn.execute(select(func.count()).select_from(r).where(*conds)).scalar_one())
        if count == 0:
            return SearchPage([], False, total, warnings)
        page_conds = list(conds)
        if after_rid is not None:
            page_conds.append(r.c.rid > after_rid)
        rids = (
            session.conn.execute(select(r.c.rid).where(*page_conds).order_by(r.c.rid).limit(count + 1)).scalars().all()
        )
        has_more = len(rids) > count
        return SearchPage(session.read_many(rids[:count]), has_more, total, warnings)
