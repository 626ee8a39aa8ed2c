"""A two-way referral (issue 6, item 4; R9): the community clinic A refers a patient up to the
hospital B, which accepts directly (no pre-review), admits, and writes the discharge summary that
reaches A through the referral; B then refers the patient back down to A, which accepts; a
refusal carries its reason and cancelling is the sender's. In-process, SQLite and PostgreSQL, with
real tokens of each institution."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest

from tests.rest.workflow_network import STATUS, A, B, Net, consent, example, network

NUMBER = "http://fhir.telefhir.cn/sid/consultation-number"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory)


def _referral(n: Net, who: str, sender: str, receiver: str, patient: str, direction: str) -> tuple[dict, dict]:
    request = example("referral-request-example")
    for key in ("id", "identifier", "supportingInfo"):
        request.pop(key)
    request["code"]["coding"][0].update(
        code=direction, display={"referral-up": "上转", "referral-down": "下转"}[direction]
    )
    request["subject"] = {"reference": f"Patient/{patient}"}
    request["requester"] = {"reference": f"Organization/{sender}"}
    request["performer"] = [{"reference": f"Organization/{receiver}"}]
    request["authoredOn"] = dt.datetime.now(dt.UTC).isoformat()
    sr = n.post(who, request)
    task = {
        "resourceType": "Task", "status": "requested", "intent": "order",
        "businessStatus": {"coding": [{"system": STATUS, "code": "applied"}]},
        "code": request["code"], "basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}],
        "focus": {"reference": f"ServiceRequest/{sr['id']}"}, "for": request["subject"],
        "requester": request["requester"], "owner": {"reference": f"Organization/{receiver}"},
        "authoredOn": request["authoredOn"],
    }  # fmt: skip
    return sr, n.post(who, task)


def _discharge(patient: str, request: dict[str, Any]) -> dict[str, Any]:
    return {
        "resourceType": "Composition", "status": "final",
        "type": {"coding": [{"system": "http://loinc.org", "code": "18842-5", "display": "Discharge summary"}]},
        "subject": {"reference": f"Patient/{patient}"}, "date": dt.datetime.now(dt.UTC).isoformat(),
        "author": [{"reference": f"Organization/{B}"}], "title": "出院小结 Discharge summary",
        "event": [{"detail": [{"reference": f"ServiceRequest/{request['id']}"}]}],
        "section": [{"title": "出院医嘱 Discharge advice", "text": {"status": "generated",
                     "div": '<div xmlns="http://www.w3.org/1999/xhtml">回社区随访，两周后复查。</div>'}}],
    }  # fmt: skip


def test_a_referral_up_and_back_down_with_the_discharge_summary(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Zhao"}], "gender": "male"})["id"]
    n.post("a-doc", consent(patient, A, B))
    up, up_task = _referral(n, "a-doc", A, B, patient, "referral-up")
    assert any(i["system"] == NUMBER and i["value"].startswith("ZZ-") for i in up["identifier"])
    for step in ("accepted", "scheduled", "in-progress"):  # accepted directly, admitted
        assert n.move("b-expert", up_task["id"], step).status_code == 200, step
    summary = n.post("b-expert", _discharge(patient, up))
    # the discharge information goes back to the sender
    found = n.call("a-doc", "GET", f"Composition?subject=Patient/{patient}&type=http://loinc.org|18842-5")
    assert [e["resource"]["id"] for e in found.get_json()["entry"]] == [summary["id"]]
    assert n.move("b-expert", up_task["id"], "reported").status_code == 200

    down, down_task = _referral(n, "b-expert", B, A, patient, "referral-down")
    assert down["code"]["coding"][0]["code"] == "referral-down"
    assert n.call("a-doc", "GET", f"ServiceRequest/{down['id']}").status_code == 200  # A receives it
    assert n.move("a-doc", down_task["id"], "accepted").status_code == 200
    assert n.move("b-expert", down_task["id"], "scheduled").status_code == 403  # the receiver schedules


def test_a_refused_referral_says_why_and_only_the_sender_cancels(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Qian"}], "gender": "female"})["id"]
    n.post("a-doc", consent(patient, B))
    _, task = _referral(n, "a-doc", A, B, patient, "referral-up")
    bare = n.move("b-expert", task["id"], "rejected")
    assert bare.status_code == 422  # a refusal carries its reason (cn-task-2)
    refused = n.move("b-expert", task["id"], "rejected", statusReason={"text": "床位已满 No bed available"})
    assert refused.status_code == 200, refused.get_json()
    _, again = _referral(n, "a-doc", A, B, patient, "referral-up")  # re-referred
    assert n.move("b-expert", again["id"], "cancelled").status_code == 403
    assert n.move("a-doc", again["id"], "cancelled").status_code == 200
    assert n.call("a-doc", "GET", f"Task/{again['id']}").get_json()["businessStatus"]["coding"][0]["code"] == (
        "cancelled"
    )
