"""What a notification says: the Subscriptions Backport notification Bundle, or R4's classic forms.

A topic subscription's notification (every channel) and any amqp message is a ``history`` Bundle
whose first entry is the subscription status (a ``Parameters`` of the backport's
``backport-subscription-status-r4`` profile: subscription, topic, status, type, events since the
start, and the event — its number, time and focus) followed, for ``full-resource``, by the focus
resource as the subscription's institution may see it. ``id-only`` names the focus; ``empty``
does not. A criteria subscription's rest-hook follows R4: a PUT of the resource to
``[endpoint]/[type]/[id]`` when ``channel.payload`` is set, else an empty POST; its websocket gets
``ping [id]``.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhir_server.notify.outbox import Notification
from fhir_server.notify.subscriptions import Subscription
from fhir_server.storage.repository import StoredVersion
from fhir_server.util.clock import instant, now_us

STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"


def bundle(
    base_url: str,
    sub: Subscription,
    row: Notification,
    events_since_start: int,
    focus: StoredVersion | None,
) -> dict[str, Any]:
    """The notification Bundle of ``row`` (``focus``: the resource, for full-resource)."""
    events = [row] if row.kind == "event-notification" else []
    return history(base_url, sub, row.kind, events_since_start, events, [focus] if focus else [], sub.payload,
                   bundle_id=row.notification_id, when_us=row.created_us)  # fmt: skip


def history(
    base_url: str,
    sub: Subscription,
    kind: str,
    events_since_start: int,
    events: list[Notification],
    resources: list[StoredVersion],
    content: str,
    bundle_id: str | None = None,
    when_us: int | None = None,
) -> dict[str, Any]:
    """A ``history`` Bundle: the subscription's status (``kind``: event-notification, handshake,
    query-status, query-event) with ``events``, then ``resources`` (full-resource content)."""
    when = instant(now_us() if when_us is None else when_us)
    sub_url = f"{base_url}/Subscription/{sub.id}"
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": sub_url}},
        {"name": "topic", "valueCanonical": sub.topic.url if sub.topic else sub_url},
        {"name": "status", "valueCode": sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.event_number)},
            {"name": "timestamp", "valueInstant": instant(event.created_us)},
        ]
        if content != "empty" and event.focus:
            parts.append({"name": "focus", "valueReference": {"reference": f"{base_url}/{_unversioned(event.focus)}"}})
        parameters.append({"name": "notification-event", "part": parts})
    status = {"resourceType": "Parameters", "meta": {"profile": [STATUS_PROFILE]}, "parameter": parameters}
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": status,
            "request": {"method": "GET", "url": f"{sub_url}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content == "full-resource":
        for focus in resources:
            if focus.content is None:
                continue
            entries.append(
                {
                    "fullUrl": f"{base_url}/{focus.res_type}/{focus.res_id}",
                    "resource": focus.resource(),
                    "request": {"method": "POST" if focus.version == 1 else "PUT", "url": _unversioned(focus.location)},
                    "response": {"status": "201" if focus.version == 1 else "200"},
                }
            )
    return {
        "resourceType": "Bundle",
        "id": bundle_id or str(uuid.uuid4()),
        "meta": {"lastUpdated": when},
        "type": "history",
        "timestamp": when,
        "entry": entries,
    }


def _unversioned(reference: str) -> str:
    return reference.split("/_history")[0]
