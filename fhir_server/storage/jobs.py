"""The ``jobs`` table: background jobs that any worker may run, one worker at a time.

Why a lease rather than a lock held for the whole job: a job (``$reindex`` of millions of
resources) runs for minutes or hours, and a PostgreSQL transaction open that long would hold back
vacuum. So a worker *claims* a job in one short transaction (``SELECT … FOR UPDATE SKIP LOCKED``
on PostgreSQL, so two workers polling at once never take the same row; on SQLite the claim runs
in a ``BEGIN IMMEDIATE`` write transaction, which serialises claimers) and then owns it while its
``heartbeat_us`` is recent. Every batch renews the heartbeat in the same transaction that
records the progress, conditionally on still being the owner of a running job, so a job that was
cancelled or taken over (its owner died and the lease expired) stops with its last batch rolled
back. A job given back on shutdown, or whose lease expired, is claimed again and goes on after
``last_rid``.

States: ``queued`` → ``running`` → ``completed`` | ``failed`` | ``cancelled``; ``running`` goes
back to ``queued`` when its owner stops cleanly (:func:`release`).
"""

from __future__ import annotations

import os
import socket
import uuid
from dataclasses import dataclass, fields
from typing import Any

from sqlalchemy import Connection, func, or_, select, update

from fhir_server.storage.schema import counters, jobs, resources
from fhir_server.util.clock import now_us

ACTIVE = ("queued", "running")
FINISHED = ("completed", "failed", "cancelled")


@dataclass
class Job:
    id: str
    kind: str
    res_type: str | None
    state: str
    batch_size: int
    last_rid: int
    total: int | None
    processed: int
    errors: int
    owner: str | None
    heartbeat_us: int | None
    created_us: int
    started_us: int | None
    finished_us: int | None
    error: str | None

    @property
    def finished(self) -> bool:
        return self.state in FINISHED

    def progress(self) -> str:
        """Short text for the ``X-Progress`` header (under 100 characters)."""
        scope = self.res_type or "all"
        if self.state == "queued" and not self.processed:
            return f"queued ({scope})"
        if self.total:
            pct = min(100, self.processed * 100 // self.total)
            return f"{self.state}: {self.processed} of {self.total} {scope} resources ({pct}%)"
        return f"{self.state}: {self.processed} {scope} resources"


_COLUMNS = [f.name for f in fields(Job)]


def _job(row: Any) -> Job:
    return Job(**{name: getattr(row, name) for name in _COLUMNS})


def new_owner() -> str:
    """An owner name unique to this process (workers are forked: call it after the fork)."""
    return f"{socket.gethostname()[:80]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def create(conn: Connection, kind: str, res_type: str | None, batch_size: int, owner: str | None = None) -> Job:
    """A new job; with ``owner`` it is created already claimed by that owner (state running)."""
    now = now_us()
    values = {
        "id": str(uuid.uuid4()),
        "kind": kind,
        "res_type": res_type,
        "state": "running" if owner else "queued",
        "batch_size": batch_size,
        "last_rid": 0,
        "total": None,
        "processed": 0,
        "errors": 0,
        "owner": owner,
        "heartbeat_us": now if owner else None,
        "created_us": now,
        "started_us": now if owner else None,
        "finished_us": None,
        "error": None,
    }
    conn.execute(jobs.insert().values(**values))
    return Job(**values)


def get(conn: Connection, job_id: str) -> Job | None:
    row = conn.execute(select(jobs).where(jobs.c.id == job_id)).first()
    return _job(row) if row else None


def find(conn: Connection, kind: str, res_type: str | None, states: tuple[str, ...] = ACTIVE) -> list[Job]:
    """Jobs of ``kind`` for ``res_type`` (None: the system-wide ones) in ``states``, oldest first."""
    type_cond = jobs.c.res_type.is_(None) if res_type is None else jobs.c.res_type == res_type
    rows = conn.execute(
        select(jobs)
        .where(jobs.c.kind == kind, type_cond, jobs.c.state.in_(states))
        .order_by(jobs.c.created_us, jobs.c.id)
    ).all()
    return [_job(r) for r in rows]


def _claimable(kinds: tuple[str, ...], lease_us: int, now: int) -> Any:
    expired = now - lease_us
    return (
        jobs.c.kind.in_(kinds),
        or_(jobs.c.state == "queued", (jobs.c.state == "running") & (jobs.c.heartbeat_us < expired)),
    )


def any_claimable(conn: Connection, kinds: tuple[str, ...], lease_us: int) -> bool:
    """Cheap read-only check before opening a write transaction to claim."""
    q = select(jobs.c.id).where(*_claimable(kinds, lease_us, now_us())).limit(1)
    return conn.execute(q).first() is not None


def claim(conn: Connection, owner: str, kinds: tuple[str, ...], lease_us: int, job_id: str | None = None) -> Job | None:
    """Take the oldest claimable job (or ``job_id``): queued, or running with an expired lease.

    Run inside a write transaction. On PostgreSQL ``FOR UPDATE SKIP LOCKED`` lets concurrent
    claimers pass over a row another one is taking; on SQLite the write transaction already
    excludes other writers.
    """
    now = now_us()
    q = select(jobs.c.id).where(*_claimable(kinds, lease_us, now))
    if job_id is not None:
        q = q.where(jobs.c.id == job_id)
    found = conn.execute(q.order_by(jobs.c.created_us, jobs.c.id).limit(1).with_for_update(skip_locked=True)).first()
    if found is None:
        return None
    claimed = conn.execute(
        update(jobs)
        .where(jobs.c.id == found.id, *_claimable(kinds, lease_us, now))  # still claimable: belt and braces
        .values(
            state="running",
            owner=owner,
            heartbeat_us=now,
            started_us=func.coalesce(jobs.c.started_us, now),
        )
    )
    if claimed.rowcount != 1:
        return None
    return get(conn, found.id)


def count_total(conn: Connection, job: Job, owner: str) -> None:
    """Count the resources ``job`` will visit, for progress reports (once, before its first batch)."""
    q = select(func.count()).select_from(resources).where(resources.c.deleted.is_(False))
    if job.res_type:
        q = q.where(resources.c.res_type == job.res_type)
    total = int(conn.execute(q).scalar_one())
    if conn.execute(update(jobs).where(*_owned(job, owner)).values(total=total)).rowcount == 1:
        job.total = total


def _owned(job: Job, owner: str) -> tuple[Any, ...]:
    return (jobs.c.id == job.id, jobs.c.owner == owner, jobs.c.state == "running")


def record_progress(
    conn: Connection, job: Job, owner: str, last_rid: int, processed: int, errors: int, error: str | None
) -> bool:
    """Advance ``job`` after a batch, in the batch's transaction; False if it is no longer ours
    (cancelled, or taken over after the lease expired): the caller must roll the batch back."""
    now = now_us()
    values: dict[str, Any] = {
        "last_rid": last_rid,
        "processed": jobs.c.processed + processed,
        "errors": jobs.c.errors + errors,
        "heartbeat_us": now,
    }
    if error:
        values["error"] = func.coalesce(jobs.c.error, error)
    if conn.execute(update(jobs).where(*_owned(job, owner)).values(**values)).rowcount != 1:
        return False
    job.last_rid = last_rid
    job.processed += processed
    job.errors += errors
    job.heartbeat_us = now
    if error and not job.error:
        job.error = error
    return True


def finish(conn: Connection, job: Job, owner: str, state: str, error: str | None = None) -> bool:
    """Mark ``job`` completed or failed (only if it is still ours)."""
    now = now_us()
    values: dict[str, Any] = {"state": state, "finished_us": now, "heartbeat_us": now}
    if error:
        values["error"] = error
    if conn.execute(update(jobs).where(*_owned(job, owner)).values(**values)).rowcount != 1:
        return False
    job.state, job.finished_us = state, now
    if error:
        job.error = error
    return True


def release(conn: Connection, job: Job, owner: str) -> bool:
    """Give ``job`` back (state queued, no owner) so that another worker resumes it at once."""
    values = {"state": "queued", "owner": None, "heartbeat_us": None}
    if conn.execute(update(jobs).where(*_owned(job, owner)).values(**values)).rowcount != 1:
        return False
    job.state, job.owner, job.heartbeat_us = "queued", None, None
    return True


def cancel(conn: Connection, job_id: str) -> Job | None:
    """Cancel a queued or running job (its runner stops at its next batch); None if unknown."""
    now = now_us()
    conn.execute(
        update(jobs).where(jobs.c.id == job_id, jobs.c.state.in_(ACTIVE)).values(state="cancelled", finished_us=now)
    )
    return get(conn, job_id)


# --------------------------------------------------------------------------- counters


def read_counter(conn: Connection, name: str) -> int:
    value = conn.execute(select(counters.c.value).where(counters.c.name == name)).scalar()
    return int(value or 0)


def bump_counter(conn: Connection, name: str) -> None:
    """Increment ``name`` in the caller's transaction (creating it if a migration did not)."""
    if conn.execute(update(counters).where(counters.c.name == name).values(value=counters.c.value + 1)).rowcount:
        return
    conn.execute(counters.insert().values(name=name, value=1))


__all__ = ["Job", "create", "get", "find", "claim", "release", "cancel", "finish", "record_progress", "new_owner"]
