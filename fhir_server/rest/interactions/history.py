"""history: instance, type and system level (http://hl7.org/fhir/R4/http.html#history).

Supports ``_count``, ``_since``, ``_at`` and paging by an opaque cursor (``_cursor``) that
addresses the last entry of the previous page, so pages stay correct while versions are added.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.bundles import bundle, decode_cursor, encode_cursor, history_entry, page_link
from fhir_server.rest.interactions.common import count_param, require_id, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.util.fhirdate import parse_range

_KNOWN = {"_count", "_since", "_at", "_cursor", "_format", "_pretty", "_summary", "_list"}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    res_type = require_type(req.res_type) if req.res_type else None
    res_id = require_id(req.res_id) if req.res_id else None
    unknown = sorted({k for k, _ in req.params} - _KNOWN)
    if unknown and req.prefer.get("handling") != "lenient":
        raise FhirError("invalid-param", f"Unknown history parameter(s): {', '.join(unknown)}")
    count = count_param(req, ctx, minimum=1)
    since_range = _range(req, "_since")
    since = since_range[0] if since_range else None
    at = _range(req, "_at")
    cursor = req.param("_cursor")
    before = decode_cursor(cursor, 3) if cursor else None
    with ctx.session() as session:
        if res_type and res_id and session.read_current(res_type, res_id) is None:
            raise FhirError("not-found", f"{res_type}/{res_id} is not known")
        versions = session.history(res_type, res_id, since, at, before, count + 1)  # type: ignore[arg-type]
    more = len(versions) > count
    versions = versions[:count]
    path = "/".join(p for p in (res_type, res_id, "_history") if p)
    keep = [(k, v) for k, v in req.params if k in ("_count", "_since", "_at")]
    links = [("self", page_link(ctx.base_url, path, req.params))]
    if more:
        last = versions[-1]
        links.append(
            (
                "next",
                page_link(
                    ctx.base_url, path, keep + [("_cursor", encode_cursor(last.updated_us, last.rid, last.version))]
                ),
            )
        )
    entries = [history_entry(ctx.base_url, v) for v in versions]
    return FhirResponse(200, resource=bundle("history", entries, links))


def _range(req: FhirRequest, name: str) -> tuple[int, int] | None:
    raw = req.param(name)
    if raw is None:
        return None
    try:
        return parse_range(raw)
    except ValueError:
        raise FhirError("invalid-param", f"{name} must be a FHIR date or instant, not {raw!r}") from None
