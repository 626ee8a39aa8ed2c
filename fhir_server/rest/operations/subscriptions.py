"""``Subscription/[id]/$status``, ``$events`` and ``$get-ws-binding-token`` (Subscriptions Backport).

``$status`` answers the subscription's status (a ``query-status`` notification Bundle) — how many
events it has had, and its error if deliveries failed. ``$events`` answers the events numbered
``eventsSinceNumber``…``eventsUntilNumber`` from the outbox (``query-event``), delivered or not,
with their focus resources for ``content=full-resource`` as the subscription's institution may see
them now: a subscriber that was away, or that finds a gap in the event numbers, catches up.
``$get-ws-binding-token`` gives a one-time token (5 minutes) to bind a websocket to the
subscription (``bind-with-token <token>`` on ``/websocket``).
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.notify import outbox, payload
from fhir_server.notify.channels.websocket import issue_token
from fhir_server.notify.subscriptions import PAYLOADS, Subscription, parse
from fhir_server.rest.bundles import bundle
from fhir_server.rest.interactions.common import read_live, require_id
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import STRING, Inputs
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import counters
from fhir_server.util.clock import instant

EVENTS_SPEC = {"eventsSinceNumber": (STRING, False), "eventsUntilNumber": (STRING, False), "content": (STRING, False)}
#: most events one ``$events`` answers
MAX_EVENTS = 1000


def status(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    Inputs(req, "status", {})
    with ctx.session() as session:
        sub, _ = _subscription(session, req)
        since_start = _events_since_start(session, sub.id)
    result = payload.history(ctx.base_url, sub, "query-status", since_start, [], [], sub.payload)
    entry = {
        "fullUrl": result["entry"][0]["fullUrl"],
        "resource": result["entry"][0]["resource"],
        "search": {"mode": "match"},
    }
    return FhirResponse(200, resource=bundle("searchset", [entry], [], total=1))


def events(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "events", EVENTS_SPEC)
    since = _number(inputs.get("eventsSinceNumber"), "eventsSinceNumber", 1)
    until = _number(inputs.get("eventsUntilNumber"), "eventsUntilNumber", None)
    content = inputs.get("content") or "id-only"
    if content not in PAYLOADS:
        raise FhirError("invalid-param", f"$events: content must be one of {', '.join(PAYLOADS)}", "content")
    with ctx.session() as session:
        sub, _ = _subscription(session, req)
        since_start = _events_since_start(session, sub.id)
        found = outbox.events(session.conn, sub.id, since, until)[:MAX_EVENTS]
        resources: list[StoredVersion] = []
        if content == "full-resource":  # what the subscription may show, and the caller may see
            for event in found:
                with session.acting(sub.view()):
                    version = _focus(session, event.focus)
                if version is not None and session.read_current(version.res_type, version.res_id) is not None:
                    resources.append(version)
    return FhirResponse(
        200, resource=payload.history(ctx.base_url, sub, "query-event", since_start, found, resources, content)
    )


def ws_binding_token(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    Inputs(req, "get-ws-binding-token", {})
    with ctx.session() as session:
        sub, _ = _subscription(session, req)
    if sub.channel != "websocket":
        raise FhirError("processing", f"Subscription/{sub.id} has a {sub.channel} channel, not a websocket")
    token, expires = issue_token(ctx.repo.engine, sub.id)
    root = ctx.base_url.removesuffix("/fhir")
    socket_url = ("wss" + root[5:] if root.startswith("https") else "ws" + root[4:]) + "/websocket"
    parameters = [
        {"name": "token", "valueString": token},
        {"name": "expiration", "valueDateTime": instant(expires)},
        {"name": "subscription", "valueString": f"{ctx.base_url}/Subscription/{sub.id}"},
        {"name": "websocket-url", "valueUrl": socket_url},
    ]
    return FhirResponse(200, resource={"resourceType": "Parameters", "parameter": parameters})


def _subscription(session: Session, req: FhirRequest) -> tuple[Subscription, StoredVersion]:
    res_id = require_id(req.res_id)
    current = read_live(session, "Subscription", res_id)
    return parse(current.resource(), res_id, current.tenant), current


def _events_since_start(session: Session, sub_id: str) -> int:
    value = session.conn.execute(
        counters.select().with_only_columns(counters.c.value).where(counters.c.name == f"subscription-events-{sub_id}")
    ).scalar()
    return int(value or 0)


def _number(raw: str | None, name: str, default: int | None) -> int | None:
    if raw is None:
        return default
    if not raw.isdigit():
        raise FhirError("invalid-param", f"$events: {name} must be an event number, not {raw!r}", name)
    return int(raw)


def _focus(session: Session, focus: str | None) -> StoredVersion | None:
    if not focus or "/_history/" not in focus:
        return None
    ref, _, version = focus.partition("/_history/")
    res_type, _, res_id = ref.partition("/")
    if session.read_current(res_type, res_id) is None:
        return None
    return session.read_version(res_type, res_id, int(version))
