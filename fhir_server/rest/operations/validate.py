"""``$validate``: ``POST [base]/[type]/$validate`` and ``[base]/[type]/[id]/$validate``.

http://hl7.org/fhir/R4/resource-operation-validate.html. The resource is the body itself or the
``resource`` part of a ``Parameters`` body; instance level without one validates the stored
version. ``profile`` (a canonical, query or Parameters) validates against that profile; without
it, against the base definition and every profile the resource claims in ``meta.profile``.
``mode`` is ``create``, ``update`` (the resource's id must be the URL's), ``delete`` (the
resource must exist; nothing else is checked) or ``profile``. As the specification says, the
answer is ``200 OK`` with an OperationOutcome whether or not the resource is valid; a request
that cannot be validated (no resource, unknown mode or profile) is a 400 or 404.
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.rest.interactions.common import require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import STRING, Inputs
from fhir_server.validation.conformance import ProfileStore, ProfileValidation
from fhir_server.validation.structural import validate as structural

MODES = ("create", "update", "delete", "profile")


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type)
    resource, mode, profile = _inputs(req, res_type)
    with ctx.session() as session:
        stored = session.read_current(res_type, req.res_id) if req.res_id else None
        if mode == "delete":
            if stored is None or stored.deleted:
                raise FhirError("not-found", f"{res_type}/{req.res_id} does not exist")
            return _outcome([])
        if resource is None:
            if stored is None or stored.deleted:
                raise FhirError("bad-request", "$validate needs a resource (the body, or a Parameters 'resource' part)")
            resource = stored.resource()
        if mode == "update" and req.res_id and resource.get("id") != req.res_id:
            raise FhirError("bad-request", f"mode=update: the resource's id must be {req.res_id!r}")
        checks = ProfileValidation(session, ctx.profiles or ProfileStore(ctx.search, ctx.repo))
        if profile and checks.resolve(profile) is None:
            raise FhirError("not-found", f"Profile {profile} is not known to this server")
        issues = structural(resource, res_type)
        if not any(i.severity in ("error", "fatal") for i in issues):
            issues += checks.validate(resource, [profile] if profile else None)
    return _outcome(issues)


def _outcome(issues: list[Issue]) -> FhirResponse:
    if not issues:
        issues = [Issue("information", "informational", "Validation found no issues")]
    return FhirResponse(200, resource=operation_outcome(issues))


def _inputs(req: FhirRequest, res_type: str) -> tuple[dict[str, Any] | None, str | None, str | None]:
    spec = {"resource": (f"resource:{res_type}", False), "mode": (STRING, False), "profile": (STRING, False)}
    inputs = Inputs(req, "validate", spec, body_resource="resource")
    mode = inputs.get("mode")
    if mode is not None and mode not in MODES:
        raise FhirError("bad-request", f"mode must be one of {', '.join(MODES)}, not {mode!r}")
    return inputs.get("resource"), mode, inputs.get("profile")
