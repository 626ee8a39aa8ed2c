"""search: ``GET [base]/[type]?...``, ``POST [base]/[type]/_search`` and system-level search.

http://hl7.org/fhir/R4/http.html#search and search.html. Results are a ``searchset`` Bundle
paged by opaque keyset cursors (``next`` and ``previous`` links); ``_total=accurate`` or
``estimate`` (both answered exactly), or a result that fits one page, gives ``Bundle.total``;
``_summary=count`` returns only the total.
"""

from __future__ import annotations

import base64
from typing import Any

import orjson

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue, operation_outcome
from fhir_server.rest import shaping
from fhir_server.rest.bundles import bundle, page_link, raw_resource
from fhir_server.rest.interactions.common import count_param, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.search.engine import Cursor
from fhir_server.security.access import may_read
from fhir_server.storage.repository import StoredVersion


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type) if req.res_type else None
    params = req.search_params()
    count = count_param(req, ctx, minimum=0)
    summary, elements = shaping.parse_params(req.params, allow_count=True)
    total_mode = req.param("_total") or "none"
    if summary == "count":
        count, total_mode = 0, "accurate"
    if total_mode not in ("none", "estimate", "accurate"):
        raise FhirError("invalid-param", f"_total must be none, estimate or accurate, not {total_mode!r}")
    token = req.param("_cursor")
    cursor = decode_cursor(token) if token else None
    lenient = req.prefer.get("handling") == "lenient"
    if req.compartment is not None:
        require_type(req.compartment[0])
    with ctx.session() as session:
        page = ctx.search.search(
            session,
            res_type,
            params,
            count,
            cursor,
            lenient=lenient,
            want_total=total_mode != "none",
            compartment=req.compartment,
        )
    total = page.total
    if total is None and cursor is None and not page.has_next:
        total = len(page.versions)
    path = res_type or ""
    if req.compartment is not None:
        path = f"{req.compartment[0]}/{req.compartment[1]}/{path}"
    query = [(k, v) for k, v in params if k != "_cursor"]
    links = [("self", page_link(ctx.base_url, path, req.params))]
    if page.has_next and page.versions:
        after = Cursor(page.keys[-1], page.versions[-1].rid)
        links.append(("next", page_link(ctx.base_url, path, query + [("_cursor", encode_cursor(after))])))
    if page.has_previous and page.versions:
        before = Cursor(page.keys[0], page.versions[0].rid, before=True)
        links.append(("previous", page_link(ctx.base_url, path, query + [("_cursor", encode_cursor(before))])))
    entries = [entry(ctx, v, "match", summary, elements) for v in page.versions]
    included = [v for v in page.included if may_read(ctx.principal, v.res_type)]
    entries += [entry(ctx, v, "include", summary, elements) for v in included]
    issues = [Issue("warning", "not-supported", w) for w in page.warnings]
    left_out = sorted({v.res_type for v in page.included} - {v.res_type for v in included})
    if left_out:
        why = f"included {', '.join(left_out)} resources left out: the token's scopes do not allow reading them"
        issues.append(Issue("warning", "suppressed", why))
    if issues:
        entries.append({"resource": operation_outcome(issues), "search": {"mode": "outcome"}})
    return FhirResponse(200, resource=bundle("searchset", entries, links, total))


def entry(
    ctx: RequestContext, v: StoredVersion, mode: str, summary: str | None, elements: list[str] | None
) -> dict[str, Any]:
    # Stored bytes are spliced in as they are unless _summary/_elements ask for less.
    resource = shaping.shape_content(v.content, summary, elements) if summary or elements else raw_resource(v)
    return {"fullUrl": ctx.full_url(f"{v.res_type}/{v.res_id}"), "resource": resource, "search": {"mode": mode}}


def encode_cursor(cursor: Cursor) -> str:
    raw = orjson.dumps([1 if cursor.before else 0, cursor.rid, cursor.values])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(token: str) -> Cursor:
    try:
        before, rid, values = orjson.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
        if before not in (0, 1) or type(rid) is not int or type(values) is not list:
            raise ValueError(token)
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise FhirError("invalid-param", f"Invalid paging cursor {token!r}") from None
    return Cursor(values, rid, before=bool(before))
