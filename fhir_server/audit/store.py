"""The append-only audit store: AuditEvents in sequence, each chained to the one before.

Why a chain: ``hash[n] = sha256(hash[n-1], n, content[n])`` (hex, content as stored) makes any
edit, deletion or reordering of stored records show when the chain is recomputed
(``fhir-server audit verify``): the first record whose hash no longer follows is named. The chain
is not keyed, so someone able to rewrite the table *and* recompute every later hash would not
be caught by the chain alone; the copy exported to an Audit Record Repository (ITI-20,
``--audit-repository``) keeps the records out of that person's reach (docs/security.md).

Appending takes the chain's lock (PostgreSQL: a transaction-scoped advisory lock; SQLite: the
write lock every writer takes at BEGIN), so records of all workers form one sequence.
Nothing here updates or deletes a record, except :meth:`AuditStore.purge`, which removes the
oldest records only when they are older than the retention policy (≥ 1 year, R27) and moves the
chain's anchor to the last record removed, so verification still starts from a known hash.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.engine import Connection, Engine

from fhir_server.storage.bulk import insert_many
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import audit_anchor as A
from fhir_server.storage.schema import audit_events as T
from fhir_server.util.clock import now_us
from fhir_server.util.fhirdate import date_range

#: the advisory lock key that serialises appends on PostgreSQL ("audit" in ASCII)
_LOCK_KEY = 0x6175646974
YEAR_US = 365 * 86_400_000_000


@dataclass(frozen=True)
class Verification:
    ok: bool
    checked: int
    #: the first record that breaks the chain, and why
    broken_at: int | None = None
    reason: str = ""


def chain_hash(previous: str, seq: int, content: str) -> str:
    """``sha256(previous hash, the record's number, its JSON)``: the number is in, so swapping
    two records' numbers shows as well as changing their content."""
    return hashlib.sha256(f"{previous}{seq}\n".encode("ascii") + content.encode("utf-8")).hexdigest()


#: every stored record's JSON starts so; its id (the record's number) is put in when it is read
PREFIX = '{"resourceType":"AuditEvent",'
#: the search columns, in table order, between ``seq`` and ``content``
COLUMNS = (
    "recorded_us", "type_code", "subtype_code", "action", "outcome", "patient", "agent", "address", "entity",
    "organization",
)  # fmt: skip


#: the longest text each of these columns keeps (the rest of a longer value is cut)
LIMITS = {"type_code": 64, "subtype_code": 64, "patient": 128, "entity": 256, "organization": 128}


def serialize(event: dict[str, Any]) -> bytes:
    """The stored JSON of an event: ``resourceType`` first, no ``id`` (the number is the id)."""
    return orjson.dumps({"resourceType": "AuditEvent", **{k: v for k, v in event.items() if k not in _DROPPED}})


_DROPPED = frozenset({"resourceType", "id"})


def with_id(seq: int, content: str) -> str:
    """The record as a FHIR resource: its number put in as ``id``."""
    if not content.startswith(PREFIX):
        raise ValueError(f"audit record {seq} does not start with {PREFIX}")
    return f'{PREFIX}"id":"{seq}",{content[len(PREFIX) :]}'


def _instant_us(text: str) -> int:
    bounds = date_range(text)
    if bounds is None:
        raise ValueError(f"AuditEvent.recorded {text!r} is not an instant")
    return bounds[0]


def columns(event: dict[str, Any], recorded_us: int | None = None) -> tuple[Any, ...]:
    """The ITI-81 search columns of one event, in ``COLUMNS`` order (``recorded_us`` when the
    caller knows it: parsing ``recorded`` again costs more than the rest)."""
    entities = event.get("entity") or []
    patient = next(
        (
            e.get("what", {}).get("reference")
            for e in entities
            if (e.get("type") or {}).get("code") == "1" and (e.get("role") or {}).get("code") == "1"
        ),
        None,
    )
    data = next(
        (e.get("what", {}).get("reference") for e in entities if (e.get("role") or {}).get("code") == "4"), None
    )
    agents = event.get("agent") or []
    requestor = next((a for a in agents if a.get("requestor")), agents[0] if agents else {})
    who = requestor.get("who") or {}
    client = next((a for a in agents if (a.get("network") or {}).get("address")), {})
    institution = next(
        (
            (a.get("who") or {}).get("reference")
            for a in agents
            if any(c.get("code") == "PROV" for c in (a.get("type") or {}).get("coding") or [])
        ),
        None,
    )
    return (
        recorded_us if recorded_us is not None else _instant_us(event["recorded"]),
        str((event.get("type") or {}).get("code", ""))[: LIMITS["type_code"]],
        next((str(s.get("code"))[: LIMITS["subtype_code"]] for s in event.get("subtype") or []), None),
        event.get("action"),
        str(event.get("outcome", "0")),
        patient[: LIMITS["patient"]] if patient else None,
        (who.get("reference") or (who.get("identifier") or {}).get("value") or who.get("display") or None),
        (client.get("network") or {}).get("address"),
        data[: LIMITS["entity"]] if data else None,
        institution[: LIMITS["organization"]] if isinstance(institution, str) else None,
    )


class AuditStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.postgres = engine.dialect.name == "postgresql"

    # -- appending -------------------------------------------------------------------------
    def append(self, events: Iterable[dict[str, Any]]) -> list[str]:
        """Store ``events`` (AuditEvent dicts without ids) in one transaction; their new ids."""
        events = list(events)
        if not events:
            return []
        with begin_write(self.engine) as conn:
            return self.append_on(conn, events)

    def append_on(self, conn: Connection, events: list[dict[str, Any]]) -> list[str]:
        """Append inside the caller's write transaction."""
        return self.append_rows_on(conn, [(columns(e), serialize(e).decode()) for e in events])

    def append_rows_on(self, conn: Connection, rows: list[tuple[tuple[Any, ...], str]]) -> list[str]:
        """Append (search columns, stored JSON) pairs — what the workers spool — inside the
        caller's write transaction (the writer commits its spool offsets with them)."""
        if self.postgres:
            conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
        last = conn.execute(select(T.c.seq, T.c.hash).order_by(T.c.seq.desc()).limit(1)).first()
        if last is None:
            last = conn.execute(select(A.c.seq, A.c.hash).where(A.c.id == 1)).one()
        seq, previous = int(last.seq), str(last.hash)
        out, ids = [], []
        for cols, content in rows:
            seq += 1
            previous = chain_hash(previous, seq, content)
            out.append((seq, *cols, content, previous))
            ids.append(str(seq))
        insert_many(conn, [(T, out)], copy=True)  # COPY on PostgreSQL: audit is written on every request
        return ids

    # -- reading -----------------------------------------------------------------------------
    def read(self, event_id: str, where: Any = None) -> str | None:
        """One record as an AuditEvent (JSON), or None (also when it fails ``where``)."""
        if not event_id.isdigit():
            return None
        query = select(T.c.content).where(T.c.seq == int(event_id))
        if where is not None:
            query = query.where(where)
        with self.engine.connect() as conn:
            content = conn.execute(query).scalar()
        return with_id(int(event_id), content) if content is not None else None

    def count(self) -> int:
        with self.engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(T)).scalar_one())

    def search(self, query: Select[Any], offset: int, count: int) -> tuple[int, list[str]]:
        """(total, the page as AuditEvent JSON) for a ``select(T.c.seq, T.c.content)`` filtered
        by the caller."""
        with self.engine.connect() as conn:
            total = conn.execute(select(func.count()).select_from(query.order_by(None).subquery())).scalar_one()
            page = conn.execute(query.offset(offset).limit(count)).all()
        return int(total), [with_id(int(seq), content) for seq, content in page]

    # -- integrity ---------------------------------------------------------------------------
    def verify(self, batch: int = 5000) -> Verification:
        """Recompute the chain from the anchor; stream the records (never all in memory)."""
        with self.engine.connect() as conn:
            anchor = conn.execute(select(A.c.seq, A.c.hash).where(A.c.id == 1)).one()
        expected_seq, previous, checked = int(anchor.seq), str(anchor.hash), 0
        for seq, content, stored_hash in self._rows(expected_seq, batch):
            expected_seq += 1
            if seq != expected_seq:
                return Verification(False, checked, expected_seq, f"record {expected_seq} is missing")
            if chain_hash(previous, seq, content) != stored_hash:
                return Verification(
                    False, checked, seq, f"record {seq} does not follow the chain (changed, or an earlier one was)"
                )
            previous, checked = stored_hash, checked + 1
        return Verification(True, checked)

    def _rows(self, after: int, batch: int) -> Iterator[tuple[int, str, str]]:
        while True:
            with self.engine.connect() as conn:
                rows = conn.execute(
                    select(T.c.seq, T.c.content, T.c.hash).where(T.c.seq > after).order_by(T.c.seq).limit(batch)
                ).all()
            if not rows:
                return
            for row in rows:
                yield int(row.seq), str(row.content), str(row.hash)
            after = int(rows[-1].seq)

    def purge(self, before_us: int, *, retention_us: int = YEAR_US, now: int | None = None) -> int:
        """Remove the records older than ``before_us``, only if that is beyond the retention
        policy; the oldest records go first and the chain anchor follows. Records removed."""
        now = now if now is not None else now_us()
        if before_us > now - retention_us:
            raise ValueError(
                f"records younger than the retention policy ({retention_us // 86_400_000_000} days) are kept"
            )
        with begin_write(self.engine) as conn:
            if self.postgres:
                conn.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
            first_kept = conn.execute(select(func.min(T.c.seq)).where(T.c.recorded_us >= before_us)).scalar()
            if first_kept is None:
                first_kept = (conn.execute(select(func.max(T.c.seq))).scalar() or 0) + 1
            last = conn.execute(select(T.c.seq, T.c.hash).where(T.c.seq < first_kept).order_by(T.c.seq.desc()).limit(1))
            last_row = last.first()
            if last_row is None:
                return 0
            removed = conn.execute(delete(T).where(T.c.seq <= last_row.seq)).rowcount
            conn.execute(update(A).where(A.c.id == 1).values(seq=last_row.seq, hash=last_row.hash, purged_us=now))
        return int(removed)
