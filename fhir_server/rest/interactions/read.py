"""read: ``GET [base]/[type]/[id]`` (http://hl7.org/fhir/R4/http.html#read).

``_summary``/``_elements`` shape the returned resource (``rest/shaping.py``); without them the
stored bytes are returned unparsed.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.rest.interactions.common import not_modified, read_live, require_id, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.shaping import parse_params, shape_content


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type, res_id = require_type(req.res_type), require_id(req.res_id)
    summary, elements = parse_params(req.params) if req.params else (None, None)
    with ctx.session() as session:
        current = read_live(session, res_type, res_id)
    if not_modified(req, current):
        return FhirResponse.for_version(304, current, body=False)
    resp = FhirResponse.for_version(200, current)
    if (summary or elements) and resp.body is not None:
        resp.body, resp.resource = None, shape_content(resp.body, summary, elements)
    return resp
