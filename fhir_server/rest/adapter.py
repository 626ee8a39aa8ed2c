"""The one place where HTTP meets the FHIR handlers (Flask/Werkzeug).

Why one adapter: content negotiation (``Accept``/``_format``, JSON or XML, ``_pretty``, gzip),
body parsing, ``FhirError`` → ``OperationOutcome`` and response headers are done once here;
handlers only ever see :class:`FhirRequest` and return :class:`FhirResponse`.
"""

from __future__ import annotations

import gzip
import itertools
import logging
import re
import threading
import uuid
from contextlib import nullcontext
from typing import Any

from flask import Flask, Response, request
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.routes import bind, resolve, run
from fhir_server.security.tls import CERT_THUMBPRINT

log = logging.getLogger("fhir_server.rest")

JSON = "application/fhir+json"
XML = "application/fhir+xml"
_JSON_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "json", "text/json"}
_XML_TYPES = {"application/fhir+xml", "application/xml", "application/xml+fhir", "xml", "text/xml"}
_PATCH_TYPES = {"application/json-patch+json"}
#: what a ``raw_body`` route still gets parsed as FHIR (``application/xml`` is its own document)
_FHIR_ONLY_TYPES = {"application/fhir+json", "application/json", "application/json+fhir", "application/fhir+xml"}


def response_format(params: list[tuple[str, str]], accept: str | None) -> str:
    """JSON or XML from ``_format`` first, then ``Accept``; JSON when the client does not care."""
    fmt = next((v for k, v in params if k == "_format"), None)
    if fmt is not None:
        base = fmt.split(";")[0].strip().lower()
        if base in _JSON_TYPES:
            return JSON
        if base in _XML_TYPES:
            return XML
        raise FhirError("not-acceptable", f"_format={fmt} is not supported; use json or xml")
    if not accept:
        return JSON
    best, best_q = None, -1.0
    for part in accept.split(","):
        media, *opts = [p.strip() for p in part.split(";")]
        q = 1.0
        for opt in opts:
            if opt.startswith("q="):
                try:
                    q = float(opt[2:])
                except ValueError:
                    q = 0.0
        media = media.lower()
        kind = (
            JSON
            if media in _JSON_TYPES or media == "*/*" or media == "application/*"
            else XML
            if media in _XML_TYPES
            else None
        )
        if kind and q > best_q and q > 0:
            best, best_q = kind, q
    if best is None:
        raise FhirError(
            "not-acceptable", f"Cannot produce any of {accept}; use application/fhir+json or application/fhir+xml"
        )
    return best


def parse_body(body: bytes, content_type: str | None) -> dict[str, Any] | None:
    if not body:
        return None
    media = (content_type or "").split(";")[0].strip().lower()
    if media in _PATCH_TYPES:
        return None
    if media in _XML_TYPES or (not media and body.lstrip()[:1] == b"<"):
        from fhir_server.formats.xml import xml_to_json

        return xml_to_json(body)
    if media and media not in _JSON_TYPES and media != "application/x-www-form-urlencoded":
        raise FhirError(
            "unsupported-media",
            f"Content-Type {content_type} is not supported; use application/fhir+json or application/fhir+xml",
        )
    value = fjson.loads(body)
    if not isinstance(value, dict):
        raise FhirError("malformed", "The body must be a JSON object (a FHIR resource)")
    return value


def render(resp: FhirResponse, fmt: str, pretty: bool) -> bytes | None:
    if resp.resource is None and resp.body is None:
        return None
    if fmt == XML:
        from fhir_server.formats.xml import json_to_xml

        # a resource built here may hold spliced raw JSON (orjson.Fragment): serialise it first
        raw = fjson.dumps(resp.resource) if resp.resource is not None else resp.body
        resource = fjson.loads(raw)  # type: ignore[arg-type]
        return json_to_xml(resource, pretty=pretty)
    if resp.resource is not None:
        return fjson.dumps(resp.resource, pretty=pretty)
    if pretty:
        return fjson.dumps(fjson.loads(resp.body), pretty=True)  # type: ignore[arg-type]
    return resp.body


def register(app: Flask, make_context: Any, bundle_slots: int) -> None:
    """Route every ``/fhir`` URL to :func:`handle`; turn every error into an OperationOutcome.

    At most ``bundle_slots`` batch/transaction Bundles are parsed and run at once per process:
    a parsed Bundle takes ~10x its bytes in memory, and Bundles interleaved at every database
    wait were slower in all than the same Bundles one after another (ingest benchmark).
    """
    bundle_gate = threading.BoundedSemaphore(bundle_slots)

    def handle(path: str = "") -> Response:
        http = request._get_current_object()  # type: ignore[attr-defined]  # the proxy costs per access
        params = list(http.args.items(multi=True))
        fmt = JSON
        pretty = False
        request_id = _request_id(http.headers.get("X-Request-Id"))
        try:
            fmt = response_format(params, http.headers.get("Accept"))
            pretty = http.args.get("_pretty") == "true"
            body = received = http.get_data(cache=False)
            content_type = http.headers.get("Content-Type")
            if http.method == "POST" and path.endswith("_search") and body:
                params += _form(body)
                body = b""
            headers = {k.lower(): v for k, v in http.headers.items()}
            headers["x-request-id"] = request_id
            req = FhirRequest(
                method=http.method,
                params=params,
                headers=headers,
                body=body,
                content_type=content_type,
                client_address=http.remote_addr,
                client_certificate=http.environ.get(CERT_THUMBPRINT),
            )
            signed = "x-api-key" in headers
            if signed:  # what the signature covers, as received (security/signing.py)
                req.raw_path, req.raw_query = http.path, http.query_string.decode("latin-1")
                req.body = received
            with bundle_gate if http.method == "POST" and not path.strip("/") else nullcontext():
                route, variables = resolve(req.method, path)
                # a raw_body route (e.g. $import-aecg) reads a non-FHIR document from req.body
                media = (content_type or "").split(";")[0].strip().lower()
                if http.method in ("POST", "PUT") and body and (not route.raw_body or media in _FHIR_ONLY_TYPES):
                    req.resource = parse_body(body, content_type)
                    if req.resource is not None and not signed:  # parsed: the bytes are not needed again
                        req.body = body = b""
                ctx: RequestContext = make_context(bind(req, variables), route)
                resp = run(route, variables, req, ctx)
        except FhirError as err:
            resp = FhirResponse(err.status, resource=err.outcome(), headers=dict(err.headers))
        except DBAPIError as exc:
            resp = _lost_connection(exc) if exc.connection_invalidated else _internal_error()
        except PoolTimeout:
            # every pooled connection stayed busy for pool_timeout seconds: overloaded, not broken
            log.warning("no database connection free for %s %s", http.method, http.full_path)
            err = FhirError("unavailable", "The server is busy (no database connection free); retry later")
            resp = FhirResponse(503, resource=err.outcome(), headers={"Retry-After": "5"})
        except Exception:  # noqa: BLE001 - the client gets an OperationOutcome, the log the trace
            resp = _internal_error()
        out = _to_http(resp, fmt, pretty)
        out.headers["X-Request-Id"] = request_id
        return out

    def _lost_connection(exc: DBAPIError) -> FhirResponse:
        # The database dropped the connection (restart, failover); the pool has been refilled.
        log.warning("database connection lost on %s %s: %s", request.method, request.full_path, exc.orig)
        err = FhirError("unavailable", "The database connection was lost; retry the request")
        return FhirResponse(503, resource=err.outcome(), headers={"Retry-After": "1"})

    def _internal_error() -> FhirResponse:
        log.exception("unhandled error on %s %s", request.method, request.full_path)
        err = FhirError("exception", "Internal server error; the incident was logged")
        return FhirResponse(500, resource=err.outcome())

    def not_allowed(exc: HTTPException) -> Response:
        err = FhirError(
            "not-allowed" if exc.code == 405 else "not-found", f"{request.method} {request.path}: {exc.name}"
        )
        return _to_http(FhirResponse(err.status, resource=err.outcome()), JSON, False)

    methods = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]
    app.add_url_rule("/fhir", "fhir_root", handle, methods=methods, strict_slashes=False)
    app.add_url_rule("/fhir/<path:path>", "fhir", handle, methods=methods)
    app.register_error_handler(404, not_allowed)
    app.register_error_handler(405, not_allowed)


_REQUEST_ID = re.compile(r"[A-Za-z0-9._\-]{1,64}")


def _request_id(given: str | None) -> str:
    """The client's X-Request-Id if it is a plain token (it goes into audit records), else ours."""
    if given and _REQUEST_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}{next(_ID_COUNTER):012x}"


#: ours: unique without a random number per request (os.urandom was 2% of a read): a random
#: prefix per process and a counter
_ID_PREFIX = uuid.uuid4().hex[:20]
_ID_COUNTER = itertools.count(1)


def _form(body: bytes) -> list[tuple[str, str]]:
    from urllib.parse import parse_qsl

    return parse_qsl(body.decode("utf-8"), keep_blank_values=True)


def _to_http(resp: FhirResponse, fmt: str, pretty: bool) -> Response:
    data = render(resp, fmt, pretty) if resp.status != 304 else None
    headers = dict(resp.headers)
    out = Response(status=resp.status, headers=headers)
    if data is not None:
        out.content_type = f"{fmt}; charset=utf-8"
        encoding = request.headers.get("Accept-Encoding", "")
        if "gzip" in encoding and len(data) >= 1400:
            data = gzip.compress(data, compresslevel=5)
            out.headers["Content-Encoding"] = "gzip"
            out.headers["Vary"] = "Accept, Accept-Encoding"
        out.set_data(data)  # Werkzeug drops the body of a HEAD response but keeps its length
    return out
