"""The resource repository: versioned storage of FHIR resources with their search index.

Why it looks like this:
- Every write happens inside a :class:`Session` bound to one database transaction, so a
  resource, the version it replaced and its index rows commit together or not at all. A
  transaction Bundle runs all its entries in one session.
- Creates are buffered and flushed in bulk (one ``executemany`` per table) before anything
  reads, which is what makes bundle ingest fast; updates and deletes run at once because they
  must check the version they replace (optimistic locking: ``UPDATE ... WHERE version = n``).
- Current and history rows are kept apart: ``resources`` holds each resource's latest version
  (including a deletion marker), ``resource_history`` the versions it replaced.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, delete, insert, select, text, update
from sqlalchemy.exc import IntegrityError

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.storage.engine import WRITE_FLAG, is_postgres
from fhir_server.storage.schema import INDEX_BITS, INDEX_TABLES, resource_history, resources
from fhir_server.util.clock import http_date, instant, now_us

IndexRows = dict[str, list[dict[str, Any]]]
#: Computes the index rows of a resource (the search registry provides it).
Indexer = Callable[[dict[str, Any]], IndexRows]


@dataclass(slots=True)
class StoredVersion:
    """One version of a resource as stored (``content`` is its JSON, with ``meta`` filled)."""

    rid: int
    res_type: str
    res_id: str
    version: int
    updated_us: int
    deleted: bool
    method: str
    content: bytes | None
    idx_mask: int = 0

    @property
    def etag(self) -> str:
        return f'W/"{self.version}"'

    @property
    def last_modified(self) -> str:
        return http_date(self.updated_us)

    @property
    def last_updated(self) -> str:
        return instant(self.updated_us)

    @property
    def location(self) -> str:
        return f"{self.res_type}/{self.res_id}/_history/{self.version}"

    def resource(self) -> dict[str, Any]:
        if self.content is None:
            raise FhirError("gone", f"{self.res_type}/{self.res_id} is deleted")
        return fjson.loads(self.content)


_CURRENT_COLS = (
    resources.c.rid,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version,
    resources.c.updated_us,
    resources.c.deleted,
    resources.c.method,
    resources.c.content,
    resources.c.idx_mask,
)


def _row_to_version(row: Any) -> StoredVersion:
    return StoredVersion(*row)


def new_id() -> str:
    return str(uuid.uuid4())


def stamp(resource: dict[str, Any], res_id: str, version: int, updated_us: int) -> dict[str, Any]:
    """The resource with ``id`` and ``meta.versionId``/``lastUpdated`` set, keys in FHIR order."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(version)
    meta["lastUpdated"] = instant(updated_us)
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": res_id, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


@dataclass
class _PendingCreate:
    version: StoredVersion
    index: IndexRows


@dataclass
class Session:
    """A unit of work on one connection; see the module docstring."""

    repo: Repository
    conn: Connection
    writable: bool
    pending: list[_PendingCreate] = field(default_factory=list)
    #: resources created in this session by (type, id): a later read must see them
    created_ids: set[tuple[str, str]] = field(default_factory=set)

    # -- reads ---------------------------------------------------------------------------
    def read_current(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The latest version (possibly a deletion marker), or None if it never existed."""
        self.flush()
        row = self.conn.execute(
            select(*_CURRENT_COLS).where(resources.c.res_type == res_type, resources.c.res_id == res_id)
        ).first()
        return _row_to_version(row) if row else None

    def read_version(self, res_type: str, res_id: str, version: int) -> StoredVersion | None:
        current = self.read_current(res_type, res_id)
        if current is None or version > current.version or version < 1:
            return None
        if version == current.version:
            return current
        h = resource_history
        row = self.conn.execute(
            select(
                h.c.rid, h.c.res_type, h.c.res_id, h.c.version, h.c.updated_us, h.c.deleted, h.c.method, h.c.content
            ).where(h.c.rid == current.rid, h.c.version == version)
        ).first()
        return _row_to_version(row) if row else None

    def read_many(self, rids: Sequence[int]) -> list[StoredVersion]:
        """Current versions for ``rids``, in the given order (one query)."""
        if not rids:
            return []
        self.flush()
        rows = self.conn.execute(select(*_CURRENT_COLS).where(resources.c.rid.in_(list(rids)))).all()
        by_rid = {r.rid: _row_to_version(r) for r in rows}
        return [by_rid[r] for r in rids if r in by_rid]

    # -- writes --------------------------------------------------------------------------
    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("write in a read-only session")

    def create(self, resource: dict[str, Any], res_id: str | None = None, method: str = "POST") -> StoredVersion:
        """Store a new resource (id assigned unless given); written at the next flush."""
        self._require_writable()
        res_type = resource["resourceType"]
        res_id = res_id or new_id()
        if (res_type, res_id) in self.created_ids:
            raise FhirError("conflict", f"{res_type}/{res_id} is created twice in one transaction")
        updated = now_us()
        stamped = stamp(resource, res_id, 1, updated)
        index = self.repo.indexer(stamped)
        version = StoredVersion(0, res_type, res_id, 1, updated, False, method, fjson.dumps(stamped))
        version.idx_mask = _mask(index)
        self.pending.append(_PendingCreate(version, index))
        self.created_ids.add((res_type, res_id))
        if len(self.pending) >= self.repo.flush_size:
            self.flush()
        return version

    def update(self, current: StoredVersion, resource: dict[str, Any], method: str = "PUT") -> StoredVersion:
        """Replace ``current`` (the version the caller read) with a new version."""
        self._require_writable()
        self.flush()
        new_version = current.version + 1
        updated = max(now_us(), current.updated_us + 1)
        stamped = stamp(resource, current.res_id, new_version, updated)
        index = self.repo.indexer(stamped)
        content = fjson.dumps(stamped)
        new_mask = _mask(index)
        self._replace(current, new_version, updated, method, False, content, new_mask)
        self._reindex(current.rid, current.idx_mask, index)
        return StoredVersion(
            current.rid, current.res_type, current.res_id, new_version, updated, False, method, content, new_mask
        )

    def delete(self, current: StoredVersion) -> StoredVersion:
        """Mark ``current`` deleted: a new version without content; history is kept."""
        self._require_writable()
        self.flush()
        new_version = current.version + 1
        updated = max(now_us(), current.updated_us + 1)
        self._replace(current, new_version, updated, "DELETE", True, None, 0)
        self._reindex(current.rid, current.idx_mask, {})
        return StoredVersion(current.rid, current.res_type, current.res_id, new_version, updated, True, "DELETE", None)

    def _replace(
        self,
        current: StoredVersion,
        new_version: int,
        updated: int,
        method: str,
        deleted: bool,
        content: bytes | None,
        idx_mask: int,
    ) -> None:
        result = self.conn.execute(
            update(resources)
            .where(resources.c.rid == current.rid, resources.c.version == current.version)
            .values(
                version=new_version,
                updated_us=updated,
                deleted=deleted,
                method=method,
                content=content,
                idx_mask=idx_mask,
            )
        )
        if result.rowcount != 1:
            raise FhirError(
                "conflict",
                f"{current.res_type}/{current.res_id} was changed by another request "
                f"(version {current.version} is no longer current); read it again and retry",
            )
        self.conn.execute(
            insert(resource_history).values(
                rid=current.rid,
                version=current.version,
                res_type=current.res_type,
                res_id=current.res_id,
                updated_us=current.updated_us,
                deleted=current.deleted,
                method=current.method,
                content=current.content,
            )
        )

    def _reindex(self, rid: int, old_mask: int, index: IndexRows) -> None:
        for name, table in INDEX_TABLES.items():
            if old_mask & INDEX_BITS[name]:
                self.conn.execute(delete(table).where(table.c.rid == rid))
        for name, rows in index.items():
            if rows:
                self.conn.execute(insert(INDEX_TABLES[name]), [{**r, "rid": rid} for r in rows])

    def flush(self) -> None:
        """Write buffered creates: one statement per table for the whole batch."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        rids = self.repo.allocate_rids(self.conn, len(pending))
        rows = []
        index_rows: dict[str, list[dict[str, Any]]] = {}
        for rid, item in zip(rids, pending, strict=True):
            v = item.version
            v.rid = rid
            rows.append(
                {
                    "rid": rid,
                    "res_type": v.res_type,
                    "res_id": v.res_id,
                    "version": v.version,
                    "updated_us": v.updated_us,
                    "deleted": False,
                    "method": v.method,
                    "content": v.content,
                    "idx_mask": v.idx_mask,
                }
            )
            for name, irows in item.index.items():
                bucket = index_rows.setdefault(name, [])
                for r in irows:
                    bucket.append({**r, "rid": rid})
        try:
            self.conn.execute(insert(resources), rows)
        except IntegrityError:
            raise FhirError(
                "conflict", "a resource with the same type and id was created concurrently; retry"
            ) from None
        for name, irows in index_rows.items():
            if irows:
                self.conn.execute(insert(INDEX_TABLES[name]), irows)

    # -- history -------------------------------------------------------------------------
    def history(
        self,
        res_type: str | None = None,
        res_id: str | None = None,
        since_us: int | None = None,
        at_range: tuple[int, int] | None = None,
        before: tuple[int, int, int] | None = None,
        count: int = 50,
    ) -> list[StoredVersion]:
        """Versions newest first; ``before`` is the keyset cursor (updated_us, rid, version)."""
        self.flush()
        from fhir_server.storage.history import history_query

        query = history_query(res_type, res_id, since_us, at_range, before, count)
        return [_row_to_version(r) for r in self.conn.execute(query).all()]


def _mask(index: IndexRows) -> int:
    mask = 0
    for name, rows in index.items():
        if rows:
            mask |= INDEX_BITS[name]
    return mask


class Repository:
    """Opens sessions on an engine; owns the indexer and the search engine."""

    def __init__(self, engine: Engine, indexer: Indexer, flush_size: int = 2000) -> None:
        self.engine = engine
        self.indexer = indexer
        self.flush_size = flush_size
        self.postgres = is_postgres(engine)

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """One database transaction; commits on success, rolls back on any exception."""
        with self.engine.connect() as conn:
            conn.info[WRITE_FLAG] = write
            try:
                with conn.begin():
                    sess = Session(self, conn, write)
                    yield sess
                    if write:
                        sess.flush()
            finally:
                conn.info[WRITE_FLAG] = False

    def allocate_rids(self, conn: Connection, n: int) -> list[int]:
        if self.postgres:
            rows = conn.execute(text("SELECT nextval('resources_rid_seq') FROM generate_series(1, :n)"), {"n": n}).all()
            return [r[0] for r in rows]
        # SQLite: writers hold the database lock (BEGIN IMMEDIATE), so max+1.. is safe.
        start = conn.execute(text("SELECT COALESCE(MAX(rid), 0) FROM resources")).scalar_one()
        return list(range(start + 1, start + 1 + n))

    def ping(self) -> bool:
        with self.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        return True

    def count(self, res_type: str | None = None) -> int:
        with self.session() as s:
            q = select(text("count(*)")).select_from(resources).where(resources.c.deleted.is_(False))
            if res_type:
                q = q.where(resources.c.res_type == res_type)
            return int(s.conn.execute(q).scalar_one())


__all__ = ["Repository", "Session", "StoredVersion", "IndexRows", "new_id", "stamp"]
