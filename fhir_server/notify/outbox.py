"""The outbox: notifications written with the change they announce, delivered from there.

Why a table: a row is inserted in the transaction of the change (notify/subscriptions.py), so it
exists exactly when the change does, and survives a restart until it is delivered. Any worker may
deliver it: it takes a row by a lease (an UPDATE that only one worker's statement can match), so
two workers never send the same row at once, and a worker that dies mid-delivery gives the row
back when its lease runs out. Delivery is at least once: each row has a ``notification_id`` that
every channel carries, the consumer's idempotency key.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

from sqlalchemy import and_, delete, insert, or_, select, update
from sqlalchemy.engine import Connection

from fhir_server.storage.schema import subscription_outbox as O
from fhir_server.util.clock import now_us

if TYPE_CHECKING:
    from fhir_server.notify.subscriptions import Subscription
    from fhir_server.storage.repository import Session

PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"
#: how long a worker holds a row it is delivering (a delivery times out well before: 3 s to
#: connect, 5 s to answer); a worker that stops finishes its row first
LEASE_US = 30_000_000


def now() -> int:
    return now_us()


@dataclass(frozen=True)
class Notification:
    id: int
    notification_id: str
    subscription: str
    event_number: int
    kind: str
    focus: str | None
    origin: str | None
    channel: str
    attempts: int
    created_us: int


def enqueue(session: Session, sub: Subscription, kind: str, focus: str | None, origin: str | None) -> None:
    """Queue a notification for ``sub`` in the session's transaction (an event gets the next
    event number of the subscription; a handshake gets 0)."""
    from fhir_server.workflow.numbers import next_value

    number = next_value(session, f"subscription-events-{sub.id}") if kind == "event-notification" else 0
    stamp = now()
    session.conn.execute(
        insert(O).values(
            notification_id=str(uuid.uuid4()),
            subscription=sub.id,
            event_number=number,
            kind=kind,
            focus=focus,
            origin=origin,
            channel=sub.channel,
            status=PENDING,
            attempts=0,
            next_attempt_us=stamp,
            created_us=stamp,
        )
    )


def claim(
    conn: Connection, limit: int, channels: tuple[str, ...], subscriptions: set[str] | None = None
) -> list[Notification]:
    """Take up to ``limit`` due rows for this worker in one statement, oldest first.

    Why at once and skipping locked rows: workers taking the oldest rows one by one all reached
    for the same row, and each delivery cost a transaction of its own to take it
    (scripts/bench/consultations: notifications 14 s late at 42 a second). On PostgreSQL ``SKIP
    LOCKED`` gives each worker rows no other is taking; SQLite's write lock serializes the claims.
    """
    stamp = now()
    wanted = (
        select(O.c.id)
        .where(
            O.c.status == PENDING,
            O.c.next_attempt_us <= stamp,
            O.c.channel.in_(channels),
            or_(O.c.lease_until_us.is_(None), O.c.lease_until_us < stamp),
        )
        .order_by(O.c.id)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    if subscriptions is not None:
        wanted = wanted.where(O.c.subscription.in_(sorted(subscriptions)))
    result = conn.execute(
        update(O).where(O.c.id.in_(wanted.scalar_subquery())).values(lease_until_us=stamp + LEASE_US).returning(O)
    )
    return sorted((_row(r) for r in result), key=lambda n: n.id)


def delivered_all(conn: Connection, rows: list[Notification]) -> None:
    """Mark ``rows`` delivered, in one statement. A delivered heartbeat is forgotten: it announces
    nothing to replay, and one per period per subscription would pile up."""
    beats = [r.id for r in rows if r.kind == "heartbeat"]
    if beats:
        conn.execute(delete(O).where(O.c.id.in_(beats)))
    kept = [r.id for r in rows if r.kind != "heartbeat"]
    if kept:
        conn.execute(
            update(O)
            .where(O.c.id.in_(kept))
            .values(
                status=DELIVERED, delivered_us=now(), attempts=O.c.attempts + 1, lease_until_us=None, last_error=None
            )
        )


def retry(conn: Connection, row: Notification, delay_s: float, error: str) -> None:
    conn.execute(
        update(O)
        .where(O.c.id == row.id)
        .values(
            attempts=row.attempts + 1,
            next_attempt_us=now() + int(delay_s * 1_000_000),
            lease_until_us=None,
            last_error=error[:2000],
        )
    )


def failed(conn: Connection, row: Notification, error: str) -> None:
    conn.execute(
        update(O)
        .where(O.c.id == row.id)
        .values(status=FAILED, attempts=row.attempts + 1, lease_until_us=None, last_error=error[:2000])
    )


def release(conn: Connection, row: Notification) -> None:
    """Give a held row back untried (nobody to deliver it to here, e.g. no socket bound)."""
    conn.execute(update(O).where(and_(O.c.id == row.id, O.c.status == PENDING)).values(lease_until_us=None))


def events(conn: Connection, subscription: str, since: int, until: int | None) -> list[Notification]:
    """Event notifications of a subscription by number (``$events``), delivered or not."""
    query = select(O).where(
        O.c.subscription == subscription, O.c.kind == "event-notification", O.c.event_number >= since
    )
    if until is not None:
        query = query.where(O.c.event_number <= until)
    return [_row(r) for r in conn.execute(query.order_by(O.c.event_number))]


def _row(r: object) -> Notification:
    return Notification(
        r.id, r.notification_id, r.subscription, r.event_number, r.kind, r.focus, r.origin, r.channel,  # type: ignore[attr-defined]
        r.attempts, r.created_us,  # type: ignore[attr-defined]
    )  # fmt: skip
