"""Delivering the outbox: every worker runs one dispatcher.

It wakes when a transaction of its own process queued a notification (no wait), and otherwise
every ``poll`` seconds (for rows queued by other workers, due retries and given-back leases);
it takes each due row by its lease (notify/outbox.py), so two workers never send the same row,
builds the notification as the subscription's institution may see it (notify/payload.py) and
sends it on its channel. A failed attempt is retried after the policy's delay; after the last,
the failure is noticed (notify/retry.py). Every final outcome is audited.

A delivered handshake activates its subscription. Once a second it also queues the heartbeats
due: a subscription with a heartbeat period to which nothing was queued for that long gets one —
whichever worker looks first (a compare-and-set on its ``heartbeat-<id>`` counter).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

from sqlalchemy import func, select

from fhir_server.formats import json as fjson
from fhir_server.notify import outbox, payload
from fhir_server.notify.channels import DeliveryError, rest_hook
from fhir_server.notify.channels.amqp import AmqpPublisher
from fhir_server.notify.channels.websocket import WebsocketHub
from fhir_server.notify.outbox import Notification
from fhir_server.notify.retry import RetryPolicy, notice_failure
from fhir_server.notify.subscriptions import ACTIVATING, Subscription, Subscriptions, amqp_address
from fhir_server.storage.engine import begin_write
from fhir_server.storage.repository import Repository, StoredVersion
from fhir_server.storage.schema import counters
from fhir_server.storage.schema import subscription_outbox as O
from fhir_server.util.clock import now_us

log = logging.getLogger(__name__)

#: (subscription, notification, delivered?, error) → the audit record of the outcome
Auditor = Callable[[Subscription, Notification, bool, str | None], None]
_BATCH = 100
#: seconds between looks for heartbeats due
HEARTBEAT_CHECK_S = 1.0


@dataclass
class _Batch:
    """What one round learns once: the subscriptions as stored, their event counts, what was sent."""

    subscriptions: dict[str, Subscription | None] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)
    delivered: list[tuple[Subscription, Notification]] = field(default_factory=list)


class Dispatcher:
    def __init__(
        self,
        repo: Repository,
        subscriptions: Subscriptions,
        base_url: str,
        publisher: AmqpPublisher,
        hub: WebsocketHub,
        policy: RetryPolicy,
        poll: float = 0.2,
        audit: Auditor | None = None,
    ) -> None:
        self.repo = repo
        self.subscriptions = subscriptions
        self.base_url = base_url
        self.publisher = publisher
        self.hub = hub
        self.policy = policy
        self.poll = poll
        self.audit = audit
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- running -----------------------------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="notify-dispatcher", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.publisher.close()

    def wake(self) -> None:
        self._wake.set()

    def _run(self) -> None:
        next_heartbeats = 0.0
        while not self._stop.is_set():
            self._wake.wait(self.poll)
            self._wake.clear()
            try:
                if time.monotonic() >= next_heartbeats:
                    next_heartbeats = time.monotonic() + HEARTBEAT_CHECK_S
                    self.queue_heartbeats()
                while self.deliver_due() == _BATCH and not self._stop.is_set():
                    pass  # a full batch: there may be more
            except Exception:  # noqa: BLE001 - a database outage: the next round tries again
                log.exception("notification dispatch failed; retrying in %.1f s", self.poll)

    def queue_heartbeats(self, now: int | None = None) -> int:
        """Queue a heartbeat for each subscription that asked for one and was sent nothing for
        its period; the number queued."""
        subs = self.subscriptions.heartbeats()
        if not subs:
            return 0
        now = now_us() if now is None else now
        queued = 0
        with self.repo.session(write=True, side=True) as session:
            last = dict(
                session.conn.execute(
                    select(O.c.subscription, func.max(O.c.created_us))
                    .where(O.c.subscription.in_([s.id for s in subs]))
                    .group_by(O.c.subscription)
                ).all()
            )
            for sub in subs:
                period = sub.heartbeat_s * 1_000_000  # type: ignore[operator]
                sent = last.get(sub.id)
                if (sent is None or now - sent >= period) and _heartbeat_due(
                    session, sub.id, now, period, sent is None
                ):
                    outbox.enqueue(session, sub, "heartbeat", None, sub.owner)
                    queued += 1
        return queued

    # -- one round -----------------------------------------------------------------------------
    def deliver_due(self) -> int:
        """Deliver what is due now; the number of rows taken. The rows are taken in one
        statement and those delivered marked in another (notify/outbox.py ``claim``)."""
        with begin_write(self.repo.side_engine) as conn:
            rows = outbox.claim(conn, _BATCH, ("rest-hook", "amqp"))
            bound = self.hub.subscriptions()
            if bound:
                rows += outbox.claim(conn, _BATCH, ("websocket",), bound)
        batch = _Batch()
        try:
            for i, row in enumerate(rows):
                if self._stop.is_set():  # stopping: the rest goes back to the outbox for the next worker
                    with begin_write(self.repo.side_engine) as conn:
                        for untried in rows[i:]:
                            outbox.release(conn, untried)
                    break
                self._attempt(row, batch)
        finally:
            with begin_write(self.repo.side_engine) as conn:
                outbox.delivered_all(conn, [row for _sub, row in batch.delivered])
            for sub, row in batch.delivered:
                if row.kind == "handshake":
                    self._activate(sub)
            if self.audit is not None:
                for sub, row in batch.delivered:
                    self.audit(sub, row, True, None)
        return len(rows)

    def _activate(self, sub: Subscription) -> None:
        """The handshake arrived: the subscription is active (unless it changed meanwhile)."""
        with self.repo.session(write=True, side=True) as session:
            current = session.read_current("Subscription", sub.id)
            if current is None or current.deleted:
                return
            content = current.resource()
            if content.get("status") != "requested":
                return
            content["status"] = "active"
            session.scratch[ACTIVATING] = sub.id
            session.update(current, content)
        log.info("Subscription/%s: handshake delivered, active", sub.id)

    def _attempt(self, row: Notification, batch: _Batch) -> None:
        if row.subscription not in batch.subscriptions:
            batch.subscriptions[row.subscription] = self.subscriptions.get(row.subscription)
        sub = batch.subscriptions[row.subscription]
        if sub is None or sub.status not in ("active", "requested"):
            with begin_write(self.repo.side_engine) as conn:  # nobody to tell any more: not a failure to notice
                outbox.failed(conn, row, "the subscription was deleted or turned off before delivery")
            return
        try:
            self._send(sub, row, batch)
        except DeliveryError as exc:
            self._failed(sub, row, str(exc))
            return
        batch.delivered.append((sub, row))

    def _failed(self, sub: Subscription, row: Notification, error: str) -> None:
        delay = self.policy.next_delay(row.attempts + 1)
        if delay is not None:
            with begin_write(self.repo.side_engine) as conn:
                outbox.retry(conn, row, delay, error)
            log.info(
                "notification %s to Subscription/%s failed (%s); retry in %.1f s",
                row.notification_id,
                sub.id,
                error,
                delay,
            )
            return
        with begin_write(self.repo.side_engine) as conn:
            outbox.failed(conn, row, error)
        log.warning("notification %s to Subscription/%s failed for good: %s", row.notification_id, sub.id, error)
        try:
            notice_failure(self.repo, sub, row, error)
        except Exception:  # noqa: BLE001 - the failure stays recorded in the outbox and the audit
            log.exception("the failure notice of notification %s could not be written", row.notification_id)
        if self.audit is not None:
            self.audit(sub, row, False, error)

    # -- sending --------------------------------------------------------------------------------
    def _send(self, sub: Subscription, row: Notification, batch: _Batch) -> None:
        classic = sub.topic is None and row.kind == "event-notification"
        focus = self._focus(sub, row) if sub.payload == "full-resource" or (classic and sub.mime) else None
        headers = {
            "X-Notification-Id": row.notification_id,
            "X-Subscription-Id": sub.id,
            "X-Event-Number": str(row.event_number),
        }
        if sub.channel == "rest-hook" and classic:
            if sub.mime and focus is not None and focus.content is not None:  # R4: PUT the resource
                url = f"{sub.endpoint.rstrip('/')}/{focus.res_type}/{focus.res_id}"  # type: ignore[union-attr]
                rest_hook.send("PUT", url, focus.content, headers, sub.headers)
            else:
                rest_hook.send("POST", str(sub.endpoint), None, headers, sub.headers)
            return
        if sub.channel == "websocket" and classic:
            self.hub.send(sub.id, f"ping {sub.id}")
            return
        if sub.id not in batch.events:
            batch.events[sub.id] = self._events_since_start(sub)
        since_start = max(batch.events[sub.id], row.event_number)
        body = fjson.dumps(payload.bundle(self.base_url, sub, row, since_start, focus))
        if sub.channel == "rest-hook":
            rest_hook.send("POST", str(sub.endpoint), body, headers, sub.headers)
        elif sub.channel == "amqp":
            exchange, key = amqp_address(sub.endpoint)  # type: ignore[misc]
            self.publisher.publish(exchange, key, body, row.notification_id, headers)
        else:
            self.hub.send(sub.id, body.decode())

    def _focus(self, sub: Subscription, row: Notification) -> StoredVersion | None:
        """The focus as the subscription may show it now (None: it may not)."""
        if not row.focus or "/_history/" not in row.focus:
            return None
        ref, _, version = row.focus.partition("/_history/")
        res_type, _, res_id = ref.partition("/")
        with self.repo.session(access=sub.view(), side=True) as session:
            if session.read_current(res_type, res_id) is None:
                return None  # not (or no longer) visible to the subscriber
            return session.read_version(res_type, res_id, int(version))

    def _events_since_start(self, sub: Subscription) -> int:
        with self.repo.side_engine.connect() as conn:
            value = conn.execute(
                select(counters.c.value).where(counters.c.name == f"subscription-events-{sub.id}")
            ).scalar()
        return int(value or 0)


def endpoint_host(sub: Subscription) -> str:
    """Where a notification goes, for its audit record."""
    if sub.channel == "rest-hook":
        return urlparse(sub.endpoint or "").netloc or "rest-hook"
    return sub.channel


def _heartbeat_due(session: Any, sub_id: str, now: int, period: int, never_sent: bool) -> bool:
    """Claim the heartbeat of ``sub_id`` at ``now``: True for the one caller whose insert or
    compare-and-set moves its counter. A subscription sent nothing yet starts its period when first
    seen."""
    placeholder = "%s" if session.repo.postgres else "?"
    name = f"heartbeat-{sub_id}"[:64]
    first = session.conn.exec_driver_sql(
        f"INSERT INTO counters (name, value) VALUES ({placeholder}, {placeholder}) ON CONFLICT (name) DO NOTHING",
        (name, now),
    )
    if first.rowcount == 1:
        return not never_sent
    moved = session.conn.exec_driver_sql(
        f"UPDATE counters SET value = {placeholder} WHERE name = {placeholder} AND value <= {placeholder}",
        (now, name, now - period),
    )
    return bool(moved.rowcount == 1)
