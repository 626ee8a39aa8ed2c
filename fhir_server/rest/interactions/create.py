"""create: ``POST [base]/[type]``, with conditional create via ``If-None-Exist``.

http://hl7.org/fhir/R4/http.html#create and #ccreate. The server assigns the id; an id in the
body is ignored, as the specification says.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.rest.interactions.common import require_body, require_type, single_match, written
from fhir_server.rest.messages import FhirRequest, FhirResponse, parse_query


def handle(req: FhirRequest, ctx: RequestContext, res_id: str | None = None) -> FhirResponse:
    """``res_id`` lets a transaction Bundle give the id it already promised to references."""
    res_type = require_type(req.res_type)
    resource = require_body(req)
    condition = req.header("if-none-exist")
    with ctx.session(write=True) as session:
        if condition:
            existing = single_match(ctx, session, res_type, parse_query(condition.lstrip("?")))
            if existing is not None:
                return written(req, ctx, existing, 200, f"{existing.res_type}/{existing.res_id} already exists")
        version = session.create(resource, res_id)
    return written(req, ctx, version, 201, f"Created {res_type}/{version.res_id}")
