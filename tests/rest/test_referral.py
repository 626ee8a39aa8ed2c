"""A two-way referral (issue 6, item 4; R9): the community clinic A refers a patient up to the
hospital B, which accepts directly (no pre-review), admits, and writes the discharge summary that
reaches A through the referral; B then refers the patient back down to A, which accepts; a
refusal carries its reason and cancelling is the sender's. In-process, SQLite and PostgreSQL, with
real tokens of each institution."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rest.workflow_network import A, B, Net, consent, discharge_summary, network, referral

NUMBER = "http://fhir.telefhir.cn/sid/consultation-number"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory)


def test_a_referral_up_and_back_down_with_the_discharge_summary(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Zhao"}], "gender": "male"})["id"]
    n.post("a-doc", consent(patient, A, B))
    up, up_task = referral(n, "a-doc", A, B, patient, "referral-up")
    assert any(i["system"] == NUMBER and i["value"].startswith("ZZ-") for i in up["identifier"])
    for step in ("accepted", "scheduled", "in-progress"):  # accepted directly, admitted
        assert n.move("b-expert", up_task["id"], step).status_code == 200, step
    summary = n.post("b-expert", discharge_summary(patient, up, B))
    # the discharge information goes back to the sender
    found = n.call("a-doc", "GET", f"Composition?subject=Patient/{patient}&type=http://loinc.org|18842-5")
    assert [e["resource"]["id"] for e in found.get_json()["entry"]] == [summary["id"]]
    assert n.move("b-expert", up_task["id"], "reported").status_code == 200

    down, down_task = referral(n, "b-expert", B, A, patient, "referral-down")
    assert down["code"]["coding"][0]["code"] == "referral-down"
    assert n.call("a-doc", "GET", f"ServiceRequest/{down['id']}").status_code == 200  # A receives it
    assert n.move("a-doc", down_task["id"], "accepted").status_code == 200
    assert n.move("b-expert", down_task["id"], "scheduled").status_code == 403  # the receiver schedules


def test_a_refused_referral_says_why_and_only_the_sender_cancels(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Qian"}], "gender": "female"})["id"]
    n.post("a-doc", consent(patient, B))
    _, task = referral(n, "a-doc", A, B, patient, "referral-up")
    bare = n.move("b-expert", task["id"], "rejected")
    assert bare.status_code == 422  # a refusal carries its reason (cn-task-2)
    refused = n.move("b-expert", task["id"], "rejected", statusReason={"text": "床位已满 No bed available"})
    assert refused.status_code == 200, refused.get_json()
    _, again = referral(n, "a-doc", A, B, patient, "referral-up")  # re-referred
    assert n.move("b-expert", again["id"], "cancelled").status_code == 403
    assert n.move("a-doc", again["id"], "cancelled").status_code == 200
    assert n.call("a-doc", "GET", f"Task/{again['id']}").get_json()["businessStatus"]["coding"][0]["code"] == (
        "cancelled"
    )
