"""Subscriptions (R19; issue 6 item 7), in-process on SQLite and PostgreSQL with the real
RabbitMQ of this machine: what is matched in the writing transaction, what each channel
receives, retries and the failure notice, $status and $events. The dispatcher is run by the
test (``deliver_due``) so every step is observed; the e2e tests run it in a server."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pika
import pytest

from fhir_server.notify.retry import RetryPolicy
from tests.notify.receiver import Receiver, consume, event_number, notification_type, start_receiver
from tests.rest.workflow_network import STATUS, A, B, Net, consultation, network

CONSULTATION = "http://fhir.telefhir.cn/SubscriptionTopic/consultation"
BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
AMQP_URL = "amqp://guest:guest@127.0.0.1:5672/%2F"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    for n in network(request, tmp_path_factory):
        n.services.dispatcher.policy = RetryPolicy((0.0, 0.0, 0.0))
        n.services.subscriptions.refresh_interval = 0.0  # see every Subscription at once
        yield n


@pytest.fixture()
def receiver() -> Iterator[Receiver]:
    r = start_receiver()
    yield r
    r.stop()


def _deliver(n: Net, rounds: int = 5) -> None:
    for _ in range(rounds):
        n.services.dispatcher.deliver_due()


def _subscribe(n: Net, who: str, body: dict[str, Any]) -> dict[str, Any]:
    """Subscribe, and let the handshake through: the subscription is active once it arrives."""
    created = n.post(who, body)
    _deliver(n, 1)
    stored = n.call(who, "GET", f"Subscription/{created['id']}").get_json()
    assert stored["status"] == "active", stored
    return stored


def topic_subscription(
    endpoint: str, filter_criteria: str, channel: str = "rest-hook", content: str = "full-resource"
) -> dict[str, Any]:
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [BACKPORT + "backport-subscription"]},
        "status": "requested",
        "reason": "our consultations",
        "criteria": CONSULTATION,
        "_criteria": {"extension": [{"url": BACKPORT + "backport-filter-criteria", "valueString": filter_criteria}]},
        "channel": {
            "type": channel,
            **({"endpoint": endpoint} if endpoint else {}),
            "payload": "application/fhir+json",
            "_payload": {"extension": [{"url": BACKPORT + "backport-payload-content", "valueCode": content}]},
        },
    }
    if channel == "amqp":
        sub["channel"]["type"] = "rest-hook"  # replaced by the backport's channel type extension
        del sub["channel"]["type"]
        sub["channel"]["_type"] = {"extension": [{"url": BACKPORT + "backport-channel-type", "valueCoding": {
            "system": "http://fhir.telefhir.cn/CodeSystem/subscription-channel-type", "code": "amqp"}}]}  # fmt: skip
    return sub


def classic_subscription(endpoint: str, criteria: str) -> dict[str, Any]:
    """An R4 criteria subscription whose rest-hook is PUT each resource."""
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": f"changes of {criteria}",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, "payload": "application/fhir+json"},
    }


def _move(n: Net, who: str, task_id: str, business: str) -> None:
    resp = n.move(who, task_id, business)
    assert resp.status_code == 200, resp.get_json()


def test_a_subscription_is_active_once_its_handshake_arrives(net: Net, receiver: Receiver) -> None:
    n = net
    created = n.post("a-doc", topic_subscription(receiver.url, f"Task?requester=Organization/{A}"))
    assert created["status"] == "requested"  # until the handshake is delivered: nothing is matched
    forced = n.call("a-doc", "PUT", f"Subscription/{created['id']}", {**created, "status": "active"})
    assert forced.get_json()["status"] == "requested"  # only the handshake activates it
    consultation(n)
    _deliver(n)
    [handshake] = receiver.signals
    status = {p["name"]: p for p in handshake.json()["entry"][0]["resource"]["parameter"]}
    assert status["type"]["valueCode"] == "handshake" and status["status"]["valueCode"] == "requested"
    assert status["events-since-subscription-start"]["valueString"] == "0" and "notification-event" not in status
    assert receiver.kept == {}  # the consultation came before it was active
    assert n.call("a-doc", "GET", f"Subscription/{created['id']}").get_json()["status"] == "active"
    # a new endpoint is verified again
    moved = {**created, "status": "active", "channel": {**created["channel"], "endpoint": receiver.url + "/new"}}
    assert n.call("a-doc", "PUT", f"Subscription/{created['id']}", moved).get_json()["status"] == "requested"
    _deliver(n)
    assert [s.path for s in receiver.signals] == ["/hook", "/hook/new"]
    assert n.call("a-doc", "GET", f"Subscription/{created['id']}").get_json()["status"] == "active"
    n.call("a-doc", "DELETE", f"Subscription/{created['id']}")

    # an endpoint that never answers: after the retries the subscription is in error, never active
    dead = n.post("a-doc", topic_subscription("http://127.0.0.1:9/hook", f"Task?requester=Organization/{A}"))
    _deliver(n)
    stored = n.call("a-doc", "GET", f"Subscription/{dead['id']}").get_json()
    assert stored["status"] == "error" and "after 4 attempts" in stored["error"]
    n.call("a-doc", "DELETE", f"Subscription/{dead['id']}")


def test_heartbeats_go_out_when_nothing_was_sent_for_the_period(net: Net, receiver: Receiver) -> None:
    from fhir_server.util.clock import now_us
    from tests.rest.workflow_network import concurrently

    n = net
    body = topic_subscription(receiver.url, f"Task?requester=Organization/{A}")
    body["channel"]["extension"] = [{"url": BACKPORT + "backport-heartbeat-period", "valueUnsignedInt": 60}]
    sub = _subscribe(n, "a-doc", body)
    dispatcher = n.services.dispatcher
    start = now_us()
    assert dispatcher.queue_heartbeats(start) == 0  # the handshake was just sent
    later = start + 61_000_000
    assert sum(concurrently(lambda: dispatcher.queue_heartbeats(later))) == 1  # one worker queues it
    assert dispatcher.queue_heartbeats(later + 30_000_000) == 0  # the heartbeat itself was sent
    _deliver(n)
    kinds = [{p["name"]: p for p in s.json()["entry"][0]["resource"]["parameter"]}["type"]["valueCode"]
             for s in receiver.signals]  # fmt: skip
    assert kinds == ["handshake", "heartbeat"] and receiver.kept == {}
    assert _heartbeat_rows(n, sub["id"]) == 0  # a delivered heartbeat is forgotten …
    assert dispatcher.queue_heartbeats(later + 30_000_000) == 0  # … and still counts for its period
    assert dispatcher.queue_heartbeats(later + 62_000_000) == 1  # the next period's
    bad = {**body, "channel": {**body["channel"], "extension": [{"url": BACKPORT + "backport-heartbeat-period",
                                                                 "valueUnsignedInt": 0}]}}  # fmt: skip
    assert n.call("a-doc", "POST", "Subscription", bad).status_code == 422
    n.call("a-doc", "DELETE", f"Subscription/{sub['id']}")


def test_a_subscription_is_checked(net: Net) -> None:
    n = net
    for change, expected in (
        ({"criteria": "http://example.org/SubscriptionTopic/nope"}, "not a topic of this server"),
        ({"criteria": "Task?colour=red"}, "cannot run here"),
        ({"criteria": "Task?_sort=date"}, "not which changes matter"),
        ({"channel": {"type": "email", "endpoint": "mailto:x@example.org"}}, "not supported"),
        ({"channel": {"type": "rest-hook", "endpoint": "ftp://example.org"}}, "http(s) endpoint"),
    ):
        body = {**topic_subscription("http://127.0.0.1:9/hook", "Task?"), **change}
        resp = n.call("a-doc", "POST", "Subscription", body)
        assert resp.status_code == 422, change
        assert expected in resp.get_json()["issue"][0]["diagnostics"], resp.get_json()


def test_consultation_steps_reach_a_rest_hook_once_each_in_order(net: Net, receiver: Receiver) -> None:
    n = net
    sub = _subscribe(n, "a-doc", topic_subscription(receiver.url, f"Task?requester=Organization/{A}"))
    task_id, _ = consultation(n)
    _move(n, "p-sched", task_id, "pre-reviewed")
    _move(n, "b-expert", task_id, "accepted")
    note = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    note["note"] = [{"text": "a note is not a step"}]
    assert n.call("a-doc", "PUT", f"Task/{task_id}", note).status_code == 200
    receiver.failures = 1  # the subscriber is down for one attempt: the retry brings it
    _deliver(n)
    bundles = [r.json() for r in receiver.kept.values()]
    steps = []
    for bundle in bundles:
        status, task = bundle["entry"][0]["resource"], bundle["entry"][1]["resource"]
        params = {p["name"]: p for p in status["parameter"]}
        event = {p["name"]: p for p in params["notification-event"]["part"]}
        assert params["topic"]["valueCanonical"] == CONSULTATION and bundle["type"] == "history"
        assert params["subscription"]["valueReference"]["reference"].endswith(f"Subscription/{sub['id']}")
        assert event["focus"]["valueReference"]["reference"].endswith(f"Task/{task_id}")
        steps.append((int(event["event-number"]["valueString"]), task["businessStatus"]["coding"][0]["code"]))
    assert sorted(steps) == [(1, "applied"), (2, "pre-reviewed"), (3, "accepted")]
    assert len(receiver.requests) == 5  # the handshake, one refused, then each of the three once
    for key, received in receiver.kept.items():
        assert received.json()["id"] == key  # the Bundle's id is the idempotency key
    n.call("a-doc", "DELETE", f"Subscription/{sub['id']}")


def test_an_institution_is_told_only_of_what_it_may_see(net: Net, receiver: Receiver) -> None:
    n = net
    classic = classic_subscription(receiver.url, "Task?")
    sub = n.post("b-admin", classic)
    # the platform subscribes with the same criteria: one shared search, each told what it may see
    own = n.post("plat", {**classic, "channel": {**classic["channel"], "endpoint": receiver.url + "/a"}})
    shared, _ = consultation(n)  # A's request to B: B sees its Task
    private = n.post("a-doc", {"resourceType": "Task", "status": "requested", "intent": "order",
                               "description": "A's own work"})["id"]  # fmt: skip
    _deliver(n)
    puts = {(r.method, r.path) for r in receiver.kept.values()}
    assert ("PUT", f"/hook/Task/{shared}") in puts  # R4 rest-hook with a payload: the resource is PUT
    assert ("PUT", f"/hook/Task/{private}") not in puts
    assert {("PUT", f"/hook/a/Task/{shared}"), ("PUT", f"/hook/a/Task/{private}")} <= puts  # the platform's: all
    n.call("b-admin", "DELETE", f"Subscription/{sub['id']}")
    n.call("plat", "DELETE", f"Subscription/{own['id']}")


def test_after_three_retries_the_sender_is_told(net: Net, receiver: Receiver) -> None:
    n = net
    sub = _subscribe(n, "b-admin", topic_subscription(receiver.url, f"Task?owner=Organization/{B}"))
    receiver.failures = 10**6  # the subscriber goes down
    task_id, _ = consultation(n)  # A's change: A is the sender to tell
    _deliver(n)
    stored = n.call("b-admin", "GET", f"Subscription/{sub['id']}").get_json()
    assert stored["status"] == "error" and "after 4 attempts" in stored["error"]
    [notice] = _notices(n, task_id)
    assert notice["recipient"] == [{"reference": f"Organization/{A}"}]
    assert "通知发送失败" in notice["payload"][0]["contentString"]
    task = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    assert "通知发送失败" in task["note"][-1]["text"]
    _deliver(n)  # the notice's own writes announce nothing: no second round of failures
    assert len(_notices(n, task_id)) == 1
    status = n.call("b-admin", "GET", f"Subscription/{sub['id']}/$status").get_json()
    params = {p["name"]: p for p in status["entry"][0]["resource"]["parameter"]}
    assert params["status"]["valueCode"] == "error" and params["events-since-subscription-start"]["valueString"] == "1"


def _notices(n: Net, task_id: str) -> list[dict[str, Any]]:
    """The failure notices A received about a Task (R4 Communication has no ``about`` parameter)."""
    found = n.call("a-doc", "GET", f"Communication?recipient=Organization/{A}&_count=500").get_json()
    return [
        e["resource"]
        for e in found.get("entry", [])
        if e["resource"].get("about") == [{"reference": f"Task/{task_id}"}]
    ]


def test_amqp_messages_wait_in_the_broker_for_a_consumer_that_is_away(net: Net) -> None:
    n = net
    exchange, key = f"telefhir-test-{uuid.uuid4().hex[:8]}", f"consultations.{uuid.uuid4().hex[:6]}"
    connection = pika.BlockingConnection(pika.URLParameters(AMQP_URL))
    channel = connection.channel()
    channel.exchange_declare(exchange=exchange, exchange_type="topic", durable=True)
    queue = channel.queue_declare(queue="", exclusive=False, auto_delete=False).method.queue
    channel.queue_bind(queue=queue, exchange=exchange, routing_key=key)
    try:
        sub = _subscribe(n, "a-doc", topic_subscription(f"amqp:///{exchange}/{key}", f"Task?requester=Organization/{A}",
                                                        channel="amqp", content="id-only"))  # fmt: skip
        [(_, handshake)] = consume(channel, queue, 1)
        assert notification_type(handshake) == "handshake"
        task_id, _ = consultation(n)
        _move(n, "p-sched", task_id, "pre-reviewed")
        _deliver(n)  # nobody consumes yet: the broker keeps them
        messages = consume(channel, queue, 2)
        assert len(messages) == 2
        numbers = []
        for props, bundle in messages:
            assert props.message_id == bundle["id"] and props.delivery_mode == 2
            numbers.append(event_number(bundle))
            assert len(bundle["entry"]) == 1  # id-only: no resource
        assert sorted(numbers) == [1, 2]
        events = n.call("a-doc", "GET", f"Subscription/{sub['id']}/$events?eventsSinceNumber=2&content=full-resource")
        bundle = events.get_json()
        assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Parameters", "Task"]
        assert bundle["entry"][1]["resource"]["businessStatus"]["coding"][0]["code"] == "pre-reviewed"
        assert STATUS in json.dumps(bundle)
        n.call("a-doc", "DELETE", f"Subscription/{sub['id']}")
    finally:
        channel.queue_delete(queue=queue)
        channel.exchange_delete(exchange=exchange)
        connection.close()


def _heartbeat_rows(n: Net, sub_id: str) -> int:
    from sqlalchemy import func, select

    from fhir_server.storage.schema import subscription_outbox as O

    with n.services.repo.engine.connect() as conn:
        query = select(func.count()).where(O.c.subscription == sub_id, O.c.kind == "heartbeat")
        return int(conn.execute(query).scalar_one())


OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB_ONLY = f"system/Observation.rs?category={OBSERVATION_CATEGORY}|laboratory"
ACCESS_URL = "http://fhir.telefhir.cn/StructureDefinition/subscription-access"


def _client_token(n: Net, client_id: str, scope: str) -> None:
    security = n.services.security
    security.clients.save(client_id, secret="s3cret-s3cret", organization=f"Organization/{A}", scope=scope)
    n.tokens[client_id] = security.tokens.issue(security.clients.get(client_id), scope)


def _observation(patient: str, category: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": category}]}],
        "code": {"text": category},
        "subject": {"reference": f"Patient/{patient}"},
    }


def test_a_subscription_tells_only_what_its_writers_scopes_allow(net: Net, receiver: Receiver) -> None:
    n = net
    _client_token(n, "a-lab", f"{LAB_ONLY} system/Patient.rs system/Subscription.cruds")
    classic = classic_subscription(receiver.url, "Observation?status=final")
    # a client cannot choose the access it notifies with: the server puts the writer's
    classic["extension"] = [{"url": ACCESS_URL, "valueString": '{"organization": null}'}]
    sub = n.post("a-lab", classic)
    (recorded,) = [e for e in sub["extension"] if e["url"] == ACCESS_URL]
    basis = json.loads(recorded["valueString"])
    assert basis["organization"] == f"Organization/{A}" and LAB_ONLY in basis["scope"]
    # the platform's update (or the server's own) keeps the writer's access, whatever it sends
    unextended = {k: v for k, v in sub.items() if k != "extension"}
    replaced = n.call("plat", "PUT", f"Subscription/{sub['id']}", unextended)
    assert replaced.status_code == 200 and replaced.get_json()["extension"] == [recorded]

    patient = n.post("plat", {"resourceType": "Patient", "managingOrganization": {"reference": f"Organization/{A}"}})
    lab = n.post("plat", _observation(patient["id"], "laboratory"))["id"]
    vital = n.post("plat", _observation(patient["id"], "vital-signs"))["id"]
    _deliver(n)
    told = [(r.method, r.path) for r in receiver.kept.values() if r.headers.get("X-Subscription-Id") == sub["id"]]
    # one notification, the laboratory result's: A's system sees the vital signs, this token does not
    assert told == [("PUT", f"/hook/Observation/{lab}")], (told, vital)
    n.call("plat", "DELETE", f"Subscription/{sub['id']}")


def test_a_subscription_to_what_its_writer_may_not_read_is_refused(net: Net, receiver: Receiver) -> None:
    n = net
    _client_token(n, "a-patients", "system/Patient.rs system/Subscription.cruds")
    classic = classic_subscription(receiver.url, "Observation?status=final")
    refused = n.call("a-patients", "POST", "Subscription", classic)
    assert refused.status_code == 403 and "system/Observation.rs" in refused.get_json()["issue"][0]["diagnostics"]
    diagnoses = {**classic, "criteria": "Condition?"}  # an administrator reads no diagnoses
    by_role = n.call("b-admin", "POST", "Subscription", diagnoses)
    assert by_role.status_code == 403 and "do not read Condition" in by_role.get_json()["issue"][0]["diagnostics"]
    assert n.call("a-patients", "POST", "Subscription", {**classic, "criteria": "Patient?"}).status_code == 201
