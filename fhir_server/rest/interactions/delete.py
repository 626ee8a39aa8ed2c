"""delete: ``DELETE [base]/[type]/[id]`` and conditional delete ``DELETE [base]/[type]?[search]``.

http://hl7.org/fhir/R4/http.html#delete and #3.1.0.7.1. History is kept; a later read is 410.
Deleting an already deleted resource succeeds and changes nothing. A conditional delete
removes every match (CapabilityStatement ``conditionalDelete = multiple``) up to
``Settings.max_conditional_delete``, beyond which it is refused with 412.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, info_outcome
from fhir_server.rest.interactions.common import check_if_match, conditional_matches, require_id, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type)
    if req.res_id is None:
        return _conditional(req, ctx, res_type)
    res_id = require_id(req.res_id)
    with ctx.session(write=True) as session:
        current = session.read_current(res_type, res_id)
        if current is None:
            raise FhirError("not-found", f"{res_type}/{res_id} is not known")
        if current.deleted:
            return _deleted(req, f"{res_type}/{res_id} was already deleted", current.etag)
        check_if_match(req, current)
        version = session.delete(current)
    return _deleted(req, f"Deleted {res_type}/{res_id} (version {version.version})", version.etag)


def _conditional(req: FhirRequest, ctx: RequestContext, res_type: str) -> FhirResponse:
    limit = ctx.settings.max_conditional_delete
    with ctx.session(write=True) as session:
        matches = conditional_matches(ctx, session, res_type, req.search_params(), limit=limit + 1)
        if len(matches) > limit:
            raise FhirError("multiple-matches", f"The condition matches more than {limit} resources; narrow it down")
        for current in matches:
            session.delete(current)
    if not matches:
        return _deleted(req, f"No {res_type} matched; nothing deleted", None)
    return _deleted(req, f"Deleted {len(matches)} {res_type} resource(s)", None)


def _deleted(req: FhirRequest, message: str, etag: str | None) -> FhirResponse:
    headers = {"ETag": etag} if etag else {}
    if req.prefer.get("return") == "minimal":
        return FhirResponse(204, headers=headers)
    return FhirResponse(200, resource=info_outcome(message), headers=headers)
