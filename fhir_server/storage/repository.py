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

import functools
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, select, text

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.storage.bulk import insert_many
from fhir_server.storage.engine import BINARY_RESULTS, WRITE_FLAG, is_postgres, make_engine
from fhir_server.storage.schema import INDEX_BITS, INDEX_TABLES, resource_history, resources
from fhir_server.util.clock import http_date, instant, now_us

#: table name → rows (tuples of the table's columns)
IndexRows = dict[str, list[tuple[Any, ...]]]
#: Computes the index rows of a resource stored under a rid (the search registry provides it).
Indexer = Callable[[dict[str, Any], int], IndexRows]
#: Called before a resource of a given type is created, updated (``resource`` set) or deleted
#: (``resource`` None) with ``(session, res_id, resource, current)``; may raise ``FhirError``.
WriteHook = Callable[["Session", str, "dict[str, Any] | None", "StoredVersion | None"], None]
#: Called after a resource of a given type was written in a session, with ``(session, written,
#: previous)`` (``previous`` None for a create); may raise ``FhirError`` to roll the write back.
AfterWrite = Callable[["Session", "StoredVersion", "StoredVersion | None"], None]
#: Computes the access columns of a row being written: ``(session, stamped resource, index rows,
#: current)`` → an object with ``tenant``, ``patient``, ``category``, ``labels``, ``minor_until_us``
#: (security/tenancy.py provides it).
RowAccessRule = Callable[["Session", "dict[str, Any]", "IndexRows", "StoredVersion | None"], Any]


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
    # the access columns (security/tenancy.py); a history version carries none of its own
    tenant: str | None = None
    patient: str | None = None
    category: int = 0
    labels: int = 0
    minor_until_us: int | None = None
    #: the bytes as stored when they differ from ``content`` (people's sensitive fields are
    #: encrypted at rest: security/fields.py); None: ``content`` is what is stored
    stored: bytes | None = None

    @property
    def stored_content(self) -> bytes | None:
        return self.stored if self.stored is not None else self.content

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


CURRENT_COLUMNS = (
    resources.c.rid,
    resources.c.res_type,
    resources.c.res_id,
    resources.c.version,
    resources.c.updated_us,
    resources.c.deleted,
    resources.c.method,
    resources.c.content,
    resources.c.idx_mask,
    resources.c.tenant,
    resources.c.patient,
    resources.c.category,
    resources.c.labels,
    resources.c.minor_until_us,
)


# Hot statements as constant SQL (``?`` placeholders, turned into ``%s`` for psycopg): building
# and cache-keying a SQLAlchemy ``select()`` per call cost more than running it (read benchmark).
_READ_CURRENT = f"SELECT {', '.join(c.name for c in CURRENT_COLUMNS)} FROM resources WHERE res_type = ? AND res_id = ?"
# ``idx_mask = ?``: the old index rows are deleted by the mask the writer read; if a reindex
# (search/reindex.py) changed the mask meanwhile, rows in a table the writer does not know of
# would be left behind, so that is a conflict like a concurrent update.
_UPDATE_CURRENT = (
    "UPDATE resources SET version = ?, updated_us = ?, deleted = ?, method = ?, content = ?, idx_mask = ?, "
    "tenant = ?, patient = ?, category = ?, labels = ?, minor_until_us = ? "
    "WHERE rid = ? AND version = ? AND idx_mask = ?"
)
_HISTORY_COLS = "rid, version, res_type, res_id, updated_us, deleted, method, content"
_INSERT_HISTORY = f"INSERT INTO resource_history ({_HISTORY_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"


def _signed_document(version: StoredVersion) -> bool:
    """A signed document Bundle crosses as it was signed: its content is what its author
    institution could see (already de-identified on its way there), and a changed copy would no
    longer verify (security/document_signature.py)."""
    if version.res_type != "Bundle" or version.content is None or b'"signature"' not in version.content:
        return False
    bundle = fjson.loads(version.content)
    return bundle.get("type") == "document" and isinstance(bundle.get("signature"), dict)


@functools.lru_cache(maxsize=256)
def _pyformat(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s`` (the statements are few and constant: cached)."""
    return sql.replace("?", "%s")


def _execute(conn: Connection, sql: str, params: tuple[Any, ...]) -> Any:
    """Run constant SQL written with ``?`` placeholders on either database."""
    if conn.dialect.name == "postgresql":
        sql = _pyformat(sql)
    return conn.exec_driver_sql(sql, params)


def row_to_version(row: Any) -> StoredVersion:
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
    #: SQLite: the next free rid, counted from MAX(rid) under the transaction's write lock
    next_rid: int | None = None
    #: run once the transaction has committed (not on rollback), e.g. to reload search parameters
    after_commit: list[Callable[[], None]] = field(default_factory=list)
    #: conformance resources written in this transaction by canonical url, for its later writes
    #: (a profile a later entry of the same Bundle claims); lookups elsewhere see committed ones
    conformance: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: what the request may see and change (security/tenancy.py ``Access``); None: everything
    access: Any = None
    #: run, once per key, after the last write and before the commit (e.g. rebuilding a
    #: patient's grants once a Bundle has stored all its requests and consents)
    before_commit: dict[Any, Callable[[], None]] = field(default_factory=dict)
    #: per-transaction memory of the access rules: Patient id -> what rows about it inherit,
    #: and the (patient, institution) pairs whose consent to collection was checked
    patient_facts: dict[str, Any] = field(default_factory=dict)
    consent_checked: set[tuple[str, str]] = field(default_factory=set)
    #: per-transaction memory of other hooks (notify/: the changes to match against subscriptions)
    scratch: dict[str, Any] = field(default_factory=dict)
    #: False: this transaction's changes announce nothing (the notifier's own records of a failed
    #: delivery, which would otherwise be announced, fail, and be recorded again)
    notify: bool = True

    def visible(self, res: Any = resources) -> Any:
        """The access predicate on a ``resources`` row or alias, or None when unrestricted."""
        return None if self.access is None else self.access.visible(res)

    def present(self, version: StoredVersion) -> StoredVersion:
        """A version read from the database as the request may have it: its encrypted fields in
        clear, and, when it is another institution's, de-identified (security/egress.py); the
        bytes as stored stay in ``stored`` (an update keeps them in history, not the view)."""
        version = self.repo.reveal(version)
        if self.access is not None and version.content is not None and self.repo.egress is not None:
            receiver = self.access.receiver(version.tenant, version.category)
            if receiver is not None and not _signed_document(version):
                if version.stored is None:
                    version.stored = version.content
                version.content = self.repo.egress(version.content, receiver)
        return version

    @contextmanager
    def acting(self, access: Any) -> Iterator[None]:
        """The server's own writes inside a request, under ``access`` for their duration (None: no
        limits, e.g. the Provenance of a workflow step; an institution's access: a row it owns,
        e.g. the Appointment booked in its calendar)."""
        previous, self.access = self.access, access
        try:
            yield
        finally:
            self.access = previous

    def unrestricted(self) -> Any:
        return self.acting(None)

    # -- reads ---------------------------------------------------------------------------
    def read_current(self, res_type: str, res_id: str) -> StoredVersion | None:
        """The latest version (possibly a deletion marker), or None if it never existed."""
        self.flush()
        # On the driver's cursor: SQLAlchemy's result set-up cost more than the query (read benchmark).
        driver = self.conn.connection.driver_connection
        binary = {"binary": True} if self.repo.postgres else {}  # content without hex decoding (storage/engine.py)
        row = driver.execute(self.repo.read_sql, (res_type, res_id), **binary).fetchone()
        if row is None:
            return None
        found = row_to_version(row)
        if self.access is not None and not self.access.owns_readable(found, now_us()):
            # not simply one of its own rows: the read again with the access predicate (compiled
            # once per access), which PostgreSQL plans anew each time (storage/engine.py)
            sql, params = self.repo.read_statement(self.access, res_type, res_id)
            row = driver.execute(sql, params, **binary).fetchone()
            if row is None:
                return None
            found = row_to_version(row)
        return self.present(found)

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
        return self.present(_guarded_like(row_to_version(row), current)) if row else None

    def read_many(self, rids: Sequence[int]) -> list[StoredVersion]:
        """Current versions for ``rids``, in the given order (one query)."""
        if not rids:
            return []
        self.flush()
        query = select(*CURRENT_COLUMNS).where(resources.c.rid.in_(list(rids)))
        visible = self.visible()
        if visible is not None:
            query = query.where(visible)
        rows = self.conn.execute(query.execution_options(**{BINARY_RESULTS: True})).all()
        by_rid = {r.rid: self.present(row_to_version(r)) for r in rows}
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
        self._before_write(res_type, res_id, resource, None)
        updated = now_us()
        stamped = stamp(resource, res_id, 1, updated)
        rid = self._allocate_rid()
        index = self.repo.indexer(stamped, rid)
        row = self._row_access(stamped, index, None)
        version = StoredVersion(
            rid, res_type, res_id, 1, updated, False, method, fjson.dumps(stamped), _mask(index), *_columns(row),
            stored=self.repo.seal(stamped),
        )  # fmt: skip
        self.pending.append(_PendingCreate(version, index))
        self.created_ids.add((res_type, res_id))
        self._after_write(version, None)
        if len(self.pending) >= self.repo.flush_size:
            self.flush()
        return version

    def _row_access(self, stamped: dict[str, Any], index: IndexRows, current: StoredVersion | None) -> Any:
        """The new row's access columns, once the request is allowed to write it."""
        row = self.repo.row_access(self, stamped, index, current)
        if self.access is not None:
            self.access.check_write(self, stamped["resourceType"], row, current)
        return row

    def _after_write(self, version: StoredVersion, previous: StoredVersion | None) -> None:
        for hook in self.repo.after_write.get(version.res_type, ()):
            hook(self, version, previous)
        for every in self.repo.after_any_write:
            every(self, version, previous)

    def _before_write(
        self, res_type: str, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
    ) -> None:
        hook = self.repo.write_hooks.get(res_type)
        if hook is not None:
            hook(self, res_id, resource, current)
        for check in self.repo.write_checks:
            check(self, res_id, resource, current)

    def update(self, current: StoredVersion, resource: dict[str, Any], method: str = "PUT") -> StoredVersion:
        """Replace ``current`` (the version the caller read) with a new version."""
        self._require_writable()
        self._before_write(current.res_type, current.res_id, resource, current)
        self.flush()
        new_version = current.version + 1
        updated = max(now_us(), current.updated_us + 1)
        stamped = stamp(resource, current.res_id, new_version, updated)
        index = self.repo.indexer(stamped, current.rid)
        row = self._row_access(stamped, index, current)
        content = fjson.dumps(stamped)
        version = StoredVersion(
            current.rid, current.res_type, current.res_id, new_version, updated, False, method, content,
            _mask(index), *_columns(row), stored=self.repo.seal(stamped),
        )  # fmt: skip
        self._replace(current, version)
        insert_many(self.conn, [(INDEX_TABLES[name], rows) for name, rows in index.items()])
        self._after_write(version, current)
        return version

    def delete(self, current: StoredVersion) -> StoredVersion:
        """Mark ``current`` deleted: a new version without content; history is kept."""
        self._require_writable()
        if self.access is not None:
            self.access.check_delete(current.res_type, current)
        self._before_write(current.res_type, current.res_id, None, current)
        self.flush()
        updated = max(now_us(), current.updated_us + 1)
        # the deletion marker keeps the access columns: its history stays as guarded as it was
        version = StoredVersion(
            current.rid, current.res_type, current.res_id, current.version + 1, updated, True, "DELETE", None, 0,
            current.tenant, current.patient, current.category, current.labels, current.minor_until_us,
        )  # fmt: skip
        self._replace(current, version)
        self._after_write(version, current)
        return version

    def _replace(self, current: StoredVersion, new: StoredVersion) -> None:
        """Move ``current`` to history, store ``new`` in its place and drop its old index rows.

        On PostgreSQL this is one statement (one round trip); the history row is inserted only
        if the optimistic ``WHERE version = n`` matched, so its row count tells a conflict.
        """
        c = current
        new_values = (
            new.version, new.updated_us, new.deleted, new.method, new.stored_content, new.idx_mask, *_columns(new),
            c.rid, c.version, c.idx_mask,
        )  # fmt: skip
        old_values = (c.version, c.res_type, c.res_id, c.updated_us, c.deleted, c.method, c.stored_content)
        stale = [t for name, t in INDEX_TABLES.items() if c.idx_mask & INDEX_BITS[name]]
        if self.repo.postgres:
            deletes = "".join(f", d_{t.name} AS (DELETE FROM {t.name} WHERE rid = %s)" for t in stale)
            sql = (
                f"WITH u AS ({_UPDATE_CURRENT} RETURNING rid){deletes} "
                f"INSERT INTO resource_history ({_HISTORY_COLS}) "
                "SELECT rid, %s::int, %s::text, %s::text, %s::bigint, %s::boolean, %s::text, %s::bytea FROM u"
            )
            matched = _execute(self.conn, sql, (*new_values, *(c.rid for _ in stale), *old_values)).rowcount
        else:
            matched = _execute(self.conn, _UPDATE_CURRENT, new_values).rowcount
            if matched == 1:
                _execute(self.conn, _INSERT_HISTORY, (c.rid, *old_values))
                for t in stale:
                    _execute(self.conn, f"DELETE FROM {t.name} WHERE rid = ?", (c.rid,))
        if matched != 1:
            raise FhirError(
                "conflict",
                f"{c.res_type}/{c.res_id} was changed by another request or reindexed meanwhile "
                f"(version {c.version} was read); read it again and retry",
            )

    def _allocate_rid(self) -> int:
        if self.repo.postgres:
            return self.repo.take_rid(self.conn)
        # SQLite: writers hold the database lock (BEGIN IMMEDIATE), so MAX(rid)+1.. is safe.
        if self.next_rid is None:
            self.next_rid = self.conn.exec_driver_sql("SELECT COALESCE(MAX(rid), 0) + 1 FROM resources").scalar_one()
        rid, self.next_rid = self.next_rid, self.next_rid + 1
        return rid

    def flush(self) -> None:
        """Write buffered creates: one bulk insert per table for the whole batch."""
        if not self.pending:
            return
        pending, self.pending = self.pending, []
        rows = []
        index_rows: IndexRows = {}
        for item in pending:
            v = item.version
            rows.append(
                (v.rid, v.res_type, v.res_id, v.version, v.updated_us, False, v.method, v.idx_mask, v.stored_content,
                 v.tenant, v.patient, v.category, v.labels, v.minor_until_us)
            )  # fmt: skip
            for name, irows in item.index.items():
                if irows:
                    index_rows.setdefault(name, []).extend(irows)
        writes = [(resources, rows)] + [(INDEX_TABLES[name], irows) for name, irows in index_rows.items()]
        try:
            insert_many(self.conn, writes)
        except self.conn.dialect.loaded_dbapi.IntegrityError:
            raise FhirError(
                "conflict", "a resource with the same type and id was created concurrently; retry"
            ) from None

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

        query = history_query(res_type, res_id, since_us, at_range, before, count, self.visible())
        versions = [row_to_version(r) for r in self.conn.execute(query).all()]
        if self.access is not None and versions:  # a version is guarded as its resource is now
            r = resources
            rids = list({v.rid for v in versions})
            rows = self.conn.execute(select(r.c.rid, *ACCESS_COLUMNS).where(r.c.rid.in_(rids))).all()
            now = {row.rid: row for row in rows}
            versions = [_guarded_like(v, now[v.rid]) if v.rid in now else v for v in versions]
        return [self.present(v) for v in versions]


ACCESS_COLUMNS = (resources.c.tenant, resources.c.patient, resources.c.category, resources.c.labels,
                  resources.c.minor_until_us)  # fmt: skip


def _guarded_like(version: StoredVersion, current: Any) -> StoredVersion:
    """A history version with the access columns of its resource's current row (history rows
    carry none of their own: access follows the resource as it is now)."""
    version.tenant, version.patient, version.category = current.tenant, current.patient, current.category
    version.labels, version.minor_until_us = current.labels, current.minor_until_us
    return version


def _columns(row: Any) -> tuple[Any, ...]:
    """The access columns of a row (a ``RowAccess`` or a ``StoredVersion``), in table order."""
    return (row.tenant, row.patient, row.category, row.labels, row.minor_until_us)


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
        #: a read by type and id, in the driver's placeholders
        self.read_sql = _pyformat(_READ_CURRENT) if self.postgres else _READ_CURRENT
        self.rid_block_size = 500
        self._rid_block: list[int] = []
        #: resource type -> hook run by every create, update and delete of that type
        self.write_hooks: dict[str, WriteHook] = {}
        #: run before every write of any type, after its type's hook (e.g. declared profiles)
        self.write_checks: list[WriteHook] = []
        #: resource type -> hooks run after each write of that type, in the order installed
        #: (security/grants.py, workflow/tasks.py)
        self.after_write: dict[str, list[AfterWrite]] = {}
        #: run after every write of any type (notify/: changes matched against subscriptions)
        self.after_any_write: list[AfterWrite] = []
        #: the access columns of each row written (security/tenancy.py); the default makes
        #: every row the platform's own, of no category: visible to unrestricted access only
        self.row_access: RowAccessRule = _platform_row
        #: field encryption at rest (security/fields.py ``FieldCrypto``); None: content as given
        self.fields: Any = None
        #: de-identification of another institution's data, (content, receiver) -> content
        #: (security/egress.py); None: shared data is shown as stored
        self.egress: Callable[[bytes, str], bytes] | None = None
        #: resource type -> the institutions besides its creator that may update a row of it
        #: ((session, current) -> Organization ids; workflow/tasks.py: a Task's performer)
        self.co_owners: dict[str, Callable[[Session, StoredVersion], set[str]]] = {}
        self._side_engine: Engine | None = None

    def seal(self, stamped: dict[str, Any]) -> bytes | None:
        """What to store for a resource when it differs from its JSON (encrypted fields)."""
        if self.fields is None or stamped["resourceType"] not in self.fields.types:
            return None
        return fjson.dumps(self.fields.seal(stamped))

    def reveal(self, version: StoredVersion) -> StoredVersion:
        """A version read from the database, its encrypted fields in clear for every caller."""
        if self.fields is not None and version.content is not None and version.res_type in self.fields.types:
            version.stored = version.content
            version.content = self.fields.reveal(version.content)
        return version

    @property
    def side_engine(self) -> Engine:
        """The connections of work beside the requests' own: lookups made while a request holds
        its connection (the catalogue stamps, profiles and value sets of validation, the active
        subscriptions) and a worker's background delivery of notifications.

        A pool of its own: from the requests' pool, a request would wait for its second
        connection while every connection is held by requests waiting for theirs — a deadlock
        until the pool's timeout (scripts/bench/consultations: 503s and 60 s steps) — and the
        notifier would wait behind every request. Side work holds nothing else, so this pool
        always drains. Made in the process that uses it (after the fork); an in-memory SQLite
        database has no second connection to the same data."""
        if self._side_engine is None:
            url = self.engine.url
            if url.get_backend_name() == "sqlite" and url.database in (None, "", ":memory:"):
                self._side_engine = self.engine
            else:
                self._side_engine = make_engine(url.render_as_string(hide_password=False), pool_size=4)
        return self._side_engine

    def dispose(self) -> None:
        """Close every pooled connection (before forking workers, or when done)."""
        self.engine.dispose()
        if self._side_engine is not None and self._side_engine is not self.engine:
            self._side_engine.dispose()
        self._side_engine = None

    @contextmanager
    def session(self, write: bool = False, access: Any = None, side: bool = False) -> Iterator[Session]:
        """One database transaction; commits on success, rolls back on any exception.

        ``access`` (security/tenancy.py) limits what the session's reads see and its writes may
        change; None: unrestricted (the server's own work). ``side``: on the side pool
        (``side_engine``), for a lookup made while the caller holds another session."""
        engine = self.side_engine if side else self.engine
        with engine.connect() as conn:
            if self.postgres and not write:
                # No BEGIN/COMMIT round trips: under READ COMMITTED every statement takes its
                # own snapshot anyway, inside a transaction or not.
                conn.execution_options(isolation_level="AUTOCOMMIT")
            conn.info[WRITE_FLAG] = write
            try:
                with conn.begin():
                    sess = Session(self, conn, write, access=access)
                    yield sess
                    if write:
                        sess.flush()
                        while sess.before_commit:
                            _key, task = sess.before_commit.popitem()
                            task()
                        sess.flush()
            finally:
                conn.info[WRITE_FLAG] = False
        for callback in sess.after_commit:  # committed, connection returned to the pool
            callback()

    def read_statement(self, access: Any, res_type: str, res_id: str) -> tuple[str, Any]:
        """Driver SQL and parameters of a read by type and id under ``access``'s predicate.

        Compiled once per access and kept with it: building and compiling the predicate cost
        more than running it (scripts/bench/security, institution reads)."""
        key = ("read_current", self.engine.dialect.name)
        compiled = access.cache.get(key)
        if compiled is None:
            stmt = select(*CURRENT_COLUMNS).where(
                resources.c.res_type == bindparam("read_type"),
                resources.c.res_id == bindparam("read_id"),
                access.visible(resources),
            )
            done = stmt.compile(dialect=self.engine.dialect)
            fixed = {k: v for k, v in done.params.items() if k not in ("read_type", "read_id", "access_now")}
            compiled = access.cache[key] = (done.string, done.positiontup, fixed)
        sql, order, fixed = compiled
        values = {**fixed, "read_type": res_type, "read_id": res_id, "access_now": now_us()}
        if order is not None:  # a positional paramstyle (SQLite's qmark)
            return sql, tuple(values[name] for name in order)
        return sql, values

    def take_rid(self, conn: Connection) -> int:
        """A rid from this process's block of the PostgreSQL sequence (one round trip per block).

        Sequences are not transactional anyway, so a rid taken by a rolled-back write is a gap,
        as it would be with ``nextval`` per row.
        """
        if not self._rid_block:
            rows = conn.exec_driver_sql(
                "SELECT nextval('resources_rid_seq') FROM generate_series(1, %s)", (self.rid_block_size,)
            ).all()
            self._rid_block.extend(r[0] for r in reversed(rows))
        return self._rid_block.pop()

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


@dataclass(frozen=True)
class _PlatformRow:
    tenant: str | None = None
    patient: str | None = None
    category: int = 0
    labels: int = 0
    minor_until_us: int | None = None


def _platform_row(session: Session, resource: dict[str, Any], index: IndexRows, current: StoredVersion | None) -> Any:
    return _PlatformRow()


__all__ = ["Repository", "Session", "StoredVersion", "IndexRows", "new_id", "stamp"]
