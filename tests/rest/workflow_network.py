"""A network of three institutions for the workflow tests: the requester A, the invited B and the
platform P, with people of each holding real tokens, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import pathlib
import threading
from collections.abc import Callable, Iterator
from typing import Any, Protocol

import pytest

from tests.conftest import in_process

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


def example(name: str) -> dict[str, Any]:
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

    def join(self, org: str, username: str, role: str) -> None:
        """Another institution ``org`` on the network, with ``username`` holding ``role`` there."""
        from fhir_server.security.authcode import AccountUser

        security = self.services.security
        organization = {"resourceType": "Organization", "id": org, "name": org}
        assert self.call("plat", "PUT", f"Organization/{org}", organization).status_code == 201
        security.users.create(username, PASSWORD, organization=f"Organization/{org}", roles=(role,),
                              fhir_user=f"Practitioner/{username}")  # fmt: skip
        user = AccountUser(security.users.get(username))
        self.tokens[username] = security.tokens.issue(security.clients.get("plat"), "user/*.cruds", user=user)

    def move(self, who: str, task_id: str, business: str, **extra: Any) -> Any:
        task = self.call(who, "GET", f"Task/{task_id}").get_json()
        return self.call(who, "PUT", f"Task/{task_id}", stepped(task, business, **extra))


def stepped(task: dict[str, Any], business: str, **extra: Any) -> dict[str, Any]:
    """``task`` moved to ``business`` (and the Task.status that goes with it), ``extra`` set."""
    task["businessStatus"] = {"coding": [{"system": STATUS, "code": business}]}
    task["status"] = TASK_STATUS[business]
    task.update(extra)
    return task


def network(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    joined: tuple[tuple[str, str, str], ...] = (),
    **settings: Any,
) -> Iterator[Net]:
    from fhir_server.security.authcode import AccountUser

    with in_process(
        request.param, tmp_path_factory, "workflow", platform_organization=f"Organization/{P}", **settings
    ) as (services, _settings, client):
        security = services.security
        security.clients.save("plat", secret="s3cret-s3cret")
        users = (
            ("a-doc", A, "requesting-doctor"),
            ("b-expert", B, "expert"),
            ("b-admin", B, "participating-institution-admin"),
            ("b-sched", B, "scheduler"),
            ("p-sched", P, "scheduler"),
        )
        for username, org, role in users:
            security.users.create(username, PASSWORD, organization=f"Organization/{org}", roles=(role,),
                                  fhir_user=f"Practitioner/{username}")  # fmt: skip
        n = Net(client, services)
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
        for org, username, role in joined:  # more institutions, each with one person
            n.join(org, username, role)
        yield n


def consent(patient: str, *disclose_to: str) -> dict[str, Any]:
    """The patient's consent to collection, and to disclosure to the institutions named."""
    permits = [
        {"type": "permit", "action": [{"coding": [{"code": "disclose"}]}],
         "actor": [{"role": {"text": "recipient"}, "reference": {"reference": f"Organization/{org}"}}]}
        for org in disclose_to
    ]  # fmt: skip
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {"coding": [{"system": CONSENT_SCOPE, "code": "patient-privacy"}]},
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {"type": "deny", "provision": [
            {"type": "permit", "action": [{"coding": [{"code": "collect"}]}]}, *permits]},
    }  # fmt: skip


def consultation(n: Net, code: str = "teleconsultation-online") -> tuple[str, dict[str, Any]]:
    """A patient of A with consent, A's consultation request to B (online, or ``code``) and its
    Task at 'applied'."""
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Wang"}], "gender": "female"})
    n.post("a-doc", consent(patient["id"], B))
    request = example("consultation-request-example")
    for key in ("id", "identifier", "supportingInfo"):
        request.pop(key)
    request["subject"] = {"reference": f"Patient/{patient['id']}"}
    request["requester"] = {"reference": f"Organization/{A}"}
    request["performer"] = [{"reference": f"Organization/{B}"}]
    request["code"]["coding"][0].update(
        code=code, display={"teleconsultation-offline": "离线远程会诊"}.get(code, "实时远程会诊")
    )
    sr = n.post("a-doc", request)
    task = example("consultation-task-example")
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


WORKFLOW = "http://fhir.telefhir.cn/CodeSystem/consultation-workflow"


def evaluation(n: Poster, who: str, subject: dict[str, Any], rating: int = 4) -> dict[str, Any]:
    """The requester's evaluation stored (a QuestionnaireResponse), as the Task output that names it."""
    answers = {"satisfaction": {"valueInteger": 5}, "rating": {"valueInteger": rating},
               "concordance": {"valueCoding": {"system": WORKFLOW, "code": "concordant"}}}  # fmt: skip
    response = n.post(who, {
        "resourceType": "QuestionnaireResponse", "status": "completed", "subject": subject,
        "questionnaire": "http://fhir.telefhir.cn/Questionnaire/consultation-evaluation",
        "item": [{"linkId": link, "answer": [answer]} for link, answer in answers.items()],
    })  # fmt: skip
    return {"type": {"coding": [{"system": WORKFLOW, "code": "evaluation"}]},
            "valueReference": {"reference": f"QuestionnaireResponse/{response['id']}"}}  # fmt: skip


class Poster(Protocol):
    """A client that posts a resource as one of the network's people: ``Net`` in-process, or the
    end-to-end tests' HTTP client (tests/e2e/test_referral_and_diagnosis_http.py)."""

    def post(self, who: str, resource: dict[str, Any]) -> dict[str, Any]: ...


def requested(n: Poster, who: str, request: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Post ``request`` (a ServiceRequest to one performing institution) and its Task at 'applied'."""
    request["authoredOn"] = dt.datetime.now(dt.UTC).isoformat()
    sr = n.post(who, request)
    task = {
        "resourceType": "Task", "status": "requested", "intent": "order", "authoredOn": request["authoredOn"],
        "businessStatus": {"coding": [{"system": STATUS, "code": "applied"}]}, "code": request["code"],
        "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}], "focus": {"reference": f"ServiceRequest/{sr['id']}"},
        "for": request["subject"], "requester": request["requester"], "owner": request["performer"][0],
    }  # fmt: skip
    return sr, n.post(who, task)


def referral(
    n: Poster, who: str, sender: str, receiver: str, patient: str, direction: str, setting: str = "IMP"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A referral (``referral-up`` or ``referral-down``; inpatient ``IMP`` or outpatient ``AMB``)
    from ``sender`` to ``receiver`` and its Task."""
    request = example("referral-request-example")
    request["category"][1]["coding"][0].update(code=setting, display=None)
    del request["category"][1]["coding"][0]["display"], request["category"][1]["text"]
    for key in ("id", "identifier", "supportingInfo"):
        request.pop(key)
    request["code"]["coding"][0].update(
        code=direction, display={"referral-up": "上转", "referral-down": "下转"}[direction]
    )
    request["subject"] = {"reference": f"Patient/{patient}"}
    request["requester"] = {"reference": f"Organization/{sender}"}
    request["performer"] = [{"reference": f"Organization/{receiver}"}]
    return requested(n, who, request)


def diagnosis_request(
    n: Poster, who: str, requester: str, performer: str, patient: str, kind: str = "tcm-diagnosis-request"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """A diagnosis request (the packaged example of ``kind``) from ``requester`` and its Task."""
    request = example(f"{kind}-example")
    for key in ("id", "identifier", "supportingInfo"):
        request.pop(key, None)
    request.update(subject={"reference": f"Patient/{patient}"}, requester={"reference": f"Organization/{requester}"},
                   performer=[{"reference": f"Organization/{performer}"}])  # fmt: skip
    return requested(n, who, request)


def discharge_summary(patient: str, request: dict[str, Any], author: str) -> dict[str, Any]:
    """The receiving hospital's discharge summary (a Composition) for the referral ``request``."""
    return {
        "resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
        "subject": {"reference": f"Patient/{patient}"}, "date": dt.datetime.now(dt.UTC).isoformat(),
        "author": [{"reference": f"Organization/{author}"}], "title": "出院小结 Discharge summary",
        "event": [{"detail": [{"reference": f"ServiceRequest/{request['id']}"}]}],
        "section": [{"title": "出院医嘱 Discharge advice", "text": {"status": "generated",
                     "div": '<div xmlns="http://www.w3.org/1999/xhtml">回社区随访，两周后复查。</div>'}}],
    }  # fmt: skip


def concurrently(job: Callable[[], int], times: int = 4) -> list[int]:
    """What ``job`` returned in each of ``times`` threads run at once (workers looking together)."""
    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(job())) for _ in range(times)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results
