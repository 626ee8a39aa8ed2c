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


CLINIC = "wf-clinic"  # the patient's community clinic, neither sender nor receiver


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory, joined=((CLINIC, "clinic-doc", "requesting-doctor"),))


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


def test_the_discharge_summary_also_reaches_the_patients_community_clinic_with_consent(net: Net) -> None:
    n = net
    family = {
        "resourceType": "Patient",
        "gender": "male",
        "generalPractitioner": [{"reference": f"Organization/{CLINIC}"}],
    }
    patient = n.post("a-doc", {**family, "name": [{"family": "Sun"}]})["id"]
    n.post("a-doc", consent(patient, B, CLINIC))  # the township hospital A refers up to B
    up, task = referral(n, "a-doc", A, B, patient, "referral-up")
    assert n.move("b-expert", task["id"], "accepted").status_code == 200
    summary = n.post("b-expert", discharge_summary(patient, up, B))
    discharge = f"Composition?subject=Patient/{patient}&type=http://loinc.org|18842-5"
    for who in ("a-doc", "clinic-doc"):
        found = n.call(who, "GET", discharge).get_json()
        assert [e["resource"]["id"] for e in found["entry"]] == [summary["id"]], who
    # the clinic sees the referral's results, not the sender's record of the patient
    assert n.call("clinic-doc", "GET", f"ServiceRequest/{up['id']}").status_code == 404

    # without the patient's consent to disclose to the clinic, it sees nothing
    private = n.post("a-doc", {**family, "name": [{"family": "Li"}]})["id"]
    n.post("a-doc", consent(private, B))
    up, _ = referral(n, "a-doc", A, B, private, "referral-up")
    summary = n.post("b-expert", discharge_summary(private, up, B))
    assert n.call("clinic-doc", "GET", f"Composition/{summary['id']}").status_code == 404

    # a patient who names the clinic only later: the referral's results follow
    moved = n.post("a-doc", {"resourceType": "Patient", "gender": "female", "name": [{"family": "Zhou"}]})
    n.post("a-doc", consent(moved["id"], B, CLINIC))
    up, _ = referral(n, "a-doc", A, B, moved["id"], "referral-up")
    summary = n.post("b-expert", discharge_summary(moved["id"], up, B))
    assert n.call("clinic-doc", "GET", f"Composition/{summary['id']}").status_code == 404
    moved["generalPractitioner"] = family["generalPractitioner"]
    assert n.call("a-doc", "PUT", f"Patient/{moved['id']}", moved).status_code == 200
    assert n.call("clinic-doc", "GET", f"Composition/{summary['id']}").status_code == 200


def test_outpatient_and_inpatient_referrals_are_told_apart(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Wu"}], "gender": "female"})["id"]
    n.post("a-doc", consent(patient, B))
    clinic, _ = referral(n, "a-doc", A, B, patient, "referral-up", setting="AMB")
    ward, _ = referral(n, "a-doc", A, B, patient, "referral-up", setting="IMP")
    act = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
    for code, expected in (("AMB", clinic), ("IMP", ward)):
        found = n.call("b-expert", "GET", f"ServiceRequest?subject=Patient/{patient}&category={act}|{code}").get_json()
        assert [e["resource"]["id"] for e in found["entry"]] == [expected["id"]], code
    emergency = {**clinic, "category": [clinic["category"][0], {"coding": [{"system": act, "code": "EMER"}]}]}
    emergency.pop("id"), emergency.pop("identifier")
    resp = n.call("a-doc", "POST", "ServiceRequest", emergency)
    assert resp.status_code == 422, resp.get_json()
    assert "referral-setting" in " ".join(i.get("diagnostics", "") for i in resp.get_json()["issue"])
