"""read: ``GET [base]/[type]/[id]`` (http://hl7.org/fhir/R4/http.html#read).

``_summary``/``_elements`` shape the returned resource (``rest/shaping.py``); without them the
stored bytes are returned unparsed.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.rest.interactions.common import read_live, require_id, require_type, version_response
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.shaping import parse_params


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type, res_id = require_type(req.res_type), require_id(req.res_id)
    summary, elements = parse_params(req.params) if req.params else (None, None)
    with ctx.session() as session:
        current = read_live(session, res_type, res_id)
    return version_response(req, current, summary, elements)
