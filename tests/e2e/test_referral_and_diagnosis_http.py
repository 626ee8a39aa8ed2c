"""A two-way referral and a TCM constitution diagnosis over HTTP (issue 6: "end-to-end scenarios
over HTTP with real clients, on SQLite and PostgreSQL").

Why this exists beside tests/rest/test_referral.py and tests/rest/test_tcm_diagnosis.py: those run
in-process, through Flask's test client, with tokens the test mints by calling the token service
directly. Here the same scenarios, with the same assertions, run against ``fhir-server serve``
started as a user would (auth on, two worker processes), its institutions, OAuth clients and
people registered with the ``fhir-server`` CLI, the people signing in through the login page with
a SMART app (authorization code + PKCE) and acting with their bearer tokens over real sockets
(requests sessions, fhirpy's SyncFHIRClient for the reads). What the in-process tests cannot see —
the OAuth flows, the login page, JSON over the wire, one worker writing and the other reading —
is in the path of every step.

The scenarios (the referral's: issue 6, item 4, R9; the diagnosis': item 3): the clinic A refers a
patient up to the hospital B, which accepts directly, admits, and writes the discharge summary A
then reads; B refers the patient back down, A accepts and B may not schedule it; a refusal needs
its reason, and only the sender cancels; A asks B for a constitution diagnosis, B scores the
questionnaire with ``$assess-constitution`` for the request and the finding reaches A, B's
questionnaire itself not; and every step the machine does not have, tried from each state, is
refused without changing the Task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.conftest import fresh_database
from tests.e2e.institutions import Network, two_institutions
from tests.rest.workflow_network import (
    NUMBER,
    TASK_STATUS,
    consent,
    diagnosis_request,
    discharge_summary,
    evaluation,
    example,
    referral,
    stepped,
)

USERS = (("a-doc", "a", "requesting-doctor"), ("b-expert", "b", "expert"))
DISCHARGE = "http://loinc.org|18842-5"


class Http:
    """The in-process tests' ``Net`` (tests/rest/workflow_network.py) over HTTP: the same
    ``call``, ``post`` and ``move``, each request sent with the signed-in person's token."""

    def __init__(self, net: Network) -> None:
        self.net = net
        self.a, self.b = net.a, net.b

    def call(self, who: str, method: str, path: str, body: Any = None) -> requests.Response:
        return self.net.call(who, method, path, body)

    def post(self, who: str, resource: dict[str, Any]) -> dict[str, Any]:
        resp = self.call(who, "POST", resource["resourceType"], resource)
        assert resp.status_code == 201, resp.text
        created: dict[str, Any] = resp.json()
        return created

    def move(self, who: str, task_id: str, business: str, **extra: Any) -> requests.Response:
        """Read the Task, set its business status (and the Task.status that goes with it) and PUT it."""
        got = self.call(who, "GET", f"Task/{task_id}")
        assert got.status_code == 200, got.text
        return self.call(who, "PUT", f"Task/{task_id}", stepped(got.json(), business, **extra))


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def http(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Http]:
    """One server per database, A's requesting doctor and B's expert signed in through the login page."""
    with pytest.MonkeyPatch.context() as env:
        # tests/conftest.py allows OAuth over plain HTTP on loopback per test; the sign-in is here
        env.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
        env.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
        with fresh_database(request.param, tmp_path_factory) as url:
            data = tmp_path_factory.mktemp(f"referral-diagnosis-{request.param}")
            with two_institutions(url, data, USERS) as net:
                for username, *_ in USERS:
                    net.sessions[username] = net.user_session(username)
                yield Http(net)


def _patient(n: Http, family: str, gender: str, **extra: Any) -> str:
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": family}], "gender": gender, **extra})
    return str(patient["id"])


def _business_status(task: dict[str, Any]) -> str:
    return str(task["businessStatus"]["coding"][0]["code"])


def _refused(resp: requests.Response, status: int, why: str) -> None:
    """``resp`` is ``status`` and an error of its OperationOutcome says ``why`` (not another refusal)."""
    assert resp.status_code == status, resp.text
    errors = [i.get("diagnostics", "") for i in resp.json()["issue"] if i["severity"] in ("error", "fatal")]
    assert any(why in e for e in errors), errors


def test_a_referral_up_and_back_down_with_the_discharge_summary(http: Http) -> None:
    n = http
    patient = _patient(n, "Zhao", "male")
    n.post("a-doc", consent(patient, n.a, n.b))
    up, up_task = referral(n, "a-doc", n.a, n.b, patient, "referral-up")
    assert any(i["system"] == NUMBER and i["value"].startswith("ZZ-") for i in up["identifier"])
    for step in ("accepted", "scheduled", "in-progress"):  # accepted directly (no pre-review), admitted
        moved = n.move("b-expert", up_task["id"], step)
        assert moved.status_code == 200, (step, moved.text)
        assert _business_status(moved.json()) == step
    summary = n.post("b-expert", discharge_summary(patient, up, n.b))
    # the discharge information goes back to the sender, read with a FHIR client
    found = n.net.fhirpy("a-doc").resources("Composition").search(subject=f"Patient/{patient}", type=DISCHARGE)
    assert [c.id for c in found.fetch_all()] == [summary["id"]]
    reported = n.move("b-expert", up_task["id"], "reported")
    assert reported.status_code == 200, reported.text

    down, down_task = referral(n, "b-expert", n.b, n.a, patient, "referral-down")
    assert down["code"]["coding"][0]["code"] == "referral-down"
    received = n.net.fhirpy("a-doc").reference("ServiceRequest", down["id"]).to_resource()  # A receives it
    assert received["subject"]["reference"] == f"Patient/{patient}"
    accepted = n.move("a-doc", down_task["id"], "accepted")
    assert accepted.status_code == 200, accepted.text
    # the receiver schedules, not the sender
    _refused(n.move("b-expert", down_task["id"], "scheduled"), 403, "only the performer or platform may")
    assert _business_status(n.call("a-doc", "GET", f"Task/{down_task['id']}").json()) == "accepted"


def test_a_refused_referral_says_why_and_only_the_sender_cancels(http: Http) -> None:
    n = http
    patient = _patient(n, "Qian", "female")
    n.post("a-doc", consent(patient, n.b))
    _, task = referral(n, "a-doc", n.a, n.b, patient, "referral-up")
    _refused(n.move("b-expert", task["id"], "rejected"), 422, "cn-task-2")  # a refusal carries its reason
    refused = n.move("b-expert", task["id"], "rejected", statusReason={"text": "床位已满 No bed available"})
    assert refused.status_code == 200, refused.text
    stored = n.net.fhirpy("a-doc").reference("Task", task["id"]).to_resource()
    assert stored["statusReason"]["text"] == "床位已满 No bed available" and stored["status"] == "rejected"
    _, again = referral(n, "a-doc", n.a, n.b, patient, "referral-up")  # re-referred
    _refused(n.move("b-expert", again["id"], "cancelled"), 403, "only the requester may")
    cancelled = n.move("a-doc", again["id"], "cancelled")
    assert cancelled.status_code == 200, cancelled.text
    assert _business_status(n.call("a-doc", "GET", f"Task/{again['id']}").json()) == "cancelled"


def test_a_constitution_diagnosis_goes_back_to_the_requester(http: Http) -> None:
    n = http
    patient = _patient(n, "Sun", "female", birthDate="1970-04-02")
    n.post("a-doc", consent(patient, n.b))
    sr, task = diagnosis_request(n, "a-doc", n.a, n.b, patient)
    assert sr["identifier"][-1]["value"].startswith("ZD-")  # a diagnosis request's number
    for step in ("accepted", "scheduled", "in-progress"):  # no pre-review for a diagnosis request
        moved = n.move("b-expert", task["id"], step)
        assert moved.status_code == 200, (step, moved.text)

    questionnaire = example("qr-ccmq-2009-example")
    questionnaire.pop("id")
    questionnaire["subject"] = {"reference": f"Patient/{patient}"}
    questionnaire["basedOn"] = [{"reference": f"ServiceRequest/{sr['id']}"}]
    scored = n.call("b-expert", "POST", "QuestionnaireResponse/$assess-constitution?persist=true", questionnaire)
    assert scored.status_code == 201, scored.text
    finding = scored.json()
    assert finding["resourceType"] == "Observation"
    assert finding["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    reported = n.move("b-expert", task["id"], "reported")
    assert reported.status_code == 200, reported.text

    a = n.net.fhirpy("a-doc")
    [result] = a.resources("Observation").search(**{"based-on": f"ServiceRequest/{sr['id']}"}).fetch_all()
    assert result.id == finding["id"] and len(result["component"]) == 9
    # B's questionnaire itself is its own clinical record: not shared back
    assert a.resources("QuestionnaireResponse").search(subject=f"Patient/{patient}").fetch_all() == []
    assert n.net.fhirpy("b-expert").resources("QuestionnaireResponse").search(subject=f"Patient/{patient}").fetch_all()


def test_every_step_the_machine_does_not_have_is_refused_and_changes_nothing(http: Http) -> None:
    """Issue 6: "every invalid transition rejected" — from each state of a diagnosis request on its
    way to evaluated, every other business status is tried over HTTP: the steps the machine does not
    have are 409 naming the allowed ones, a step of the other party is 403, and neither changes the
    Task."""
    from fhir_server.workflow import machine as m

    n = http
    patient = _patient(n, "Feng", "male")
    n.post("a-doc", consent(patient, n.b))
    _, task = diagnosis_request(n, "a-doc", n.a, n.b, patient)
    parties = {"b-expert": m.PERFORMER, "a-doc": m.REQUESTER}
    path = ("applied", "accepted", "scheduled", "in-progress", "reported", "reviewed", "published", "evaluated")
    tried = 0
    for here, following in zip(path, path[1:] + (None,), strict=True):
        steps = m.transitions("diagnosis", here)
        for target in sorted(set(TASK_STATUS) - {here}):
            for who, party in parties.items():
                if target in steps and party in steps[target]:
                    continue  # a step this party may take
                resp = n.move(who, task["id"], target, statusReason={"text": "why"})
                expected = 403 if target in steps else 409
                assert resp.status_code == expected, (here, target, who, resp.text)
                if expected == 409:
                    assert m.describe(steps) in resp.json()["issue"][0]["diagnostics"]
                tried += 1
        assert _business_status(n.call("a-doc", "GET", f"Task/{task['id']}").json()) == here  # unchanged
        if following == "evaluated":
            subject = n.call("a-doc", "GET", f"Task/{task['id']}").json()["for"]
            moved = n.move("a-doc", task["id"], following, output=[evaluation(n, "a-doc", subject)])
        elif following is not None:
            moved = n.move("b-expert", task["id"], following)
        else:
            break
        assert moved.status_code == 200, (following, moved.text)
    assert tried > 100
