"""batch and transaction: ``POST [base]`` with a Bundle (http://hl7.org/fhir/R4/http.html#transaction).

Transaction: all entries in one database transaction, all-or-nothing. Before any entry runs,
every ``fullUrl`` that a POST or PUT will create is given its final ``Type/id`` (conditional
creates and updates are resolved by searching first), conditional references
(``Patient?identifier=...``) are resolved to exactly one match, and every reference to them is
rewritten throughout the Bundle (in any element, extensions included, and in narrative links).
Entries then run in the order the specification gives: DELETE, POST, PUT/PATCH, GET/HEAD;
the response lists them in request order.

Batch: each entry runs on its own, in its own transaction, and gets its own outcome.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from fhir_server.context import RequestContext
from fhir_server.errors import ERROR_KINDS, FhirError
from fhir_server.formats import json as fjson
from fhir_server.model import get_model
from fhir_server.rest.bundles import bundle
from fhir_server.rest.interactions.common import read_live, written
from fhir_server.rest.messages import FhirRequest, FhirResponse, parse_query
from fhir_server.storage.repository import Session, new_id
from fhir_server.util.clock import instant

_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}
_REASONS = {200: "OK", 201: "Created", 204: "No Content", 304: "Not Modified"}


@dataclass
class Entry:
    index: int
    method: str
    path: str
    params: list[tuple[str, str]]
    full_url: str | None
    resource: dict[str, Any] | None
    headers: dict[str, str]
    #: id promised to references before the entry runs (POST / conditional PUT)
    assigned_id: str | None = None
    #: a conditional create whose resource already exists (stored, or created by an earlier entry)
    exists: bool = False

    @property
    def is_operation(self) -> bool:
        """``POST [type]/$op`` (or ``[type]/[id]/$op``): an operation call, not a create."""
        return "$" in self.path

    @property
    def order(self) -> tuple[float, int]:
        """Transaction processing order (http://hl7.org/fhir/R4/http.html#trules): DELETE, POST,
        PUT/PATCH, GET; operation calls after the writes, since they may use what the Bundle
        creates, and before the reads."""
        return (_ORDER["PUT"] + 0.5 if self.is_operation else _ORDER[self.method], self.index)


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    body = req.resource
    if not body or body.get("resourceType") != "Bundle":
        raise FhirError("bad-request", "POST to the base URL needs a Bundle of type batch or transaction")
    kind = body.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError("bad-request", f"Bundle.type must be batch or transaction, not {kind!r}", "Bundle.type")
    entries = [_parse_entry(i, e, ctx.base_url) for i, e in enumerate(body.get("entry") or [])]
    representation = req.prefer.get("return") == "representation"
    if kind == "transaction":
        return FhirResponse(200, resource=_transaction(entries, ctx, representation))
    return FhirResponse(200, resource=_batch(entries, ctx, representation))


def _parse_entry(i: int, raw: Any, base: str) -> Entry:
    where = f"Bundle.entry[{i}]"
    if not isinstance(raw, dict):
        raise FhirError("bad-request", f"{where} is not an object", where)
    request = raw.get("request")
    if not isinstance(request, dict) or not request.get("method") or not request.get("url"):
        raise FhirError("bad-request", f"{where}.request needs method and url", f"{where}.request")
    method = str(request["method"]).upper()
    if method not in _ORDER:
        raise FhirError("bad-request", f"{where}.request.method {method!r} is not supported", f"{where}.request.method")
    url = str(request["url"])
    if url.startswith(base):
        url = url[len(base) :]
    parts = urlsplit(url)
    headers = {
        header: str(request[key])
        for key, header in (
            ("ifMatch", "if-match"),
            ("ifNoneMatch", "if-none-match"),
            ("ifNoneExist", "if-none-exist"),
            ("ifModifiedSince", "if-modified-since"),
        )
        if request.get(key)
    }
    resource = raw.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise FhirError("bad-request", f"{where}.resource is not a resource", f"{where}.resource")
    return Entry(i, method, parts.path.strip("/"), parse_query(parts.query), raw.get("fullUrl"), resource, headers)


def _entry_request(entry: Entry, outer_prefer: str | None) -> FhirRequest:
    req = FhirRequest(method=entry.method, params=list(entry.params), headers=dict(entry.headers))
    if outer_prefer:
        req.headers["prefer"] = outer_prefer
    if entry.method == "PATCH" and entry.resource is not None:
        req.body, req.content_type = _patch_body(entry)
    else:
        req.resource = entry.resource
    return req


def _patch_body(entry: Entry) -> tuple[bytes, str]:
    res = entry.resource or {}
    if res.get("resourceType") == "Binary":
        data = base64.b64decode(res.get("data", ""))
        return data, res.get("contentType", "application/json-patch+json")
    return fjson.dumps(res), "application/fhir+json"


# -- transaction ---------------------------------------------------------------------------
def _transaction(entries: list[Entry], ctx: RequestContext, representation: bool) -> dict[str, Any]:
    from fhir_server.rest.routes import dispatch

    responses: dict[int, dict[str, Any]] = {}
    auditor = ctx.auditor.buffered() if ctx.auditor is not None else None
    try:
        with ctx.repo.session(write=True, access=ctx.access) as session:
            tctx = ctx.child(session)
            tctx.auditor = auditor
            mapping = _assign_identities(entries, tctx, session)
            _rewrite_references(entries, mapping, tctx, session)
            for entry in sorted(entries, key=lambda e: e.order):
                req = _entry_request(entry, "return=representation" if representation else "return=minimal")
                try:
                    resp = _run_entry(entry, req, tctx, dispatch)
                except FhirError as err:
                    _locate(err, entry)
                    raise
                responses[entry.index] = _response_entry(entry, resp, ctx, representation)
    except FhirError as err:
        if auditor is not None:
            auditor.release((err.status, err.diagnostics))
        raise
    except Exception:
        if auditor is not None:
            auditor.release((500, "internal error"))
        raise
    if auditor is not None:
        auditor.release(None)
    return bundle("transaction-response", [responses[e.index] for e in entries], [])


def _run_entry(entry: Entry, req: FhirRequest, ctx: RequestContext, dispatch: Any) -> FhirResponse:
    if entry.method == "POST" and entry.assigned_id is not None:
        from fhir_server.rest.interactions import create
        from fhir_server.rest.routes import resolve, run

        route, variables = resolve("POST", entry.path)
        req.headers.pop("if-none-exist", None)  # resolved in _assign_identities
        assigned = entry.assigned_id
        if entry.exists:

            def found() -> FhirResponse:
                with ctx.session() as session:
                    existing = read_live(session, entry.path, assigned)
                return written(req, ctx, existing, 200, f"{entry.path}/{assigned} already exists")

            return run(route, variables, req, ctx, found)
        return run(route, variables, req, ctx, lambda: create.handle(req, ctx, res_id=assigned))
    if entry.method == "PUT" and entry.assigned_id is not None and entry.params:
        # conditional update already resolved to an id: update that id
        path = f"{entry.path}/{entry.assigned_id}"
        req.params = []
        if req.resource is not None and "id" not in req.resource:
            req.resource = {**req.resource, "id": entry.assigned_id}
        return dispatch(req, path, ctx)
    return dispatch(req, entry.path, ctx)


def _locate(err: FhirError, entry: Entry) -> None:
    prefix = f"Bundle.entry[{entry.index}]"
    for issue in err.issues:
        if not issue.diagnostics.startswith(prefix):
            issue.diagnostics = f"{prefix} ({entry.method} {entry.path}): {issue.diagnostics}"
        issue.expression = [
            e
            if e.startswith("Bundle.")
            else f"{prefix}.resource.{e.split('.', 1)[1]}"
            if "." in e
            else f"{prefix}.resource"
            for e in issue.expression
        ]


def _assign_identities(entries: list[Entry], ctx: RequestContext, session: Session) -> dict[str, str]:
    """fullUrl -> ``Type/id`` for every entry that creates or updates a resource."""
    model = get_model()
    mapping: dict[str, str] = {}
    seen_conditions: dict[tuple[str, str], str] = {}
    for entry in entries:
        if entry.method not in ("POST", "PUT") or entry.is_operation:
            continue
        res_type = entry.path.split("/")[0]
        if res_type not in model.resource_types:
            raise FhirError("not-found", f"Bundle.entry[{entry.index}]: unknown resource type {res_type!r}")
        if entry.method == "POST":
            condition = entry.headers.get("if-none-exist")
            if condition:
                key = (res_type, condition)
                if key in seen_conditions:  # an earlier entry creates (or found) it
                    entry.assigned_id, entry.exists = seen_conditions[key], True
                else:
                    match = _single(ctx, session, res_type, parse_query(condition.lstrip("?")), entry)
                    entry.assigned_id = match.res_id if match else new_id()
                    entry.exists = match is not None
                    seen_conditions[key] = entry.assigned_id
            else:
                entry.assigned_id = new_id()
            final_id = entry.assigned_id
        elif entry.params:  # conditional update
            key = (res_type, "&".join(f"{k}={v}" for k, v in entry.params))
            if key in seen_conditions:
                entry.assigned_id = seen_conditions[key]
            else:
                match = _single(ctx, session, res_type, entry.params, entry)
                body_id = (entry.resource or {}).get("id")
                entry.assigned_id = match.res_id if match else body_id or new_id()
                seen_conditions[key] = entry.assigned_id
            final_id = entry.assigned_id
        else:
            parts = entry.path.split("/")
            if len(parts) != 2:
                continue
            final_id = parts[1]
        if entry.full_url:
            mapping[entry.full_url] = f"{res_type}/{final_id}"
    return mapping


def _single(ctx: RequestContext, session: Session, res_type: str, query: list[tuple[str, str]], entry: Entry) -> Any:
    matches = ctx.search.match(session, res_type, query, limit=2)
    if len(matches) > 1:
        raise FhirError(
            "multiple-matches",
            f"Bundle.entry[{entry.index}]: the condition on {res_type} matches more than one resource",
        )
    return matches[0] if matches else None


def _rewrite_references(entries: list[Entry], mapping: dict[str, str], ctx: RequestContext, session: Session) -> None:
    cache: dict[str, str] = {}

    def conditional(ref: str, where: str) -> str:
        if ref not in cache:
            res_type, _, query = ref.partition("?")
            matches = ctx.search.match(session, res_type, parse_query(query), limit=2)
            if len(matches) != 1:
                how = "no resource" if not matches else "more than one resource"
                raise FhirError(
                    "precondition-failed" if matches else "processing",
                    f"{where}: the conditional reference {ref!r} matches {how}",
                    where,
                )
            cache[ref] = f"{res_type}/{matches[0].res_id}"
        return cache[ref]

    resource_types = get_model().resource_types

    # ``where`` is a linked path (parent, key-or-index), formatted only for an error: building
    # a FHIRPath string for every node was a tenth of the ingest time.
    def fix(node: Any, where: tuple) -> None:
        if type(node) is dict:
            for key, value in node.items():
                kind = type(value)
                if kind is str:
                    if value in mapping:
                        node[key] = mapping[value]
                    elif key == "reference":
                        if "?" in value and value.split("?", 1)[0] in resource_types:
                            node[key] = conditional(value, _path((where, key)))
                        elif value.startswith("urn:uuid:"):
                            raise FhirError(
                                "processing",
                                f"{_path((where, key))} {value!r} names no entry of this Bundle",
                                _path((where, key)),
                            )
                    elif key == "div" and mapping:
                        node[key] = _rewrite_narrative(value, mapping)
                elif kind is dict or kind is list:
                    fix(value, (where, key))
        elif type(node) is list:
            for i, item in enumerate(node):
                if type(item) is str:
                    if item in mapping:
                        node[i] = mapping[item]
                else:
                    fix(item, (where, i))

    for entry in entries:
        if entry.resource is not None:  # the parsed Bundle is ours to change
            fix(entry.resource, (None, f"Bundle.entry[{entry.index}].resource"))


def _path(where: tuple) -> str:
    """FHIRPath of a linked path built by ``fix``."""
    parts: list[str] = []
    while where is not None:
        where, step = where
        parts.append(f"[{step}]" if type(step) is int else step if where is None else f".{step}")
    return "".join(reversed(parts))


def _rewrite_narrative(div: str, mapping: dict[str, str]) -> str:
    for old, new in mapping.items():
        if old in div:
            div = div.replace(f'"{old}"', f'"{new}"')
    return div


# -- batch ---------------------------------------------------------------------------------
def _batch(entries: list[Entry], ctx: RequestContext, representation: bool) -> dict[str, Any]:
    from fhir_server.rest.routes import dispatch

    created: dict[str, str] = {}
    out = []
    for entry in entries:
        try:
            with ctx.repo.session(access=ctx.access) as session:
                _rewrite_references([entry], created, ctx.child(session), session)
            req = _entry_request(entry, "return=representation" if representation else "return=minimal")
            resp = dispatch(req, entry.path, ctx)
            out.append(_response_entry(entry, resp, ctx, representation))
            if entry.full_url and resp.version is not None and entry.method in ("POST", "PUT"):
                created[entry.full_url] = f"{resp.version.res_type}/{resp.version.res_id}"
        except FhirError as err:
            _locate(err, entry)
            out.append(_error_entry(err))
    return bundle("batch-response", out, [])


def _error_entry(err: FhirError) -> dict[str, Any]:
    status = ERROR_KINDS[err.kind][0]
    return {"response": {"status": f"{status}", "outcome": err.outcome()}}


def _response_entry(entry: Entry, resp: FhirResponse, ctx: RequestContext, representation: bool) -> dict[str, Any]:
    reason = _REASONS.get(resp.status)
    response: dict[str, Any] = {"status": f"{resp.status} {reason}" if reason else str(resp.status)}
    out: dict[str, Any] = {}
    v = resp.version
    if v is not None:
        out["fullUrl"] = ctx.full_url(f"{v.res_type}/{v.res_id}")
        if resp.status in (200, 201) and entry.method in ("POST", "PUT", "PATCH"):
            response["location"] = resp.headers.get("Location") or ctx.full_url(v.location)
        response["etag"] = v.etag
        response["lastModified"] = instant(v.updated_us)
    elif "ETag" in resp.headers:
        response["etag"] = resp.headers["ETag"]
    if entry.method in ("GET", "HEAD") or representation:
        if resp.body is not None:
            import orjson

            out["resource"] = orjson.Fragment(resp.body)
        elif resp.resource is not None:
            out["resource"] = resp.resource
    elif resp.resource is not None and resp.resource.get("resourceType") == "OperationOutcome":
        response["outcome"] = resp.resource
    out["response"] = response
    return out
