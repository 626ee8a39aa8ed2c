"""Concept rows of stored CodeSystems: written with the CodeSystem, read by the operations.

Why rows: measured on a synthetic 100,000-concept CodeSystem (16 MB of JSON), parsing it into
memory took 1.5–2 s and ~140 MB more resident memory per worker (the first ``filter`` another
second), against a budget of 300 MB per worker; ``$lookup`` needs one concept and
``$expand?filter=`` one page of matches, which indexed rows give in milliseconds
(``scripts/bench/terminology`` measures both).

How they stay right: a write hook on CodeSystem (``install``) runs inside the transaction of
every create, update and delete, whichever door the CodeSystem came in by (REST, Bundles,
``fhir-server load``, ``fhir-server terminology import``, packaged content). Rows are keyed by
the resource id and its version number (``meta.versionId``), and every read joins
``resources`` on both, so a row can only ever be used while its version is the current one;
older versions' rows are deleted by the next write of the same id. The hook runs before the
resource is assigned a surrogate ``rid``, which is why rows are keyed by id, not rid.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from sqlalchemy import and_, delete, func, select

from fhir_server.formats import json as fjson
from fhir_server.storage.bulk import insert_many
from fhir_server.storage.engine import refresh_statistics
from fhir_server.storage.repository import Repository, Session, StoredVersion, WriteHook
from fhir_server.storage.schema import resources, terminology_concepts, terminology_edges, terminology_systems
from fhir_server.terminology.concepts import (
    Concept,
    SystemInfo,
    detail_of,
    edges_of,
    header_of,
    hierarchy_properties,
    is_inactive,
    searchable,
    walk,
)

C = terminology_concepts
E = terminology_edges
S = terminology_systems
#: codes per ``IN (...)`` list
CHUNK = 500
#: concept rows written per batch
BATCH = 5_000
#: concepts from which a write refreshes the planner's statistics once committed
ANALYZE_AFTER = 5_000


# -- writing ---------------------------------------------------------------------------------


class Rows:
    """The rows of one CodeSystem version, made while they are written: concept rows come in
    batches (``batches``), so a 100,000-concept CodeSystem never has all its rows in memory at
    once; the edges and the system row are complete once the batches are consumed."""

    def __init__(self, res_id: str, version: int, resource: dict[str, Any]) -> None:
        self.key = (res_id, version)
        self.resource = resource
        self.header = header_of(resource)
        self.count = 0
        self._links: dict[tuple[str, str], None] = {}

    def batches(self, size: int = BATCH) -> Iterator[list[tuple[Any, ...]]]:
        parent_prop, child_prop = hierarchy_properties(self.header)
        seen: set[str] = set()
        batch: list[tuple[Any, ...]] = []
        for concept, nest_parent in walk(self.resource):
            code = concept["code"]
            for link in edges_of(concept, nest_parent, parent_prop, child_prop):
                if link[0] != link[1]:
                    self._links[link] = None
            if code in seen:  # codes are unique (csd-1); a repeated one adds only its links
                continue
            seen.add(code)
            display = concept.get("display")
            detail = detail_of(concept)
            batch.append(
                (
                    *self.key,
                    code,
                    self.count,
                    display if isinstance(display, str) else None,
                    searchable(detail),
                    is_inactive(concept),
                    fjson.dumps(detail).decode(),
                )
            )
            self.count += 1
            if len(batch) >= size:
                yield batch
                batch = []
        if batch:
            yield batch

    def system(self) -> tuple[Any, ...]:
        business = self.resource.get("version")
        return (
            *self.key,
            str(self.resource.get("url") or ""),
            business if isinstance(business, str) else None,
            fjson.dumps(self.header).decode(),
            self.count,
        )

    def edges(self) -> list[tuple[Any, ...]]:
        return [(*self.key, parent, child) for parent, child in self._links]


def on_write(session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None) -> None:
    """Replace the rows of CodeSystem ``res_id`` by those of the version being written."""
    conn = session.conn
    if current is not None:
        for table in (E, C, S):
            conn.execute(delete(table).where(table.c.cs_id == res_id))
    if resource is None:
        return
    rows = Rows(res_id, 1 if current is None else current.version + 1, resource)
    for batch in rows.batches():
        insert_many(conn, [(C, batch)])
    insert_many(conn, [(S, [rows.system()]), (E, rows.edges())])
    if rows.count >= ANALYZE_AFTER:
        session.after_commit.append(lambda: analyze(session.repo.engine))


def analyze(engine: Any) -> None:
    """Table statistics after a large CodeSystem is written: without them PostgreSQL planned
    child and parent lookups on 100,000 fresh rows as scans (20–60 ms instead of 1–3 ms)."""
    refresh_statistics(engine, ("terminology_systems", "terminology_concepts", "terminology_edges"))


def install(repo: Repository) -> None:
    """Make every write of a CodeSystem through ``repo`` maintain its rows (after any hook
    already registered for CodeSystem, which keeps its veto)."""
    previous = repo.write_hooks.get("CodeSystem")
    if getattr(previous, "maintains_concept_rows", False):
        return

    def hook(session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None) -> None:
        if previous is not None:
            previous(session, res_id, resource, current)
        on_write(session, res_id, resource, current)

    hook.maintains_concept_rows = True  # type: ignore[attr-defined]
    repo.write_hooks["CodeSystem"] = hook


def _current_join() -> Any:
    r = resources
    return S.join(r, and_(r.c.res_type == "CodeSystem", r.c.res_id == S.c.cs_id, r.c.version == S.c.cs_version))


def current_systems(
    session: Session, *, url: str | None = None, res_id: str | None = None
) -> list[tuple[str, int, str | None, str, int]]:
    """(id, version, business version, header JSON, concept count) of the current CodeSystems
    with rows under ``url`` (or with id ``res_id``)."""
    session.flush()
    query = select(S.c.cs_id, S.c.cs_version, S.c.business_version, S.c.header, S.c.concepts).select_from(
        _current_join()
    )
    query = query.where(resources.c.deleted.is_(False))
    query = query.where(S.c.url == url) if url is not None else query.where(S.c.cs_id == res_id)
    return [tuple(row) for row in session.conn.execute(query).all()]  # type: ignore[misc]


# -- reading ---------------------------------------------------------------------------------


def _escape_like(word: str) -> str:
    return word.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


class TableContent:
    """``Content`` answered by queries on the rows of one CodeSystem version."""

    def __init__(self, session: Session, res_id: str, version: int, header: dict[str, Any], count: int) -> None:
        self.session = session
        self.key = (res_id, version)
        self.info = SystemInfo.from_header(header, res_id, count)

    def _where(self, table: Any) -> Any:
        return and_(table.c.cs_id == self.key[0], table.c.cs_version == self.key[1])

    @staticmethod
    def _concept(row: Any) -> Concept:
        return Concept(row.code, row.display, bool(row.inactive), row.seq, fjson.loads(row.detail))

    def _select(self) -> Any:
        return select(C.c.code, C.c.display, C.c.inactive, C.c.seq, C.c.detail).where(self._where(C))

    def get(self, code: str) -> Concept | None:
        row = self.session.conn.execute(self._select().where(C.c.code == code)).first()
        return self._concept(row) if row is not None else None

    def get_many(self, codes: Iterable[str]) -> dict[str, Concept]:
        wanted = sorted(set(codes))
        out: dict[str, Concept] = {}
        for start in range(0, len(wanted), CHUNK):
            rows = self.session.conn.execute(self._select().where(C.c.code.in_(wanted[start : start + CHUNK])))
            out.update((row.code, self._concept(row)) for row in rows)
        return out

    def _linked(self, column: Any, other: Any, code: str) -> list[str]:
        # two single-table index lookups rather than a join: right after a large import, before
        # PostgreSQL has statistics, the join was planned as a walk over all concepts (100 ms)
        linked = self.session.conn.execute(select(other).where(self._where(E), column == code)).scalars().all()
        found = self.get_many(linked)
        return sorted(found, key=lambda c: found[c].seq)

    def parents(self, code: str) -> list[str]:
        return self._linked(E.c.child, E.c.parent, code)

    def children(self, code: str) -> list[str]:
        return self._linked(E.c.parent, E.c.child, code)

    def _reach(self, code: str, direction: str, stop: str | None = None, limit: int | None = None) -> set[str]:
        """Codes transitively above (``above``) or below (``below``) ``code``, one query per
        level of the hierarchy. Why not a recursive CTE: SQLite planned its recursive step with
        a Bloom filter built over every edge of the code system, 20 ms per level on 100,000
        concepts; a level here is one index lookup. Ends early at ``stop`` or past ``limit``."""
        near, far = (E.c.parent, E.c.child) if direction == "below" else (E.c.child, E.c.parent)
        seen: set[str] = set()
        level = [code]
        while level:
            found: list[str] = []
            for start in range(0, len(level), CHUNK):
                query = select(far).where(self._where(E), near.in_(level[start : start + CHUNK]))
                found += self.session.conn.execute(query).scalars()
            level = [c for c in dict.fromkeys(found) if c not in seen]  # a cycle ends here
            seen.update(level)
            if (stop is not None and stop in seen) or (limit is not None and len(seen) > limit):
                break
        return seen

    def is_ancestor(self, ancestor: str, code: str) -> bool:
        return ancestor in self._reach(code, "above", stop=ancestor)

    def closure(self, code: str, direction: str, limit: int) -> list[str]:
        """``code`` and the codes transitively under it (``below``) or over it (``above``) that
        are concepts of this CodeSystem; more than ``limit`` only when there are more."""
        reached = sorted(self._reach(code, direction, limit=limit) | {code})
        found: list[str] = []
        for start in range(0, len(reached), CHUNK):  # parent/child properties may name codes that are not concepts
            query = select(C.c.code).where(self._where(C), C.c.code.in_(reached[start : start + CHUNK]))
            found += self.session.conn.execute(query).scalars()
        return found

    def _filtered(self, query: Any, words: list[str], active_only: bool) -> Any:
        for word in words:
            query = query.where(C.c.norm.like(f"%{_escape_like(word)}%", escape="\\"))
        if active_only:
            query = query.where(C.c.inactive.is_(False))
        return query

    def count(self, words: list[str], active_only: bool) -> int:
        if not words and not active_only:
            return self.info.count
        query = self._filtered(select(func.count()).select_from(C).where(self._where(C)), words, active_only)
        return int(self.session.conn.execute(query).scalar_one())

    def page(self, words: list[str], active_only: bool, offset: int, limit: int) -> tuple[int, list[Concept]]:
        if limit <= 0:
            return self.count(words, active_only), []
        if not words and not active_only:  # the total is known: the page is an index range
            query = self._select().order_by(C.c.seq).offset(offset).limit(limit)
            return self.info.count, [self._concept(row) for row in self.session.conn.execute(query)]
        # the total rides along (a window count), so a filter scans the concepts once, not twice;
        # only codes go through the sort, the page's concepts are read by key afterwards
        query = select(C.c.code, func.count().over().label("total")).where(self._where(C))
        query = self._filtered(query, words, active_only).order_by(C.c.seq).offset(offset).limit(limit)
        rows = self.session.conn.execute(query).all()
        if not rows:  # nothing on this page: the total must be counted on its own
            return self.count(words, active_only), []
        found = self.get_many(row.code for row in rows)
        return int(rows[0].total), [found[row.code] for row in rows]

    def edges(self) -> list[tuple[str, str]]:
        parent = C.alias("p")
        child = C.alias("c")
        query = (
            select(E.c.parent, E.c.child)
            .join(
                parent,
                and_(parent.c.cs_id == E.c.cs_id, parent.c.cs_version == E.c.cs_version, parent.c.code == E.c.parent),
            )
            .join(
                child, and_(child.c.cs_id == E.c.cs_id, child.c.cs_version == E.c.cs_version, child.c.code == E.c.child)
            )
            .where(self._where(E))
            .order_by(child.c.seq, parent.c.seq)
        )
        return [(p, c) for p, c in self.session.conn.execute(query)]


__all__ = ["Rows", "TableContent", "WriteHook", "current_systems", "install", "on_write"]
