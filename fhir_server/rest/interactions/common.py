"""Pieces shared by the interaction handlers: checks, preconditions and ``Prefer`` handling."""

from __future__ import annotations

import re
from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue, info_outcome
from fhir_server.model import get_model
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.shaping import shape_content
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.util.clock import from_http_date
from fhir_server.validation import check_resource

ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")
_ETAG_RE = re.compile(r'^\s*(?:W/)?"?([^"]*)"?\s*$')


def require_type(res_type: str | None) -> str:
    if not res_type or res_type not in get_model().resource_types:
        raise FhirError("unknown-type", f"Unknown resource type {res_type!r}")
    return res_type


def require_id(res_id: str | None) -> str:
    if not res_id or not ID_RE.fullmatch(res_id):
        raise FhirError("bad-request", f"Invalid resource id {res_id!r}: must match [A-Za-z0-9-.]{{1,64}}")
    return res_id


def require_body(req: FhirRequest) -> dict[str, Any]:
    """The request's resource, checked to be of the URL's type and structurally valid."""
    if req.resource is None:
        raise FhirError("bad-request", "The request has no resource in its body")
    body_type = req.resource.get("resourceType")
    if req.res_type and body_type != req.res_type:
        raise FhirError(
            "bad-request",
            f"Resource type {body_type!r} in the body does not match {req.res_type!r} in the URL",
            "resourceType",
        )
    check_resource(req.resource)
    return req.resource


def etag_version(value: str) -> int:
    m = _ETAG_RE.match(value)
    if not m or not m.group(1).isdigit():
        raise FhirError("bad-request", f'Malformed ETag {value!r}: expected W/"<version>"')
    return int(m.group(1))


def check_if_match(req: FhirRequest, current: StoredVersion | None) -> None:
    """``If-Match: W/"n"``: the update applies only to version n (412 otherwise)."""
    value = req.header("if-match")
    if value is None:
        return
    wanted = etag_version(value)
    if current is None or current.deleted or current.version != wanted:
        have = "none" if current is None or current.deleted else current.version
        raise FhirError("precondition-failed", f"If-Match asked for version {wanted} but the current version is {have}")


def not_modified(req: FhirRequest, version: StoredVersion) -> bool:
    """True when ``If-None-Match`` or ``If-Modified-Since`` say the client's copy is current."""
    inm = req.header("if-none-match")
    if inm is not None:
        tags = [t.strip() for t in inm.split(",")]
        return "*" in tags or any(
            _ETAG_RE.match(t) and _ETAG_RE.match(t).group(1) == str(version.version) for t in tags
        )  # type: ignore[union-attr]
    ims = req.header("if-modified-since")
    if ims is not None:
        since = from_http_date(ims)
        return since is not None and version.updated_us // 1_000_000 * 1_000_000 <= since
    return False


def version_response(
    req: FhirRequest, version: StoredVersion, summary: str | None, elements: list[str] | None
) -> FhirResponse:
    """A read or vread answer: 304 for a current copy, else the stored bytes, or the resource
    shaped by ``_summary``/``_elements`` when they ask for less (``rest/shaping.py``)."""
    if not_modified(req, version):
        return FhirResponse.for_version(304, version, body=False)
    resp = FhirResponse.for_version(200, version)
    if (summary or elements) and resp.body is not None:
        resp.body, resp.resource = None, shape_content(resp.body, summary, elements)
    return resp


def count_param(req: FhirRequest, ctx: RequestContext, minimum: int = 0) -> int:
    """``_count`` within [minimum, Settings.max_count]; the default page size when absent."""
    raw = req.param("_count")
    if raw is None:
        return ctx.settings.default_count
    if not raw.isdigit():
        raise FhirError("invalid-param", f"_count must be a non-negative integer, not {raw!r}")
    return max(minimum, min(int(raw), ctx.settings.max_count))


def gone(version: StoredVersion, message: str) -> FhirError:
    return FhirError("gone", message, headers={"ETag": version.etag, "Last-Modified": version.last_modified})


def read_live(session: Session, res_type: str, res_id: str) -> StoredVersion:
    current = session.read_current(res_type, res_id)
    if current is None:
        raise FhirError("not-found", f"{res_type}/{res_id} is not known")
    if current.deleted:
        raise gone(current, f"{res_type}/{res_id} was deleted (version {current.version})")
    return current


def written(req: FhirRequest, ctx: RequestContext, version: StoredVersion, status: int, message: str) -> FhirResponse:
    """Response to a create/update/patch, shaped by ``Prefer: return=``."""
    resp = FhirResponse.for_version(status, version, body=False)
    resp.headers["Location"] = ctx.full_url(version.location)
    wanted = req.prefer.get("return", "representation")
    if wanted == "minimal":
        return resp
    if wanted.lower() == "operationoutcome":
        resp.resource = info_outcome(message)
        return resp
    resp.body = version.content
    return resp


def conditional_matches(
    ctx: RequestContext, session: Session, res_type: str, query: list[tuple[str, str]], limit: int = 2
) -> list[StoredVersion]:
    if not query:
        raise FhirError("bad-request", "A conditional interaction needs search parameters")
    return ctx.search.match(session, res_type, query, limit=limit)


def single_match(
    ctx: RequestContext, session: Session, res_type: str, query: list[tuple[str, str]]
) -> StoredVersion | None:
    matches = conditional_matches(ctx, session, res_type, query)
    if len(matches) > 1:
        raise FhirError("multiple-matches", f"The condition {res_type}?{_q(query)} matches more than one resource")
    return matches[0] if matches else None


def _q(query: list[tuple[str, str]]) -> str:
    from urllib.parse import urlencode

    return urlencode(query)


__all__ = ["Issue"]
