"""``$reindex``: ``POST [base]/$reindex`` and ``POST [base]/[type]/$reindex``, answered asynchronously.

Follows the asynchronous request pattern (http://hl7.org/fhir/R4/async.html): the kick-off
answers ``202 Accepted`` with ``Content-Location`` naming a status URL (``[base]/$reindex/[job]``)
whether or not the client sent ``Prefer: respond-async``. ``GET`` on it is ``202`` with
``X-Progress`` while the job is queued or running, ``200`` with a ``Parameters`` summary once it
completed, ``500`` with an OperationOutcome if it failed and ``404`` once cancelled or unknown;
``DELETE`` cancels it (``202``). The job itself is search/reindex.py.

Input (optional): ``batchSize`` (resources per transaction, 1..10000), as a ``Parameters`` body
or in the query string.
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue, info_outcome, operation_outcome
from fhir_server.rest.interactions.common import require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.search.reindex import MAX_BATCH_SIZE, JobRunner
from fhir_server.storage.jobs import Job
from fhir_server.util.clock import instant


def _runner(ctx: RequestContext) -> JobRunner:
    if ctx.jobs is None:
        raise FhirError("not-allowed", "Background jobs are not available here")
    return ctx.jobs


def start(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    """Kick-off: create the job (claimed by this worker, which runs it in the background)."""
    runner = _runner(ctx)
    if ctx.active_session is not None:
        raise FhirError("bad-request", "$reindex cannot run inside a transaction Bundle")
    res_type = require_type(req.res_type) if req.res_type else None
    job = runner.submit(res_type, _batch_size(req))
    status_url = ctx.full_url(f"$reindex/{job.id}")
    scope = f"{res_type} resources" if res_type else "all resources"
    outcome = info_outcome(f"Reindex of {scope} accepted as job {job.id}; poll {status_url} for its status")
    return FhirResponse(202, resource=outcome, headers={"Content-Location": status_url})


def status(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    job = _job(ctx, req.res_id)
    if job.state in ("queued", "running"):
        return FhirResponse(202, headers={"X-Progress": job.progress(), "Retry-After": "1"})
    if job.state == "completed":
        return FhirResponse(200, resource=summary(job))
    if job.state == "failed":
        issue = Issue("error", "exception", f"Reindex job {job.id} failed: {job.error or 'unknown error'}")
        return FhirResponse(500, resource=operation_outcome([issue]))
    raise FhirError("not-found", f"Reindex job {job.id} was cancelled")


def cancel(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    job = _runner(ctx).cancel(req.res_id or "")
    if job is None:
        raise FhirError("not-found", f"No reindex job {req.res_id!r}")
    if job.state == "cancelled":
        message = f"Reindex job {job.id} cancelled after {job.processed} resources"
    else:
        message = f"Reindex job {job.id} had already finished ({job.state}); nothing to cancel"
    return FhirResponse(202, resource=info_outcome(message))


def _job(ctx: RequestContext, job_id: str | None) -> Job:
    job = _runner(ctx).get(job_id or "")
    if job is None:
        raise FhirError("not-found", f"No reindex job {job_id!r}")
    return job


def _batch_size(req: FhirRequest) -> int | None:
    raw: Any = req.param("batchSize")
    body = req.resource
    if body is not None:
        if body.get("resourceType") != "Parameters":
            raise FhirError("bad-request", "The body of $reindex must be a Parameters resource")
        for p in body.get("parameter", []):
            if p.get("name") == "batchSize":
                raw = p.get("valueInteger", p.get("valuePositiveInt", p.get("valueString")))
            else:
                raise FhirError("invalid-param", f"Unknown $reindex parameter {p.get('name')!r}")
    if raw is None:
        return None
    try:
        size = int(raw)
    except (TypeError, ValueError):
        size = 0
    if not 1 <= size <= MAX_BATCH_SIZE:
        raise FhirError("invalid-param", f"batchSize must be an integer from 1 to {MAX_BATCH_SIZE}, not {raw!r}")
    return size


def summary(job: Job) -> dict[str, Any]:
    """The completed job as ``Parameters``."""
    params: list[dict[str, Any]] = [
        {"name": "job", "valueString": job.id},
        {"name": "state", "valueCode": job.state},
    ]
    if job.res_type:
        params.append({"name": "type", "valueCode": job.res_type})
    params += [
        {"name": "processed", "valueInteger": job.processed},
        {"name": "errors", "valueInteger": job.errors},
    ]
    if job.started_us:
        params.append({"name": "started", "valueInstant": instant(job.started_us)})
    if job.finished_us:
        params.append({"name": "finished", "valueInstant": instant(job.finished_us)})
    if job.error:
        params.append({"name": "firstError", "valueString": job.error})
    return {"resourceType": "Parameters", "parameter": params}
