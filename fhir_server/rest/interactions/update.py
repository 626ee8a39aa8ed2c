"""update: ``PUT [base]/[type]/[id]`` and conditional update ``PUT [base]/[type]?[search]``.

http://hl7.org/fhir/R4/http.html#update and #cond-update. Update-as-create with a client id
is supported for the platform's own clients (an institution's would learn which ids another
institution uses: it gets a 404 and creates with POST, docs/conformance.md); ``If-Match``
gives optimistic locking (412 on mismatch) and a concurrent change between read and write is
a 409.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions.common import (
    check_if_match,
    require_body,
    require_id,
    require_type,
    single_match,
    written,
)
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.storage.repository import Session, StoredVersion, new_id


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type)
    resource = require_body(req)
    body_id = resource.get("id")
    with ctx.session(write=True) as session:
        if req.res_id is None:
            return _conditional(req, ctx, session, res_type, resource)
        res_id = require_id(req.res_id)
        if body_id is None:
            raise FhirError("bad-request", "The resource in an update must have an id", f"{res_type}.id")
        if body_id != res_id:
            raise FhirError(
                "bad-request", f"The id {body_id!r} in the body does not match {res_id!r} in the URL", f"{res_type}.id"
            )
        current = session.read_current(res_type, res_id)
        if current is None and ctx.access is not None and not ctx.access.platform:
            # Update-as-create with an id of the client's choosing would answer "taken" for an id
            # another institution uses, and so tell that it exists: institutions create with POST.
            raise FhirError(
                "not-found",
                f"{res_type}/{res_id} is not known; an institution's resources get their ids from the "
                "server: create with POST (with If-None-Exist for idempotency)",
            )
        return _store(req, ctx, session, current, resource, res_id)


def _conditional(
    req: FhirRequest, ctx: RequestContext, session: Session, res_type: str, resource: dict
) -> FhirResponse:
    match = single_match(ctx, session, res_type, req.search_params())
    body_id = resource.get("id")
    if match is None:
        # a create: an institution's resources get ids from the server (see _store)
        chosen = body_id if ctx.access is None or ctx.access.platform else None
        return _store(req, ctx, session, None, resource, chosen or new_id())
    if body_id is not None and body_id != match.res_id:
        raise FhirError(
            "bad-request",
            f"The id {body_id!r} in the body differs from the matching resource {res_type}/{match.res_id}",
            f"{res_type}.id",
        )
    return _store(req, ctx, session, match, resource, match.res_id)


def _store(
    req: FhirRequest,
    ctx: RequestContext,
    session: Session,
    current: StoredVersion | None,
    resource: dict,
    res_id: str,
) -> FhirResponse:
    check_if_match(req, current)
    if current is None:
        version = session.create(resource, res_id, method="PUT")
        return written(req, ctx, version, 201, f"Created {version.res_type}/{res_id}")
    version = session.update(current, resource, method="PUT")
    if current.deleted:
        return written(req, ctx, version, 201, f"Re-created {version.res_type}/{res_id}")
    return written(req, ctx, version, 200, f"Updated {version.res_type}/{res_id} to version {version.version}")
