"""Notifications from a real server (R19): two workers each running a dispatcher, a websocket
client, a rest-hook subscriber that is down for a while, a RabbitMQ consumer that comes late,
and a restart with notifications still undelivered. Every notification arrives, once per
idempotency key, with consecutive event numbers."""

from __future__ import annotations

import json
import pathlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest
import requests
from simple_websocket import Client

from tests.conftest import ServerProcess
from tests.notify.receiver import Receiver, consume, event_number, notification_type, start_receiver
from tests.notify.test_subscriptions import AMQP_URL, topic_subscription

STATUS = "http://fhir.telefhir.cn/CodeSystem/consultation-task-status"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "examples"
RETRIES = ("--notify-retry-delays", "0.5,1,2")


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.stop()


def _server(database_url: str, data: Any) -> ServerProcess:
    return ServerProcess(database_url, data, workers=2, args=RETRIES)


def _task(tag: str) -> dict[str, Any]:
    """A consultation Task at 'applied' (the profile's example), tagged for this test."""
    task = json.loads((EXAMPLES / "consultation-task-example.json").read_text("utf-8"))
    task.pop("id")
    task.update(status="requested", businessStatus={"coding": [{"system": STATUS, "code": "applied"}]})
    task["code"]["coding"][0].update(code="teleconsultation-online", display="实时远程会诊")  # pre-reviewed
    task["meta"]["tag"] = [{"code": tag}]
    return dict(task)


def _subscribe(base: str, body: dict[str, Any]) -> str:
    """Subscribe and wait for the handshake to activate it (rest-hook, amqp; a websocket one is
    active at once), then for every worker to serve it."""
    resp = requests.post(f"{base}/Subscription", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    sub = str(resp.json()["id"])
    _wait(lambda: requests.get(f"{base}/Subscription/{sub}", timeout=10).json()["status"] == "active")
    time.sleep(0.6)  # every worker sees a changed subscription within half a second
    return sub


def _wait(condition: Any, seconds: float = 15.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_a_websocket_gets_each_notification(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    server = _server(database_url, tmp_path_factory.mktemp("notify-ws"))
    try:
        tag = uuid.uuid4().hex[:8]
        sub = _subscribe(server.base, topic_subscription("", f"Task?_tag={tag}",
                                                         channel="websocket"))  # fmt: skip
        token = requests.get(f"{server.base}/Subscription/{sub}/$get-ws-binding-token", timeout=10).json()
        params = {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in token["parameter"]}
        socket = Client.connect(params["websocket-url"])
        try:
            socket.send(f"bind-with-token {params['token']}")
            assert socket.receive(timeout=5) == f"bound {sub}"
            assert notification_type(json.loads(socket.receive(timeout=10))) == "handshake"  # on binding
            socket.send(f"bind-with-token {params['token']}")
            assert socket.receive(timeout=5).startswith("error")  # a token binds once
            task = _task(tag)
            resp = requests.post(f"{server.base}/Task", json=task, timeout=10)
            assert resp.status_code == 201, resp.text
            created = resp.json()
            created["businessStatus"]["coding"][0]["code"] = "pre-reviewed"
            created["status"] = "received"
            assert requests.put(f"{server.base}/Task/{created['id']}", json=created, timeout=10).status_code == 200
            received = [json.loads(socket.receive(timeout=10)) for _ in range(2)]
            assert sorted(event_number(b) for b in received) == [1, 2]
            codes = {b["entry"][1]["resource"]["businessStatus"]["coding"][0]["code"] for b in received}
            assert codes == {"applied", "pre-reviewed"}
        finally:
            socket.close()
    finally:
        server.stop()


def test_a_subscriber_down_for_a_while_and_a_restart_lose_nothing(
    database_url: str, tmp_path_factory: pytest.TempPathFactory, receiver: Receiver
) -> None:
    data = tmp_path_factory.mktemp("notify-hook")
    server = _server(database_url, data)
    tag = uuid.uuid4().hex[:8]
    try:
        _subscribe(server.base, topic_subscription(receiver.url, f"Task?_tag={tag}"))
        receiver.failures = 3  # down: the first attempts fail, the retries get through
        ids = []
        for _ in range(3):
            task = _task(tag)
            resp = requests.post(f"{server.base}/Task", json=task, timeout=10)
            ids.append(resp.json()["id"])
        _wait(lambda: len(receiver.kept) == 3)
        receiver.failures = 10**6  # down again, and the server stops before it is back
        task["businessStatus"]["coding"][0]["code"] = "pre-reviewed"
        task["status"] = "received"
        task["id"] = ids[0]
        assert requests.put(f"{server.base}/Task/{ids[0]}", json=task, timeout=10).status_code == 200
    finally:
        server.stop()
    receiver.failures = 0
    server = _server(database_url, data)  # the outbox survived: the restarted server delivers it
    try:
        _wait(lambda: len(receiver.kept) == 4)
        numbers = sorted(event_number(r.json()) for r in receiver.kept.values())
        assert numbers == [1, 2, 3, 4]
        time.sleep(1.0)
        assert len(receiver.kept) == 4  # nothing twice under a new key
    finally:
        server.stop()


def test_a_late_amqp_consumer_gets_every_message(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    exchange, key = f"telefhir-e2e-{uuid.uuid4().hex[:8]}", "consultations.all"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue=f"q-{exchange}", durable=True).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)
    server = _server(database_url, tmp_path_factory.mktemp("notify-amqp"))
    try:
        tag = uuid.uuid4().hex[:8]
        _subscribe(server.base, topic_subscription(f"amqp:///{exchange}/{key}", f"Task?_tag={tag}", channel="amqp"))
        for _ in range(20):
            task = _task(tag)
            assert requests.post(f"{server.base}/Task", json=task, timeout=10).status_code == 201
        time.sleep(1.0)  # the consumer comes only now
        messages = consume(channel, queue, 21)
        assert [notification_type(bundle) for _, bundle in messages].count("handshake") == 1
        seen = {props.message_id: event_number(b) for props, b in messages if notification_type(b) != "handshake"}
        assert sorted(seen.values()) == list(range(1, 21))
    finally:
        server.stop()
        channel.queue_delete(queue=queue)
        channel.exchange_delete(exchange=exchange)
        connection.close()
