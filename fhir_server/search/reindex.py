"""``$reindex``: recompute the search index of stored resources, in the background and resumably.

Why it is needed: a resource is indexed when it is written, with the search parameters known
then. A custom SearchParameter registered later (search/custom.py) finds only resources written
after it; ``$reindex`` brings the older ones up to date (and drops rows of parameters that were
deleted or changed), as in HAPI FHIR.

How a job runs (the table and the lease are described in storage/jobs.py):

- It is created already claimed by the worker that received ``POST $reindex`` and runs there in
  a background greenlet (a thread outside gevent); ``fhir-server db reindex`` runs the same code
  in the foreground. Server workers also poll for jobs nobody runs (given back on shutdown, or
  whose owner died and whose lease expired) and resume them.
- It waits ``settle`` seconds after its creation before the first batch: by then every worker
  has checked for new search parameters (they do so at most once per
  ``Settings.search_param_refresh``), so resources written afterwards are indexed with them at
  write time and the job does not need to chase them.
- Resources are visited in ``rid`` order, ``batch_size`` per transaction: read the current
  content, compute the rows with the same indexer the writes use, delete the old rows (the
  tables in ``idx_mask``), write the new ones with the bulk writer, update ``idx_mask``, and
  record ``last_rid`` and the counts in the same transaction. A restart therefore resumes after
  the last committed batch and never counts a batch twice.
- Concurrent writes: on PostgreSQL the batch's rows are read ``FOR UPDATE``, so a write to one of
  them waits for the batch (or the batch waits for it and reads the new version); a writer that
  read the resource before the batch changed its ``idx_mask`` gets a 409 and retries
  (storage/repository.py). On SQLite writers are serialised anyway.
- Between batches the greenlet yields, so requests go on being served.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from sqlalchemy import bindparam, select, update
from sqlalchemy.exc import OperationalError

from fhir_server.formats import json as fjson
from fhir_server.storage import jobs as job_table
from fhir_server.storage.bulk import insert_many
from fhir_server.storage.jobs import Job
from fhir_server.storage.repository import IndexRows, Repository
from fhir_server.storage.schema import INDEX_BITS, INDEX_TABLES, resources
from fhir_server.util.clock import now_us

log = logging.getLogger("fhir_server.reindex")

KIND = "reindex"
MAX_BATCH_SIZE = 10_000
_RETRIES = 4  # transient database errors (deadlock, lock timeout, lost connection) per batch


class _Lost(Exception):
    """The job was cancelled or taken over: roll the batch back and stop."""


class JobRunner:
    """Creates, claims and runs reindex jobs for one process; see the module docstring."""

    def __init__(
        self,
        repo: Repository,
        refresh: Callable[[], None] | None = None,
        *,
        batch_size: int = 500,
        lease: float = 60.0,
        settle: float = 1.0,
        poll_interval: float = 5.0,
    ) -> None:
        self.repo = repo
        self.refresh = refresh  # reloads custom search parameters if another worker changed them
        self.batch_size = batch_size
        self.lease_us = int(lease * 1_000_000)
        self.settle_us = int(settle * 1_000_000)
        self.poll_interval = poll_interval
        self._owner: tuple[int, str] | None = None
        self._lock = threading.Lock()
        self._queue: list[Job] = []
        self._thread: threading.Thread | None = None
        self._polling = False
        self._stopping = False
        self._wake = threading.Event()

    @property
    def owner(self) -> str:
        """This process's name in ``jobs.owner`` (recomputed after a fork)."""
        if self._owner is None or self._owner[0] != os.getpid():
            self._owner = (os.getpid(), job_table.new_owner())
        return self._owner[1]

    # ------------------------------------------------------------------ job table

    def submit(self, res_type: str | None, batch_size: int | None = None, background: bool = True) -> Job:
        """A new job claimed by this process; run in the background unless ``background`` is False."""
        size = max(1, min(batch_size or self.batch_size, MAX_BATCH_SIZE))
        with self.repo.session(write=True) as s:
            job = job_table.create(s.conn, KIND, res_type, size, owner=self.owner)
        log.info("reindex job %s created (%s, batches of %d)", job.id, res_type or "all types", size)
        if background:
            with self._lock:
                self._queue.append(job)
                self._ensure_thread()
            self._wake.set()
        return job

    def get(self, job_id: str) -> Job | None:
        with self.repo.session() as s:
            return job_table.get(s.conn, job_id)

    def cancel(self, job_id: str) -> Job | None:
        with self.repo.session(write=True) as s:
            return job_table.cancel(s.conn, job_id)

    def resumable(self, res_type: str | None) -> Job | None:
        """The oldest unfinished job for ``res_type`` that nobody runs now, claimed; or None."""
        with self.repo.session() as s:
            candidates = job_table.find(s.conn, KIND, res_type)
        for job in candidates:
            claimed = self.claim(job.id)
            if claimed is not None:
                return claimed
        return None

    def claim(self, job_id: str | None = None) -> Job | None:
        """Claim a queued job, or one whose lease expired (``job_id``: only that one)."""
        with self.repo.session() as s:
            if job_id is None and not job_table.any_claimable(s.conn, (KIND,), self.lease_us):
                return None
        with self.repo.session(write=True) as s:
            job = job_table.claim(s.conn, self.owner, (KIND,), self.lease_us, job_id)
        if job is not None:
            log.info("reindex job %s claimed, resuming after rid %d", job.id, job.last_rid)
        return job

    def release(self, job: Job) -> None:
        """Give ``job`` back unfinished (on shutdown) so that it is resumed later."""
        with self.repo.session(write=True) as s:
            if job_table.release(s.conn, job, self.owner):
                log.info("reindex job %s given back after rid %d", job.id, job.last_rid)

    # ------------------------------------------------------------------ running

    def run(self, job: Job, max_batches: int | None = None, progress: Callable[[Job], None] | None = None) -> Job:
        """Process ``job`` (claimed by this process) until it is done, lost or ``max_batches`` ran.

        Stopping the runner gives the job back after the current batch.
        """
        try:
            if not self._settle(job):
                self.release(job)
                return job
            if job.total is None:
                with self.repo.session(write=True) as s:
                    job_table.count_total(s.conn, job, self.owner)
            batches = 0
            while True:
                if self._stopping:
                    self.release(job)
                    return job
                more = self._batch_with_retries(job)
                if progress is not None:
                    progress(job)
                if not more:
                    break
                batches += 1
                if max_batches is not None and batches >= max_batches:
                    return job
                time.sleep(0)  # let requests run (gevent) between batches
        except Exception as exc:  # noqa: BLE001 - recorded in the job; the status URL reports it
            log.exception("reindex job %s failed", job.id)
            self._fail(job, f"{type(exc).__name__}: {exc}")
        if job.state == "completed":
            log.info("reindex job %s completed: %d resources, %d errors", job.id, job.processed, job.errors)
        return job

    def _settle(self, job: Job) -> bool:
        """Wait until every worker has seen the search parameters that existed at job creation."""
        while not self._stopping:
            remaining = (job.created_us + self.settle_us - now_us()) / 1_000_000
            if remaining <= 0:
                return True
            time.sleep(min(remaining, 0.1))
        return False

    def _batch_with_retries(self, job: Job) -> bool:
        """One batch; True if more may follow. Retries transient database errors."""
        for attempt in range(_RETRIES):
            try:
                return self._batch(job)
            except _Lost:
                fresh = self.get(job.id)
                if fresh is not None:
                    job.__dict__.update(fresh.__dict__)
                log.info("reindex job %s stopped here: it is %s", job.id, job.state)
                return False
            except OperationalError as exc:
                if attempt == _RETRIES - 1:
                    raise
                log.warning("reindex job %s: batch after rid %d failed (%s); retrying", job.id, job.last_rid, exc.orig)
                time.sleep(0.5 * 2**attempt)
        raise AssertionError("unreachable")

    def _batch(self, job: Job) -> bool:
        if self.refresh is not None:
            self.refresh()
        work = replace(job)  # applied to ``job`` only once the batch has committed
        r = resources
        query = select(r.c.rid, r.c.res_type, r.c.res_id, r.c.idx_mask, r.c.content).where(
            r.c.rid > job.last_rid, r.c.deleted.is_(False)
        )
        if job.res_type:
            query = query.where(r.c.res_type == job.res_type)
        with self.repo.session(write=True) as s:
            conn = s.conn
            rows = conn.execute(query.order_by(r.c.rid).limit(job.batch_size).with_for_update()).all()
            if not rows:
                if not job_table.finish(conn, work, self.owner, "completed"):
                    raise _Lost
                more = False
            else:
                errors, first_error = self._reindex_rows(conn, rows)
                if not job_table.record_progress(conn, work, self.owner, rows[-1].rid, len(rows), errors, first_error):
                    raise _Lost
                more = True
        job.__dict__.update(work.__dict__)
        return more

    def _reindex_rows(self, conn: Any, rows: list[Any]) -> tuple[int, str | None]:
        new_rows: IndexRows = {}
        stale: dict[str, list[int]] = {}
        masks: list[dict[str, int]] = []
        errors, first_error = 0, None
        for row in rows:
            try:
                index = self.repo.indexer(fjson.loads(row.content), row.rid)
            except Exception as exc:  # noqa: BLE001 - one bad resource must not stop the job
                errors += 1
                first_error = first_error or f"{row.res_type}/{row.res_id}: {type(exc).__name__}: {exc}"
                log.warning("reindex: cannot index %s/%s: %s", row.res_type, row.res_id, exc)
                continue
            mask = 0
            for name, irows in index.items():
                if irows:
                    mask |= INDEX_BITS[name]
                    new_rows.setdefault(name, []).extend(irows)
            for name, bit in INDEX_BITS.items():
                if row.idx_mask & bit:
                    stale.setdefault(name, []).append(row.rid)
            if mask != row.idx_mask:
                masks.append({"b_rid": row.rid, "b_mask": mask})
        for name, rids in stale.items():
            table = INDEX_TABLES[name]
            conn.execute(table.delete().where(table.c.rid.in_(rids)))
        insert_many(conn, [(INDEX_TABLES[name], irows) for name, irows in new_rows.items()])
        if masks:
            stmt = update(resources).where(resources.c.rid == bindparam("b_rid")).values(idx_mask=bindparam("b_mask"))
            conn.execute(stmt, masks)
        return errors, first_error

    def _fail(self, job: Job, error: str) -> None:
        try:
            with self.repo.session(write=True) as s:
                job_table.finish(s.conn, job, self.owner, "failed", error[:2000])
        except Exception:  # noqa: BLE001 - the lease expires and another worker retries
            log.exception("reindex job %s: could not record the failure", job.id)

    # ------------------------------------------------------------------ background

    def start_polling(self) -> None:
        """Server workers: also resume jobs nobody runs (checked every ``poll_interval`` seconds)."""
        with self._lock:
            self._polling = True
            self._stopping = False
            self._ensure_thread()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the current batch, giving unfinished jobs back; wait up to ``timeout``."""
        self._stopping = True
        self._wake.set()
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def _ensure_thread(self) -> None:  # caller holds self._lock
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="fhir-jobs", daemon=True)
            self._thread.start()

    def _loop(self) -> None:
        while True:
            with self._lock:
                job = self._queue.pop(0) if self._queue else None
                if job is None and (self._stopping or not self._polling):
                    self._thread = None
                    return
            try:
                if job is None:
                    job = self.claim()
                    if job is None:
                        self._wake.wait(self.poll_interval)
                        self._wake.clear()
                        continue
                if self._stopping:
                    self.release(job)
                    continue
                self.run(job)
            except Exception:  # noqa: BLE001 - keep the loop alive; the lease lets others retry
                log.exception("background job loop")
                time.sleep(1.0)
