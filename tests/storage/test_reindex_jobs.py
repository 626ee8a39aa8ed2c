"""The reindex job runner and the custom-parameter sync on SQLite and PostgreSQL (real databases).

Jobs here run through their own :class:`JobRunner` objects (standing for worker processes with
different owners), synchronously, so a test decides where a job stops: after one batch (a crash:
the lease is left to expire), on release (a clean shutdown), or on cancellation.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select

from fhir_server.errors import FhirError
from fhir_server.search.custom import CustomSearchParameters
from fhir_server.search.registry import Registry
from fhir_server.search.reindex import JobRunner
from fhir_server.storage import jobs as job_table
from fhir_server.storage.schema import INDEX_BITS, idx_number, idx_token, resources

EXT = "http://example.org/fhir/StructureDefinition/tcm-syndrome"


def _basic(code: str, n: int | None = None) -> dict:
    ext = [{"url": EXT, "valueCoding": {"system": "http://example.org/cs", "code": code}}]
    if n is not None:
        ext.append({"url": EXT + "-score", "valueInteger": n})
    return {"resourceType": "Basic", "code": {"text": "TCM syndrome differentiation"}, "extension": ext}


def _search_parameter(code: str, **extra: object) -> dict:
    return {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/fhir/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "TCM syndrome (证型)",
        "code": code,
        "base": ["Basic"],
        "type": "token",
        "expression": f"Basic.extension('{EXT}').value",
        **extra,
    }


def _runner(services, **options: float) -> JobRunner:  # type: ignore[no-untyped-def]
    """A runner as another worker process would have: its own owner name, no settle delay."""
    options = {"settle": 0.0, **options}
    return JobRunner(services.repo, services.search_params.maybe_refresh, **options)


def _matches(services, code: str, value: str) -> set[str]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        return {v.res_id for v in services.search.match(s, "Basic", [(code, value)], limit=10_000)}


@pytest.fixture()
def custom(services) -> Iterator[tuple[str, str, list[str]]]:  # type: ignore[no-untyped-def]
    """Basic resources stored *before* a custom token parameter on them exists.

    Yields (code, value, ids); the SearchParameter is deleted afterwards.
    """
    code, value = f"syndrome-{uuid.uuid4().hex[:8]}", f"qi-stagnation-{uuid.uuid4().hex[:6]}"
    with services.repo.session(write=True) as s:
        ids = [s.create(_basic(value)).res_id for _ in range(5)]
        sp = s.create(_search_parameter(code))
    try:
        yield code, value, ids
    finally:
        with services.repo.session(write=True) as s:
            s.delete(s.read_current("SearchParameter", sp.res_id))


def _basic_rids(services) -> list[int]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        q = select(resources.c.rid).where(resources.c.res_type == "Basic", resources.c.deleted.is_(False))
        return list(s.conn.execute(q.order_by(resources.c.rid)).scalars())


def test_job_indexes_older_resources(services, custom) -> None:  # type: ignore[no-untyped-def]
    code, value, ids = custom
    assert _matches(services, code, value) == set()  # stored before the parameter
    runner = _runner(services)
    job = runner.submit("Basic", batch_size=2, background=False)
    assert job.state == "running" and job.owner == runner.owner and job.total is None
    seen: list[int] = []
    job = runner.run(job, progress=lambda j: seen.append(j.processed))
    assert job.state == "completed" and job.errors == 0 and job.error is None
    assert job.processed == job.total == len(_basic_rids(services)) and job.last_rid == _basic_rids(services)[-1]
    assert seen[-1] == job.total and seen == sorted(seen)
    assert _matches(services, code, value) == set(ids)
    stored = runner.get(job.id)
    assert stored is not None and stored.state == "completed"
    assert (stored.processed, stored.last_rid) == (job.total, job.last_rid)
    assert stored.finished_us and stored.started_us and stored.finished_us >= stored.started_us
    # a second run changes nothing: one set of rows per resource, not two
    again = runner.run(runner.submit("Basic", batch_size=3, background=False))
    assert again.state == "completed" and again.processed == job.total
    with services.repo.session() as s:
        sp = services.search.registry.get("Basic", code).sp
        rows = s.conn.execute(select(func.count()).select_from(idx_token).where(idx_token.c.sp == sp)).scalar_one()
    assert rows == len(ids)


def test_job_resumes_after_a_crash_from_the_stored_rid(services, custom) -> None:  # type: ignore[no-untyped-def]
    code, value, ids = custom
    rids = _basic_rids(services)
    first = _runner(services)
    job = first.submit("Basic", batch_size=2, background=False)
    first.run(job, max_batches=1)  # ... and the process dies: no release, the lease stays
    stored = job_table_get(services, job.id)
    assert (stored.state, stored.owner, stored.last_rid, stored.processed) == ("running", first.owner, rids[1], 2)

    live_lease = _runner(services, lease=60.0)
    assert live_lease.claim(job.id) is None  # still owned: nobody else may run it
    taker = _runner(services, lease=0.0)  # the lease has expired for this one
    resumed = taker.claim(job.id)
    assert resumed is not None and resumed.owner == taker.owner and resumed.last_rid == rids[1]
    batches: list[int] = []
    done = taker.run(resumed, progress=lambda j: batches.append(j.last_rid))
    assert done.state == "completed" and done.processed == len(rids)  # the first two are not counted twice
    assert batches[0] == rids[3]  # went on after rids[1], not from the start
    assert _matches(services, code, value) == set(ids)
    # the old owner, waking up, cannot record anything any more
    assert first.run(job).state == "completed"
    assert job_table_get(services, job.id).processed == len(rids)


def test_released_job_is_resumed_and_cancelled_job_stops(services, custom) -> None:  # type: ignore[no-untyped-def]
    _code, _value, _ids = custom
    rids = _basic_rids(services)
    worker = _runner(services)
    job = worker.submit("Basic", batch_size=2, background=False)
    worker.run(job, max_batches=1)
    worker.release(job)  # clean shutdown
    stored = job_table_get(services, job.id)
    assert (stored.state, stored.owner, stored.last_rid) == ("queued", None, rids[1])

    other = _runner(services)
    resumed = other.resumable("Basic")
    assert resumed is not None and resumed.id == job.id and resumed.last_rid == rids[1]
    other.run(resumed, max_batches=1)
    assert other.cancel(job.id).state == "cancelled"
    stopped = other.run(resumed)  # meets the cancellation at its next batch: rolled back, not recorded
    assert stopped.state == "cancelled" and stopped.processed == 4
    assert job_table_get(services, job.id).last_rid == rids[3]
    assert other.claim(job.id) is None and other.resumable("Basic") is None


def test_only_one_worker_claims_a_job(services) -> None:  # type: ignore[no-untyped-def]
    """Workers polling at the same moment: SKIP LOCKED (PostgreSQL) / the write lock (SQLite)."""
    runners = [_runner(services) for _ in range(4)]
    for _ in range(5):
        with services.repo.session(write=True) as s:
            job = job_table.create(s.conn, "reindex", "Basic", 100)  # queued, nobody's
        barrier = threading.Barrier(len(runners))
        won: list[str] = []

        def claim(
            runner: JobRunner, barrier: threading.Barrier = barrier, won: list = won, job_id: str = job.id
        ) -> None:
            barrier.wait()
            got = runner.claim(job_id)
            if got is not None:
                won.append(got.owner)

        threads = [threading.Thread(target=claim, args=(r,)) for r in runners]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(won) == 1, won
        assert job_table_get(services, job.id).owner == won[0]
        with services.repo.session(write=True) as s:
            job_table.cancel(s.conn, job.id)


def test_a_write_that_read_before_a_reindex_changed_the_mask_is_a_conflict(services) -> None:  # type: ignore[no-untyped-def]
    """The reindex adds rows in a table the writer did not know of: its update must not leave them behind."""
    code = f"score-{uuid.uuid4().hex[:8]}"
    with services.repo.session(write=True) as s:
        stored = s.create(_basic("x", n=7))
    assert not stored.idx_mask & INDEX_BITS["idx_number"]
    number = _search_parameter(code, type="number", expression=f"Basic.extension('{EXT}-score').value")
    with services.repo.session(write=True) as s:
        sp = s.create(number)
    try:
        with services.repo.session() as s:
            stale = s.read_current("Basic", stored.res_id)  # a writer reads ...
        runner = _runner(services)
        assert runner.run(runner.submit("Basic", background=False)).state == "completed"
        with services.repo.session() as s:
            current = s.read_current("Basic", stored.res_id)
            assert current.idx_mask & INDEX_BITS["idx_number"] and current.version == stale.version
        with pytest.raises(FhirError) as err:  # ... and writes after the reindex: 409, retry
            with services.repo.session(write=True) as s:
                s.update(stale, _basic("y", n=8))
        assert err.value.status == 409
        with services.repo.session(write=True) as s:  # the retry replaces every index row
            s.update(s.read_current("Basic", stored.res_id), _basic("y", n=8))
        with services.repo.session() as s:
            q = select(idx_number.c.value).where(idx_number.c.rid == stored.rid)
            assert list(s.conn.execute(q).scalars()) == [8.0]
    finally:
        with services.repo.session(write=True) as s:
            s.delete(s.read_current("SearchParameter", sp.res_id))


def test_other_workers_pick_up_search_parameters_through_the_counter(services) -> None:  # type: ignore[no-untyped-def]
    """A second process (own registry, own sync) learns of writes made through the first."""
    registry = Registry()
    other = CustomSearchParameters(services.repo.engine, registry, refresh_interval=0.0)
    other.refresh(force=True)
    code = f"syndrome-{uuid.uuid4().hex[:8]}"
    assert registry.get("Basic", code) is None
    with services.repo.session(write=True) as s:
        sp = s.create(_search_parameter(code))
    assert services.search.registry.get("Basic", code) is not None  # the writing process: after commit
    other.maybe_refresh()
    param = registry.get("Basic", code)
    assert param is not None and param.custom and param.type == "token"
    assert other.refresh() is False  # counter unchanged: nothing to reload
    with services.repo.session(write=True) as s:
        s.update(s.read_current("SearchParameter", sp.res_id), _search_parameter(code, status="retired"))
    other.maybe_refresh()
    assert registry.get("Basic", code) is None and services.search.registry.get("Basic", code) is None


def job_table_get(services, job_id: str) -> job_table.Job:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        job = job_table.get(s.conn, job_id)
    assert job is not None
    return job
