"""``AuditEvent`` over REST: the audit store read (ITI-81) and fed (ITI-20 "FHIR Feed"), never changed.

- ``GET AuditEvent/[id]`` reads one record; ``GET AuditEvent?...`` searches by the IHE ITI-81
  parameters (Retrieve ATNA Audit Event, ITI TF-2 3.81.4.1.2): ``date`` (with ``ge``/``gt``/
  ``le``/``lt``/``eq`` prefixes, repeatable), ``patient``, ``agent`` (also ``user`` and ``altid``:
  the requester), ``address``, ``entity`` (the data entity's reference), ``type``, ``subtype``,
  ``outcome``, ``action``, with ``_count``, ``_offset`` and ``_sort`` (``date``/``-date``; newest
  first by default). An unknown parameter is a 400 naming the supported ones. Not supported:
  chained ``patient.identifier`` and ``entity-type``/``entity-role``/``source`` (say so in
  docs/conformance.md).
- ``POST AuditEvent`` appends an AuditEvent another system recorded (ITI-20 ATX: FHIR Feed, one
  event; a batch Bundle of them goes through the batch interaction entry by entry). It is
  checked against the R4 AuditEvent structure only: BALP says a repository shall not reject an
  event for not following a pattern.
- Update, patch and delete are 405: the store is append-only (the chain would show the change).
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import Select, false, select

from fhir_server.audit.balp import ROLE_CLASS
from fhir_server.audit.store import COLUMNS, AuditStore, columns, serialize, with_id
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.storage.schema import audit_events as T
from fhir_server.util.fhirdate import date_range
from fhir_server.validation import check_resource

_COLUMNS = {
    "patient": T.c.patient,
    "agent": T.c.agent,
    "user": T.c.agent,
    "altid": T.c.agent,
    "address": T.c.address,
    "entity": T.c.entity,
    "type": T.c.type_code,
    "subtype": T.c.subtype_code,
    "outcome": T.c.outcome,
    "action": T.c.action,
}
_CONTROL = ("_count", "_offset", "_sort", "_format", "_pretty", "date")
_PREFIXES = ("eq", "ge", "gt", "le", "lt")


def _store(ctx: RequestContext) -> AuditStore:
    return AuditStore(ctx.repo.engine)


def _trail(ctx: RequestContext) -> Any:
    """Whose records the request may see: an institution its own (the records of requests made
    for it), the platform and a supervisor every institution's (security/tenancy.py)."""
    access = ctx.access
    if access is None or access.platform or access.cross_tenant:
        return None
    if access.organization is None:
        return false()
    return T.c.organization == f"Organization/{access.organization}"


def read(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    content = _store(ctx).read(req.res_id or "", _trail(ctx))
    if content is None:
        raise FhirError("not-found", f"AuditEvent/{req.res_id} is not in the audit store")
    return FhirResponse(200, body=content.encode("utf-8"))


def _value(name: str, raw: str) -> str:
    if name in ("type", "subtype"):
        return raw.rpartition("|")[2]  # system|code or code
    if name == "patient" and "/" not in raw:
        return f"Patient/{raw}"
    return raw


def _date_clause(raw: str) -> Any:
    prefix = raw[:2] if raw[:2] in _PREFIXES else "eq"
    text = raw[2:] if raw[:2] in _PREFIXES else raw
    bounds = date_range(text)
    if bounds is None:
        raise FhirError("invalid-param", f"date: {raw!r} is not a FHIR date, dateTime or instant", "date")
    low, high = bounds
    return {
        "eq": T.c.recorded_us.between(low, high),
        "ge": T.c.recorded_us >= low,
        "gt": T.c.recorded_us > high,
        "le": T.c.recorded_us <= high,
        "lt": T.c.recorded_us < low,
    }[prefix]


def _int(name: str, raw: str, limit: int) -> int:
    if not raw.isdigit():
        raise FhirError("invalid-param", f"{name} must be a whole number, not {raw!r}", name)
    return min(int(raw), limit)


def search(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    query: Select[Any] = select(T.c.seq, T.c.content)
    trail = _trail(ctx)
    if trail is not None:
        query = query.where(trail)
    count, offset, newest_first = ctx.settings.default_count, 0, True
    for name, raw in req.params:
        if name == "_count":
            count = _int(name, raw, ctx.settings.max_count)
        elif name == "_offset":
            offset = _int(name, raw, 10**9)
        elif name == "_sort":
            if raw not in ("date", "-date"):
                raise FhirError("invalid-param", "AuditEvent can be sorted by date or -date only", "_sort")
            newest_first = raw == "-date"
        elif name == "date":
            query = query.where(_date_clause(raw))
        elif name in _COLUMNS:
            values = [_value(name, v) for v in raw.split(",") if v]
            query = query.where(_COLUMNS[name].in_(values))
        elif name not in _CONTROL:
            known = ", ".join(sorted({*_COLUMNS, "date"}))
            raise FhirError("invalid-param", f"AuditEvent has no search parameter {name!r} here (supported: {known})")
    order = (T.c.recorded_us.desc(), T.c.seq.desc()) if newest_first else (T.c.recorded_us, T.c.seq)
    total, page = _store(ctx).search(query.order_by(*order), offset, count)
    return FhirResponse(200, resource=_searchset(req, ctx, total, page, offset, count))


def _searchset(req: FhirRequest, ctx: RequestContext, total: int, page: list[str], offset: int, count: int) -> Any:
    base = f"{ctx.base_url}/AuditEvent"
    kept = [(k, v) for k, v in req.params if k != "_offset"]

    def link(relation: str, at: int) -> dict[str, str]:
        query = "&".join(f"{k}={v}" for k, v in [*kept, ("_offset", str(at))])
        return {"relation": relation, "url": f"{base}?{query}"}

    links = [link("self", offset)]
    if offset + len(page) < total:
        links.append(link("next", offset + count))
    entries = []
    for content in page:
        event = orjson.loads(content)
        entries.append({"fullUrl": f"{base}/{event['id']}", "resource": event, "search": {"mode": "match"}})
    return {"resourceType": "Bundle", "type": "searchset", "total": total, "link": links, "entry": entries}


def create(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    resource = req.resource
    check_resource(resource, "AuditEvent")
    assert resource is not None
    if ctx.access is not None and not ctx.access.platform:
        resource = _own_trail(resource, ctx.access.organization)
    (event_id,) = _store(ctx).append([resource])
    location = f"{ctx.base_url}/AuditEvent/{event_id}"
    content = with_id(int(event_id), serialize(resource).decode())  # what was stored, without reading it back
    return FhirResponse(201, body=content.encode("utf-8"), headers={"Location": location})


def _own_trail(event: dict[str, Any], organization: str | None) -> dict[str, Any]:
    """An institution feeds records into its own audit trail only: one that names another
    institution is refused, one that names none is given the feeding institution."""
    if organization is None:
        raise FhirError("forbidden", "Only an institution or the platform may feed audit records")
    mine = f"Organization/{organization}"
    named = columns(event)[COLUMNS.index("organization")]
    if named not in (None, mine):
        raise FhirError("forbidden", f"This AuditEvent names {named}: an institution may only feed its own records")
    if named is None:
        userorg = {"type": {"coding": [_USERORG_CODING]}, "who": {"reference": mine}, "requestor": False}
        event = {**event, "agent": [*(event.get("agent") or []), userorg]}
    return event


_USERORG_CODING = {"system": ROLE_CLASS, "code": "PROV", "display": "healthcare provider"}


def refuse(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    raise FhirError("not-allowed", "The audit store is append-only: AuditEvents cannot be changed or deleted")
