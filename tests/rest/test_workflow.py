"""The consultation Task's state machine on every write path, who may take each step, the record of
each step, and consultation numbers (issue 6, items 1 and 6). In-process, SQLite and PostgreSQL,
with real tokens of three institutions: the requester A, the invited B and the platform P."""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator

import pytest

from tests.rest.workflow_network import NUMBER, A, B, Net, consultation, evaluation, network


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory)


def test_requests_get_unique_human_readable_numbers(net: Net) -> None:
    _, first = consultation(net)
    _, second = consultation(net)
    numbers = [next(i["value"] for i in sr["identifier"] if i["system"] == NUMBER) for sr in (first, second)]
    assert all(re.fullmatch(r"HZ-20\d\d-\d{6}", number) for number in numbers), numbers
    assert int(numbers[1][-6:]) == int(numbers[0][-6:]) + 1


def test_the_consultation_chain_with_who_may_take_each_step(net: Net) -> None:
    n = net
    task_id, _ = consultation(n)
    refused = n.move("b-expert", task_id, "accepted")
    assert refused.status_code == 409
    text = refused.get_json()["issue"][0]["diagnostics"]
    assert "pre-reviewed (by the platform)" in text and "cancelled (by the requester)" in text
    assert n.move("a-doc", task_id, "pre-reviewed").status_code == 403  # only the platform pre-reviews
    reviewed = n.move("p-sched", task_id, "pre-reviewed")
    assert reviewed.status_code == 200, reviewed.get_json()
    accepted = n.move("b-expert", task_id, "accepted", requester={"reference": f"Organization/{B}"})
    assert accepted.status_code == 200, accepted.get_json()
    stored = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    assert stored["requester"]["reference"] == f"Organization/{A}"  # B changes the progress only
    assert stored["for"]["display"] == "王秀英"  # not B's de-identified view written back
    assert n.move("a-doc", task_id, "scheduled").status_code == 403  # the performer schedules
    assert n.move("b-expert", task_id, "published").status_code == 409
    patch = [{"op": "replace", "path": "/businessStatus/coding/0/code", "value": "scheduled"},
             {"op": "replace", "path": "/status", "value": "ready"}]  # fmt: skip
    resp = n.call("b-expert", "PATCH", f"Task/{task_id}", patch, **{"Content-Type": "application/json-patch+json"})
    assert resp.status_code == 200, resp.get_json()
    for step in ("in-progress", "reported", "reviewed", "published"):
        assert n.move("b-expert", task_id, step).status_code == 200, step
    assert n.move("b-expert", task_id, "evaluated").status_code == 403  # the requester evaluates
    bare = n.move("a-doc", task_id, "evaluated")  # an evaluation is data, not just a status
    assert bare.status_code == 422 and "carries the evaluation" in bare.get_json()["issue"][0]["diagnostics"]
    subject = n.call("a-doc", "GET", f"Task/{task_id}").get_json()["for"]
    assert n.move("a-doc", task_id, "evaluated", output=[evaluation(n, "a-doc", subject)]).status_code == 200
    final = n.move("a-doc", task_id, "cancelled")
    assert final.status_code == 409 and "none: it is final" in final.get_json()["issue"][0]["diagnostics"]
    provenance = n.call("a-doc", "GET", f"Provenance?target=Task/{task_id}&_count=50").get_json()
    activities = sorted(e["resource"]["activity"]["coding"][0]["code"] for e in provenance.get("entry", []))
    assert activities == sorted(["applied", "pre-reviewed", "accepted", "scheduled", "in-progress", "reported",
                                 "reviewed", "published", "evaluated"])  # fmt: skip
    history = n.call("a-doc", "GET", f"Task/{task_id}/_history").get_json()
    assert len(history["entry"]) == 9  # every step is a version of the Task


def test_an_offline_consultation_has_no_session_to_schedule(net: Net) -> None:
    n = net
    online, _ = consultation(n)
    offline, request = consultation(n, "teleconsultation-offline")
    assert request["identifier"][-1]["value"].startswith("HZ-")
    for task_id in (online, offline):
        assert n.move("p-sched", task_id, "pre-reviewed").status_code == 200
        assert n.move("b-expert", task_id, "accepted").status_code == 200
    refused = n.move("b-expert", online, "in-progress")  # a live consultation is scheduled first
    assert refused.status_code == 409 and "scheduled (by the" in refused.get_json()["issue"][0]["diagnostics"]
    assert n.move("a-doc", offline, "in-progress").status_code == 403  # the experts take it up
    assert n.move("b-expert", offline, "in-progress").status_code == 200
    for step in ("reported", "reviewed", "published"):
        assert n.move("b-expert", offline, step).status_code == 200, step


def test_every_write_path_is_judged(net: Net) -> None:
    n = net
    task_id, _ = consultation(n)
    task = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    task["businessStatus"]["coding"][0]["code"], task["status"] = "published", "completed"
    bundle = {"resourceType": "Bundle", "type": "transaction",
              "entry": [{"resource": task, "request": {"method": "PUT", "url": f"Task/{task_id}"}}]}  # fmt: skip
    assert n.call("a-doc", "POST", "", bundle).status_code == 409
    cond = copy.deepcopy(task)
    cond.pop("id")
    assert n.call("a-doc", "PUT", f"Task?_id={task_id}", cond | {"id": task_id}).status_code == 409
    assert n.move("a-doc", task_id, "applied").status_code == 200  # no step: an ordinary update
    rejected = n.move("p-sched", task_id, "rejected")
    assert rejected.status_code == 422  # a rejection needs its reason (cn-task-2)
    reason = {"text": "病历资料不全 incomplete records"}
    assert n.move("p-sched", task_id, "rejected", statusReason=reason).status_code == 200


def test_an_institution_starts_a_task_at_applied(net: Net) -> None:
    n = net
    task_id, _ = consultation(n)
    task = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    task.pop("id")
    task["businessStatus"]["coding"][0]["code"], task["status"] = "scheduled", "ready"
    resp = n.call("a-doc", "POST", "Task", task)
    assert resp.status_code == 409 and "starts at" in resp.get_json()["issue"][0]["diagnostics"]
    assert n.call("plat", "POST", "Task", task).status_code == 201  # the platform's own clients may (demo data)
