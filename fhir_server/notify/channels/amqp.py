"""amqp: a persistent message to the platform's RabbitMQ, confirmed by the broker.

The Subscription's endpoint ``amqp:///<exchange>/<routing key>`` names a topic exchange of the
broker the server is configured with (``--amqp-url``); the server declares the exchange (durable)
and publishes with ``mandatory``, so a message no queue takes is a failed delivery, not a silent
loss. Delivery is when the broker confirms it (publisher confirms): from then the broker keeps it
for a consumer that is away. ``message_id`` is the idempotency key.
"""

from __future__ import annotations

import logging
import threading

import pika
from pika.exceptions import AMQPError, UnroutableError

from fhir_server.notify.channels import DeliveryError

log = logging.getLogger(__name__)


class AmqpPublisher:
    """One connection per process, opened on first use and again after a failure."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._connection: pika.BlockingConnection | None = None
        self._channel: object = None
        self._exchanges: set[str] = set()
        self._lock = threading.Lock()

    def publish(self, exchange: str, routing_key: str, body: bytes, message_id: str, headers: dict[str, str]) -> None:
        with self._lock:
            try:
                channel = self._open()
                if exchange not in self._exchanges:
                    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
                    self._exchanges.add(exchange)
                channel.basic_publish(
                    exchange=exchange,
                    routing_key=routing_key,
                    body=body,
                    properties=pika.BasicProperties(
                        content_type="application/fhir+json",
                        delivery_mode=pika.DeliveryMode.Persistent,
                        message_id=message_id,
                        headers=headers,
                    ),
                    mandatory=True,
                )
            except UnroutableError:
                raise DeliveryError(f"amqp {exchange}/{routing_key}: no queue takes this routing key") from None
            except (AMQPError, OSError) as exc:
                self._close()
                raise DeliveryError(f"amqp {exchange}/{routing_key}: {type(exc).__name__}: {exc}") from None

    def _open(self) -> pika.adapters.blocking_connection.BlockingChannel:
        if self._connection is None or self._connection.is_closed:
            params = pika.URLParameters(self.url)
            params.socket_timeout = 5
            params.blocked_connection_timeout = 10
            self._connection = pika.BlockingConnection(params)
            self._channel = self._connection.channel()
            self._channel.confirm_delivery()  # type: ignore[attr-defined]
            self._exchanges.clear()
        return self._channel  # type: ignore[return-value]

    def _close(self) -> None:
        try:
            if self._connection is not None and self._connection.is_open:
                self._connection.close()
        except (AMQPError, OSError):
            log.debug("closing a broken AMQP connection", exc_info=True)
        self._connection = None

    def close(self) -> None:
        with self._lock:
            self._close()
