"""``/websocket``: the socket end of websocket subscriptions (Flask ↔ ``notify/channels/websocket.py``).

The protocol is the Subscriptions Backport's: the client sends ``bind-with-token <token>`` (a
token of ``Subscription/[id]/$get-ws-binding-token``); the server answers ``bound <id>`` — or
``error <reason>`` and closes — then sends a topic subscription's ``handshake`` notification, and
from then its notifications on the socket (a notification Bundle as JSON text; ``ping <id>`` for
an R4 criteria subscription). The
token is the authentication: the socket carries no access token. A socket may bind several
subscriptions. The worker that holds the socket delivers its notifications (notify/dispatcher.py).
"""

from __future__ import annotations

import logging
from typing import Any

from flask import Flask, Response, request
from simple_websocket import ConnectionClosed, Server

from fhir_server.notify.channels.websocket import WebsocketHub, redeem

log = logging.getLogger(__name__)


def register(app: Flask, engine: Any, hub: WebsocketHub, wake: Any, handshake: Any) -> None:
    @app.get("/websocket")
    def websocket_help() -> Response:
        return Response("a websocket endpoint (Subscriptions Backport)\n", status=426, mimetype="text/plain")

    # werkzeug routes a request with "Upgrade: websocket" only to a rule marked websocket
    @app.route("/websocket", websocket=True)  # type: ignore[misc]
    def websocket() -> Response:
        socket = Server.accept(request.environ, ping_interval=30)
        try:
            while True:
                message = socket.receive()
                if not isinstance(message, str):
                    continue
                verb, _, token = message.strip().partition(" ")
                if verb != "bind-with-token" or not token:
                    socket.send("error expected: bind-with-token <token>")
                    continue
                subscription = redeem(engine, token.strip())
                if subscription is None:
                    socket.send("error the token is unknown, used or expired")
                    continue
                hub.bind(subscription, socket)
                socket.send(f"bound {subscription}")
                handshake(subscription)  # queued: the dispatcher sends it on this socket
                wake()  # what waited for a socket goes now
        except ConnectionClosed:
            pass
        finally:
            hub.unbind(socket)
            socket.close()
        return _Closed()


class _Closed(Response):
    """The answer after a websocket closed: the connection was taken over, nothing is written
    (gevent's handler sends nothing when the application never started a response)."""

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        return []
