"""The ways a notification leaves: rest-hook (HTTP), websocket, amqp (RabbitMQ)."""


class DeliveryError(Exception):
    """The channel did not take the notification (the reason, for the outbox and the notice)."""
