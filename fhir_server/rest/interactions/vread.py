"""vread: ``GET [base]/[type]/[id]/_history/[vid]`` (http://hl7.org/fhir/R4/http.html#vread).

``_summary``/``_elements`` shape the returned resource (``rest/shaping.py``); without them the
stored bytes are returned unparsed.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions.common import gone, require_id, require_type, version_response
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.shaping import parse_params


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type, res_id = require_type(req.res_type), require_id(req.res_id)
    if not req.vid or not req.vid.isdigit():
        raise FhirError("not-found", f"Version {req.vid!r} of {res_type}/{res_id} is not known")
    summary, elements = parse_params(req.params) if req.params else (None, None)
    with ctx.session() as session:
        version = session.read_version(res_type, res_id, int(req.vid))
    if version is None:
        raise FhirError("not-found", f"Version {req.vid} of {res_type}/{res_id} is not known")
    if version.deleted:
        raise gone(version, f"Version {req.vid} of {res_type}/{res_id} is its deletion")
    return version_response(req, version, summary, elements)
