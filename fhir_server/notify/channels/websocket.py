"""websocket: notifications to the sockets bound to a subscription in this process.

A client binds a socket to a subscription with a one-time token from
``Subscription/[id]/$get-ws-binding-token`` (Subscriptions Backport): it sends
``bind-with-token <token>``. A token is 32 random bytes, stored only as its SHA-256, valid for
five minutes and once. Each worker delivers the notifications of the subscriptions bound to its
own sockets (notify/dispatcher.py), so a notification waits in the outbox until a socket is bound
somewhere — a client that reconnects gets what it missed, in order.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
from typing import Any, Protocol

from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine

from fhir_server.notify.channels import DeliveryError
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import subscription_ws_tokens as T
from fhir_server.util.clock import now_us

TOKEN_SECONDS = 300


class Socket(Protocol):
    def send(self, data: str) -> None: ...


class WebsocketHub:
    """The sockets of this process, by the subscription they are bound to."""

    def __init__(self) -> None:
        self._bound: dict[str, set[Any]] = {}
        self._lock = threading.Lock()

    def bind(self, subscription: str, socket: Socket) -> None:
        with self._lock:
            self._bound.setdefault(subscription, set()).add(socket)

    def unbind(self, socket: Socket) -> None:
        with self._lock:
            for sockets in self._bound.values():
                sockets.discard(socket)
            self._bound = {k: v for k, v in self._bound.items() if v}

    def subscriptions(self) -> set[str]:
        with self._lock:
            return set(self._bound)

    def send(self, subscription: str, text: str) -> None:
        """To every socket bound to ``subscription``; delivered if one took it."""
        with self._lock:
            sockets = list(self._bound.get(subscription, ()))
        sent = 0
        for socket in sockets:
            try:
                socket.send(text)
                sent += 1
            except Exception:  # noqa: BLE001 - a closed or broken socket of any library
                self.unbind(socket)
        if not sent:
            raise DeliveryError(f"websocket: no open socket is bound to Subscription/{subscription}")


def issue_token(engine: Engine, subscription: str) -> tuple[str, int]:
    """A binding token for ``subscription`` and the instant (µs) it expires."""
    token = secrets.token_urlsafe(32)
    expires = now_us() + TOKEN_SECONDS * 1_000_000
    with begin_write(engine) as conn:
        conn.execute(delete(T).where(T.c.expires_us < now_us()))
        conn.execute(insert(T).values(token_hash=_hash(token), subscription=subscription, expires_us=expires))
    return token, expires


def redeem(engine: Engine, token: str) -> str | None:
    """The subscription a token binds to (the token is used up), or None."""
    digest = _hash(token)
    with begin_write(engine) as conn:
        row = conn.execute(select(T.c.subscription, T.c.expires_us).where(T.c.token_hash == digest)).first()
        if row is None:
            return None
        conn.execute(delete(T).where(T.c.token_hash == digest))
    return str(row.subscription) if row.expires_us >= now_us() else None


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
