"""``Patient/[id]/$everything``: the patient's record in one paged searchset.

http://hl7.org/fhir/R4/patient-operation-everything.html. The record is the Patient and every
resource whose patient it is (``resources.patient``: the resource's ``patient``, ``subject`` or
``beneficiary`` reference, security/tenancy.py), with what those resources reference included
(practitioners, organizations, medications, …). It is an ordinary search underneath
(search/engine.py), so it pages by keyset cursors and sees only what the request may see: another
institution's records about the patient appear only while a grant shares them, and a patient
the request may not see is a 404.

Parameters: ``_since`` (resources changed since), ``_type`` (comma-separated types), ``_count``.
``start``/``end`` (a care date window) are refused with 400: which date of each resource type
counts as its "care date" is left to servers, and a guess would silently drop records.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.model import get_model
from fhir_server.rest.bundles import bundle, page_link
from fhir_server.rest.interactions.common import count_param, read_live, require_id
from fhir_server.rest.interactions.search import decode_cursor, encode_cursor, entry
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.search.engine import Cursor
from fhir_server.storage.schema import resources
from fhir_server.util.fhirdate import parse_range

_KNOWN = {"_since", "_type", "_count", "_cursor", "_format", "_pretty"}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    patient = require_id(req.res_id)
    names = {k for k, _ in req.params}
    if names & {"start", "end"}:
        raise FhirError("invalid-param", "$everything: start and end (a care date window) are not supported")
    unknown = sorted(names - _KNOWN)
    if unknown:
        raise FhirError(
            "invalid-param", f"$everything has no parameter {unknown[0]!r} (known: {', '.join(sorted(_KNOWN))})"
        )
    r = resources
    where = [r.c.patient == patient]
    types = [t for raw in (v for k, v in req.params if k == "_type") for t in raw.split(",") if t]
    for res_type in types:
        if res_type not in get_model().resource_types:
            raise FhirError("invalid-param", f"_type: {res_type!r} is not a resource type")
    if types:
        where.append(r.c.res_type.in_(types))
    since = req.param("_since")
    if since is not None:
        try:
            where.append(r.c.updated_us >= parse_range(since)[0])
        except ValueError:
            raise FhirError("invalid-param", f"_since must be a FHIR instant, not {since!r}") from None
    count = count_param(req, ctx, minimum=1)
    token = req.param("_cursor")
    cursor = decode_cursor(token) if token else None
    with ctx.session() as session:
        read_live(session, "Patient", patient)  # 404 for a patient the request may not see
        page = ctx.search.search(session, None, [("_include", "*")], count, cursor, where=where)
    path = f"Patient/{patient}/$everything"
    kept = [(k, v) for k, v in req.params if k in ("_since", "_type", "_count")]
    links = [("self", page_link(ctx.base_url, path, req.params))]
    if page.has_next and page.versions:
        after = Cursor(page.keys[-1], page.versions[-1].rid)
        links.append(("next", page_link(ctx.base_url, path, [*kept, ("_cursor", encode_cursor(after))])))
    entries = [entry(ctx, v, "match", None, None) for v in page.versions]
    entries += [entry(ctx, v, "include", None, None) for v in page.included]
    total = len(page.versions) if cursor is None and not page.has_next else None
    return FhirResponse(200, resource=bundle("searchset", entries, links, total))
