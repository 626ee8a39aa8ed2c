"""search: ``GET [base]/[type]?...``, ``POST [base]/[type]/_search`` and system-level search.

http://hl7.org/fhir/R4/http.html#search and search.html. Results are a ``searchset`` Bundle
paged by an opaque cursor; ``_total=accurate`` (or a result that fits one page) gives
``Bundle.total``; ``_summary=count`` returns only the total.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.rest.bundles import bundle, decode_cursor, encode_cursor, page_link, raw_resource
from fhir_server.rest.interactions.common import count_param, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type) if req.res_type else None
    params = req.search_params()
    count = count_param(req, ctx, minimum=0)
    summary = req.param("_summary")
    total_mode = req.param("_total") or "none"
    if summary == "count":
        count, total_mode = 0, "accurate"
    elif summary not in (None, "false"):
        raise FhirError("invalid-param", f"_summary={summary} is not supported yet")
    if total_mode not in ("none", "estimate", "accurate"):
        raise FhirError("invalid-param", f"_total must be none, estimate or accurate, not {total_mode!r}")
    if req.param("_sort"):
        raise FhirError("invalid-param", "_sort is not supported yet")
    cursor = req.param("_cursor")
    after = decode_cursor(cursor, 1)[0] if cursor else None
    lenient = req.prefer.get("handling") == "lenient"
    with ctx.session() as session:
        page = ctx.search.search(
            session, res_type, params, count, after, lenient=lenient, want_total=total_mode != "none"
        )
    total = page.total
    if total is None and after is None and not page.has_more:
        total = len(page.versions)
    path = res_type or ""
    query = [(k, v) for k, v in params if k != "_cursor"]
    links = [("self", page_link(ctx.base_url, path, req.params))]
    if page.has_more:
        last = page.versions[-1]
        links.append(("next", page_link(ctx.base_url, path, query + [("_cursor", encode_cursor(last.rid))])))
    entries = [
        {
            "fullUrl": ctx.full_url(f"{v.res_type}/{v.res_id}"),
            "resource": raw_resource(v),
            "search": {"mode": "match"},
        }
        for v in page.versions
    ]
    if page.warnings:
        outcome = operation_outcome(Issue("warning", "not-supported", w) for w in page.warnings)
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    return FhirResponse(200, resource=bundle("searchset", entries, links, total))
