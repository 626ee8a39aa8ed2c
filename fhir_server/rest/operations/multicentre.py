"""``ServiceRequest/[id]/$invite``, ``$package`` and ``$archive``: a multi-centre consultation.

The rules are workflow/multicentre.py's and workflow/case_package.py's. ``$invite`` (the leader)
stores one invitation Task per participating institution the request names that has none yet, in
one transaction, and answers them as a ``collection`` Bundle (201). ``$package`` is the case data
package as the caller may see it. ``$archive`` (the leader, once the request is completed) stores
the consultation's archive Bundle (201 with its ``Location``).
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions.common import read_live, require_id
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.documents import find_all
from fhir_server.security.grants import performer_organizations
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import case_package, multicentre

#: closed consultations are archived
_CLOSED = frozenset({"completed", "revoked"})


def invite(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    request_id = require_id(req.res_id)
    now = now_us()
    with ctx.session(write=True) as session:
        stored = read_live(session, "ServiceRequest", request_id)
        _require_leader(session, stored, "invites")
        request = stored.resource()
        participants = performer_organizations(session, request)
        multicentre.check_request(request, participants, stored.tenant)
        invited = {
            ref.split("/", 1)[1]
            for task in find_all(ctx, session, "Task", [("based-on", f"ServiceRequest/{request_id}")])
            if isinstance(ref := (task.resource().get("owner") or {}).get("reference"), str)
            and ref.startswith("Organization/")
        }
        created = [
            session.create(multicentre.invitation(request, org, now, ctx.settings.invitation_hours))
            for org in dict.fromkeys(participants)
            if org != stored.tenant and org not in invited
        ]
    bundle = {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": instant(now),
        "entry": [
            {"fullUrl": ctx.full_url(v.location.split("/_history")[0]), "resource": v.resource()} for v in created
        ],
    }
    return FhirResponse(201 if created else 200, resource=bundle)


def package(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    request_id = require_id(req.res_id)
    with ctx.session() as session:
        stored = read_live(session, "ServiceRequest", request_id)
        bundle = case_package.package(session, stored, lambda t, p: find_all(ctx, session, t, p), ctx.base_url)
    return FhirResponse(200, resource=bundle)


def archive(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    request_id = require_id(req.res_id)
    with ctx.session(write=True) as session:
        stored = read_live(session, "ServiceRequest", request_id)
        _require_leader(session, stored, "archives")
        status = stored.resource().get("status")
        if status not in _CLOSED:
            raise FhirError(
                "conflict",
                f"ServiceRequest/{request_id} is {status!r}: a consultation is archived once it is completed",
                "ServiceRequest.status",
            )
        bundle = case_package.archive(session, stored, lambda t, p: find_all(ctx, session, t, p), ctx.base_url)
        kept = session.create(bundle)
    resp = FhirResponse.for_version(201, kept)
    resp.headers["Location"] = ctx.full_url(kept.location)
    return resp


def _require_leader(session: Session, request: StoredVersion, doing: str) -> None:
    access = session.access
    if access is not None and not access.platform and access.organization != request.tenant:
        raise FhirError(
            "forbidden",
            f"ServiceRequest/{request.res_id} is another institution's request: only the leading institution "
            f"{doing} it",
        )
