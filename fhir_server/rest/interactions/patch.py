"""patch: ``PATCH [base]/[type]/[id]`` and conditional patch ``PATCH [base]/[type]?[search]``.

http://hl7.org/fhir/R4/http.html#patch: JSON Patch (``application/json-patch+json``) and
FHIRPath Patch (a ``Parameters`` resource). The patched resource is validated like any update
and stored as a new version; ``If-Match`` applies.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.patching import apply_patch
from fhir_server.rest.interactions.common import (
    check_if_match,
    read_live,
    require_id,
    require_type,
    single_match,
    written,
)
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.validation import check_resource


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type)
    with ctx.session(write=True) as session:
        if req.res_id is None:
            current = single_match(ctx, session, res_type, req.search_params())
            if current is None:
                raise FhirError("not-found", f"No {res_type} matches the patch condition")
        else:
            current = read_live(session, res_type, require_id(req.res_id))
        check_if_match(req, current)
        patched = apply_patch(current.resource(), req.content_type or "", req.body)
        if patched.get("resourceType") != res_type or patched.get("id") != current.res_id:
            raise FhirError("processing", "A patch must not change the resource type or id")
        check_resource(patched)
        version = session.update(current, patched, method="PATCH")
    return written(req, ctx, version, 200, f"Patched {res_type}/{version.res_id} to version {version.version}")
