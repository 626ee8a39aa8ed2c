"""A subscriber's HTTP endpoint for the notification tests: it records what it receives, can
answer errors for a while (a subscriber that is down), and keeps each notification once by its
idempotency key, as a real consumer would."""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    server: ThreadingHTTPServer
    requests: list[Received] = field(default_factory=list)
    #: answer 503 to this many requests before accepting
    failures: int = 0
    #: notification ids already kept (the consumer's deduplication): events
    kept: dict[str, Received] = field(default_factory=dict)
    #: handshakes and heartbeats (notifications without an event), as received
    signals: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def handle(self, received: Received) -> int:
        with self.lock:
            self.requests.append(received)
            if self.failures > 0:
                self.failures -= 1
                return 503
            if notification_type(received.body) in ("handshake", "heartbeat"):
                self.signals.append(received)
                return 200
            key = received.headers.get("X-Notification-Id") or str(len(self.requests))
            self.kept.setdefault(key, received)
            return 200

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def start_receiver() -> Receiver:
    holder: list[Receiver] = []

    class Handler(BaseHTTPRequestHandler):
        def _any(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            status = holder[0].handle(Received(self.command, self.path, dict(self.headers.items()), body))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_PUT = _any

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    receiver = Receiver(server)
    holder.append(receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return receiver


def consume(channel: Any, queue: str, count: int, seconds: float = 15.0) -> list[tuple[Any, dict[str, Any]]]:
    """Up to ``count`` messages of an AMQP queue as (properties, JSON body), within ``seconds``."""
    import time

    messages: list[tuple[Any, dict[str, Any]]] = []
    deadline = time.monotonic() + seconds
    while len(messages) < count and time.monotonic() < deadline:
        method, props, body = channel.basic_get(queue=queue, auto_ack=True)
        if method is None:
            time.sleep(0.05)
            continue
        messages.append((props, json.loads(body)))
    return messages


def event_number(bundle: dict[str, Any]) -> int:
    """The event number of a notification Bundle (its subscription status's notification-event)."""
    status = {p["name"]: p for p in bundle["entry"][0]["resource"]["parameter"]}
    return int({p["name"]: p for p in status["notification-event"]["part"]}["event-number"]["valueString"])


def notification_type(body: bytes | dict[str, Any]) -> str | None:
    """A backport notification's type (event-notification, handshake, heartbeat …); None for
    anything else (an R4 rest-hook's resource, an empty ping)."""
    try:
        bundle = json.loads(body) if isinstance(body, bytes) else body
        status = bundle["entry"][0]["resource"]
        return next(str(p["valueCode"]) for p in status["parameter"] if p["name"] == "type")
    except (ValueError, KeyError, IndexError, TypeError, StopIteration):
        return None
