"""The consultation Task's state machine on every write path, who may take each step, the record of
each step, and consultation numbers (issue 6, items 1 and 6). In-process, SQLite and PostgreSQL,
with real tokens of three institutions: the requester A, the invited B and the platform P."""

from __future__ import annotations

import copy
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import fresh_database

A, B, P = "wf-a", "wf-b", "wf-p"
EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "examples"
STATUS = "http://fhir.telefhir.cn/CodeSystem/consultation-task-status"
NUMBER = "http://fhir.telefhir.cn/sid/consultation-number"
PASSWORD = "Str0ng-passw0rd!"
CONSENT_SCOPE = "http://terminology.hl7.org/CodeSystem/consentscope"
TASK_STATUS = {"applied": "requested", "pre-reviewed": "received", "accepted": "accepted", "rejected": "rejected",
               "scheduled": "ready", "in-progress": "in-progress", "reported": "in-progress",
               "reviewed": "in-progress", "published": "completed", "evaluated": "completed",
               "cancelled": "cancelled"}  # fmt: skip


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text("utf-8"))


class Net:
    def __init__(self, client: Any, services: Any) -> None:
        self.client, self.services = client, services
        self.tokens: dict[str, str] = {}

    def call(self, who: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
        return self.client.open(
            f"/fhir/{path}",
            method=method,
            json=body,
            headers={"Authorization": f"Bearer {self.tokens[who]}", **headers},
        )

    def post(self, who: str, resource: dict[str, Any]) -> dict[str, Any]:
        resp = self.call(who, "POST", resource["resourceType"], resource)
        assert resp.status_code == 201, [i["diagnostics"] for i in resp.get_json()["issue"] if i["severity"] == "error"]
        return resp.get_json()

    def move(self, who: str, task_id: str, business: str, **extra: Any) -> Any:
        task = self.call(who, "GET", f"Task/{task_id}").get_json()
        task["businessStatus"] = {"coding": [{"system": STATUS, "code": business}]}
        task["status"] = TASK_STATUS[business]
        task.update(extra)
        return self.call(who, "PUT", f"Task/{task_id}", task)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    from fhir_server.app import build_services, create_app
    from fhir_server.config import Settings
    from fhir_server.security.authcode import AccountUser

    with fresh_database(request.param, tmp_path_factory) as url:
        settings = Settings(
            database_url=url,
            data_dir=tmp_path_factory.mktemp("workflow"),
            base_url="http://testserver/fhir",
            audit=False,
            platform_organization=f"Organization/{P}",
        )
        services = build_services(settings)
        security = services.security
        security.clients.save("plat", secret="s3cret-s3cret")
        users = (
            ("a-doc", A, "requesting-doctor"),
            ("b-expert", B, "expert"),
            ("b-admin", B, "participating-institution-admin"),
            ("p-sched", P, "scheduler"),
        )
        for username, org, role in users:
            security.users.create(username, PASSWORD, organization=f"Organization/{org}", roles=(role,),
                                  fhir_user=f"Practitioner/{username}")  # fmt: skip
        n = Net(create_app(settings, services).test_client(), services)
        plat = security.clients.get("plat")
        n.tokens["plat"] = security.tokens.issue(plat, "system/*.*")
        for username, *_ in users:
            n.tokens[username] = security.tokens.issue(
                plat, "user/*.cruds", user=AccountUser(security.users.get(username))
            )
        for org in (A, B, P):
            assert (
                n.call(
                    "plat", "PUT", f"Organization/{org}", {"resourceType": "Organization", "id": org, "name": org}
                ).status_code
                == 201
            )
        yield n
        services.repo.engine.dispose()


def _consultation(n: Net) -> tuple[str, dict[str, Any]]:
    """A patient of A with consent, A's consultation request to B and its Task at 'applied'."""
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Wang"}], "gender": "female"})
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient['id']}"},
        "provision": {"type": "deny", "provision": [
            {"type": "permit", "action": [{"coding": [{"code": "collect"}]}]},
            {"type": "permit", "action": [{"coding": [{"code": "disclose"}]}],
             "actor": [{"role": {"text": "recipient"}, "reference": {"reference": f"Organization/{B}"}}]},
        ]},
    }  # fmt: skip
    n.post("a-doc", consent)
    request = _example("consultation-request-example")
    for key in ("id", "identifier", "supportingInfo"):
        request.pop(key)
    request["subject"] = {"reference": f"Patient/{patient['id']}"}
    request["requester"] = {"reference": f"Organization/{A}"}
    request["performer"] = [{"reference": f"Organization/{B}"}]
    request["code"]["coding"][0].update(code="teleconsultation-online", display="实时远程会诊")
    sr = n.post("a-doc", request)
    task = _example("consultation-task-example")
    task.pop("id")
    task.update(
        status="requested",
        businessStatus={"coding": [{"system": STATUS, "code": "applied"}]},
        basedOn=[{"reference": f"ServiceRequest/{sr['id']}"}],
        focus={"reference": f"ServiceRequest/{sr['id']}"},
        owner={"reference": f"Organization/{B}"},
        requester={"reference": f"Organization/{A}"},
        code=request["code"],
    )
    task["for"] = {"reference": f"Patient/{patient['id']}", "display": "王秀英"}
    return n.post("a-doc", task)["id"], sr


def test_requests_get_unique_human_readable_numbers(net: Net) -> None:
    _, first = _consultation(net)
    _, second = _consultation(net)
    numbers = [next(i["value"] for i in sr["identifier"] if i["system"] == NUMBER) for sr in (first, second)]
    assert all(re.fullmatch(r"HZ-20\d\d-\d{6}", number) for number in numbers), numbers
    assert int(numbers[1][-6:]) == int(numbers[0][-6:]) + 1


def test_the_consultation_chain_with_who_may_take_each_step(net: Net) -> None:
    n = net
    task_id, _ = _consultation(n)
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
    assert n.move("a-doc", task_id, "evaluated").status_code == 200
    final = n.move("a-doc", task_id, "cancelled")
    assert final.status_code == 409 and "none: it is final" in final.get_json()["issue"][0]["diagnostics"]
    provenance = n.call("a-doc", "GET", f"Provenance?target=Task/{task_id}&_count=50").get_json()
    activities = sorted(e["resource"]["activity"]["coding"][0]["code"] for e in provenance.get("entry", []))
    assert activities == sorted(["applied", "pre-reviewed", "accepted", "scheduled", "in-progress", "reported",
                                 "reviewed", "published", "evaluated"])  # fmt: skip
    history = n.call("a-doc", "GET", f"Task/{task_id}/_history").get_json()
    assert len(history["entry"]) == 9  # every step is a version of the Task


def test_every_write_path_is_judged(net: Net) -> None:
    n = net
    task_id, _ = _consultation(n)
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
    task_id, _ = _consultation(n)
    task = n.call("a-doc", "GET", f"Task/{task_id}").get_json()
    task.pop("id")
    task["businessStatus"]["coding"][0]["code"], task["status"] = "scheduled", "ready"
    resp = n.call("a-doc", "POST", "Task", task)
    assert resp.status_code == 409 and "starts at" in resp.get_json()["issue"][0]["diagnostics"]
    assert n.call("plat", "POST", "Task", task).status_code == 201  # the platform's own clients may (demo data)
