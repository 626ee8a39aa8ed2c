"""A multi-centre consultation (issue 6, item 2; 001 §7): the leader A invites B and C, whose
answers are due within 24 hours (the overdue one flagged and reminded once, whichever worker looks),
asks B for its data, which is checked for core-element completeness and sent back for correction,
assembles the case data package per recipient, merges the opinions into the report it publishes
to every participant, and archives the consultation for three years. In-process, SQLite and
PostgreSQL, with real tokens of each institution."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.util.clock import instant, now_us
from fhir_server.workflow.overdue import DATA, INVITATIONS, OverdueTasks
from tests.rest.workflow_network import A, B, Net, concurrently, consent, example, network

C = "wf-c"
WORKFLOW = "http://fhir.telefhir.cn/CodeSystem/consultation-workflow"
CATEGORY = "http://fhir.telefhir.cn/CodeSystem/data-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
HOUR_US = 3_600_000_000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    for n in network(request, tmp_path_factory, joined=((C, "c-expert", "expert"),)):
        for who, org in (("a-doc", A), ("b-expert", B), ("c-expert", C)):
            practitioner = {"resourceType": "Practitioner", "id": who, "name": [{"text": who}]}
            assert n.call("plat", "PUT", f"Practitioner/{who}", practitioner).status_code in (200, 201)
            role = {"resourceType": "PractitionerRole", "id": f"{who}-role", "practitioner": {"reference":
                    f"Practitioner/{who}"}, "organization": {"reference": f"Organization/{org}"}}  # fmt: skip
            assert n.call("plat", "PUT", f"PractitionerRole/{who}-role", role).status_code in (200, 201)
        yield n


def _diagnostics(resp: Any) -> list[str]:
    return [i.get("diagnostics", "") for i in resp.get_json().get("issue", [])]


def _patient(n: Net, disclose_to: tuple[str, ...] = (A, B, C)) -> str:
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Wang", "given": ["Xiuying"]}],
                               "gender": "female", "birthDate": "1960-03-02"})  # fmt: skip
    n.post("a-doc", consent(patient["id"], *disclose_to))
    return str(patient["id"])


def _request(n: Net, patient: str, performers: tuple[str, ...] = (B, C), in_hours: float = 120) -> dict[str, Any]:
    request = example("consultation-request-example")
    for key in ("id", "identifier", "supportingInfo", "extension"):
        request.pop(key, None)
    request["subject"] = {"reference": f"Patient/{patient}"}
    request["requester"] = {"reference": f"Organization/{A}"}
    request["performer"] = [{"reference": f"Organization/{org}"} for org in performers]
    request["orderDetail"] = [{"coding": [{"system": CATEGORY, "code": "examination"}]}]
    request["authoredOn"] = instant(now_us())  # what the performers record from now on is the requester's to see
    start = now_us() + int(in_hours * HOUR_US)
    request["occurrencePeriod"] = {"start": instant(start), "end": instant(start + HOUR_US)}
    return n.post("a-doc", request)


def _invite(n: Net, request: dict[str, Any]) -> dict[str, dict[str, Any]]:
    resp = n.call("a-doc", "POST", f"ServiceRequest/{request['id']}/$invite")
    assert resp.status_code == 201, _diagnostics(resp)
    return {e["resource"]["owner"]["reference"].split("/")[1]: e["resource"] for e in resp.get_json()["entry"]}


def _move(n: Net, who: str, task_id: str, business: str) -> Any:
    return n.move(who, task_id, business)


def test_invitations_are_due_in_24_hours_and_the_overdue_one_is_flagged_and_reminded_once(net: Net) -> None:
    n = net
    patient = _patient(n)
    request = _request(n, patient)
    before = now_us()
    invitations = _invite(n, request)
    assert set(invitations) == {B, C}
    for task in invitations.values():
        assert task["businessStatus"]["coding"][0]["code"] == "applied" and task["status"] == "requested"
        assert task["groupIdentifier"]["value"] == request["identifier"][0]["value"]
        assert task["input"][0]["valueCodeableConcept"]["coding"][0]["code"] == "examination"
        assert task["input"][1]["valuePeriod"] == request["occurrencePeriod"]
        from fhir_server.util.fhirdate import parse_range

        due = parse_range(task["restriction"]["period"]["end"])[0]
        assert 24 * HOUR_US - 60_000_000 < due - before < 24 * HOUR_US + 60_000_000
    again = n.call("a-doc", "POST", f"ServiceRequest/{request['id']}/$invite")
    assert again.status_code == 200 and again.get_json().get("entry", []) == []  # each institution once

    # B answers directly (no pre-review for a multi-centre invitation); C does not
    assert _move(n, "b-expert", invitations[B]["id"], "accepted").status_code == 200

    sweep = OverdueTasks(n.services.repo, n.services.search, kinds=(INVITATIONS,))
    assert sweep.sweep(now_us()) == 0  # nothing is due yet
    later = now_us() + 25 * HOUR_US
    assert sum(concurrently(lambda: sweep.sweep(later))) == 1  # four workers looked; one flagged it
    assert sweep.sweep(later) == 0

    flagged = n.call("a-doc", "GET", f"Task?_tag={WORKFLOW}|invitation-overdue&based-on=ServiceRequest/{request['id']}")
    assert [e["resource"]["id"] for e in flagged.get_json()["entry"]] == [invitations[C]["id"]]
    reminders = n.call("c-expert", "GET", f"Communication?recipient=Organization/{C}").get_json().get("entry", [])
    about = [
        e["resource"] for e in reminders if e["resource"]["about"][0]["reference"] == f"Task/{invitations[C]['id']}"
    ]
    assert len(about) == 1 and about[0]["category"][0]["coding"][0]["code"] == "reminder"
    assert "会诊邀请" in about[0]["payload"][0]["contentString"]
    # the reminded institution still answers
    assert _move(n, "c-expert", invitations[C]["id"], "accepted").status_code == 200


def test_invite_refuses_what_is_not_a_multicentre_request_of_the_caller(net: Net) -> None:
    n = net
    patient = _patient(n)
    one = _request(n, patient, performers=(A, B))  # the leader itself does not count
    resp = n.call("a-doc", "POST", f"ServiceRequest/{one['id']}/$invite")
    assert resp.status_code == 422 and "at least 2" in _diagnostics(resp)[0]
    request = _request(n, patient)
    resp = n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$invite")
    assert resp.status_code == 403 and "leading institution" in _diagnostics(resp)[0]
    # a participant cannot publish for the leader: the multi-centre machine gives that step to the requester
    invitations = _invite(n, request)
    task = invitations[B]["id"]
    for step in ("accepted", "scheduled", "in-progress", "reported"):
        assert _move(n, "b-expert", task, step).status_code == 200, step
    resp = _move(n, "b-expert", task, "published")
    assert resp.status_code == 403 and "requester" in _diagnostics(resp)[0]
    resp = _move(n, "a-doc", task, "evaluated")
    assert resp.status_code == 409 and "published (by the requester)" in _diagnostics(resp)[0]


def _lab(n: Net, who: str, org: str, patient: str, **extra: Any) -> dict[str, Any]:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "laboratory"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "2345-7", "display": "Glucose"}]},
        "subject": {"reference": f"Patient/{patient}"},
        "effectiveDateTime": "2026-11-20T08:00:00+08:00",
        "valueQuantity": {"value": 6.8, "unit": "mmol/L", "system": "http://unitsofmeasure.org", "code": "mmol/L"},
        **extra,
    }
    return n.post(who, observation)


def _data_request(n: Net, request: dict[str, Any], patient: str, owner: str) -> dict[str, Any]:
    task = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": {"coding": [{"system": WORKFLOW, "code": "data-request"}]},
        "basedOn": [{"reference": f"ServiceRequest/{request['id']}"}],
        "focus": {"reference": f"ServiceRequest/{request['id']}"},
        "for": {"reference": f"Patient/{patient}"},
        "requester": {"reference": f"Organization/{A}"},
        "owner": {"reference": f"Organization/{owner}"},
        "input": [{"type": {"coding": [{"system": WORKFLOW, "code": "required-data"}]},
                   "valueCodeableConcept": {"coding": [{"system": CATEGORY, "code": "examination"}]}}],
    }  # fmt: skip
    return n.post("a-doc", task)


def _provide(n: Net, who: str, task_id: str, status: str, refs: list[str]) -> Any:
    task = n.call(who, "GET", f"Task/{task_id}").get_json()
    task["status"] = status
    task.pop("output", None)
    if refs:
        task["output"] = [{"type": {"coding": [{"system": WORKFLOW, "code": "provided-data"}]},
                           "valueReference": {"reference": ref}} for ref in refs]  # fmt: skip
    return n.call(who, "PUT", f"Task/{task_id}", task)


def test_data_requests_share_what_is_asked_check_its_quality_and_send_it_back_for_correction(net: Net) -> None:
    n = net
    patient = _patient(n)
    # B's own earlier result about the patient: no reference range, no performer
    lab = _lab(n, "b-expert", B, patient)
    request = _request(n, patient)
    _invite(n, request)
    assert n.call("a-doc", "GET", f"Observation/{lab['id']}").status_code == 404  # not shared yet
    ask = _data_request(n, request, patient, B)

    refused = _provide(n, "a-doc", ask["id"], "completed", [f"Observation/{lab['id']}"])
    assert refused.status_code == 403 and "performer" in _diagnostics(refused)[0]
    assert _provide(n, "b-expert", ask["id"], "accepted", []).status_code == 200
    shared = n.call("a-doc", "GET", f"Observation/{lab['id']}")
    assert shared.status_code == 200 and shared.get_json()["valueQuantity"]["value"] == 6.8
    assert n.call("c-expert", "GET", f"Observation/{lab['id']}").status_code == 200  # the package is everyone's

    foreign = n.post("a-doc", {"resourceType": "Observation", "status": "final", "code": {"text": "x"},
                               "subject": {"reference": f"Patient/{patient}"}})  # fmt: skip
    resp = _provide(n, "b-expert", ask["id"], "completed", [f"Observation/{foreign['id']}"])
    assert resp.status_code == 422 and "not a record of" in _diagnostics(resp)[0]

    done = _provide(n, "b-expert", ask["id"], "completed", [f"Observation/{lab['id']}"])
    assert done.status_code == 200, _diagnostics(done)
    outputs = {o["type"]["coding"][0]["code"]: o for o in done.get_json()["output"]}
    assert outputs["quality-completeness"]["valueDecimal"] == 0.6  # 3 of the 5 core elements of a result
    corrections = n.call("b-expert", "GET", f"Task?part-of=Task/{ask['id']}").get_json()["entry"]
    [correction] = [e["resource"] for e in corrections]
    assert correction["code"]["coding"][0]["code"] == "data-correction"
    assert correction["owner"] == {"reference": f"Organization/{B}"} and correction["status"] == "requested"
    missing = sorted(i["valueString"] for i in correction["input"])
    assert missing == [
        f"Observation/{lab['id']}: 参考范围 reference range (Observation.referenceRange)",
        f"Observation/{lab['id']}: 机构 institution (Observation.performer)",
    ]
    assert "12 hours" in correction["description"]

    # B corrects its record and completes the correction: checked again, and this time it passes
    fixed = n.call("b-expert", "GET", f"Observation/{lab['id']}").get_json()
    fixed["referenceRange"] = [{"low": {"value": 3.9, "unit": "mmol/L"}, "high": {"value": 6.1, "unit": "mmol/L"}}]
    fixed["performer"] = [{"reference": f"Organization/{B}"}]
    assert n.call("b-expert", "PUT", f"Observation/{lab['id']}", fixed).status_code == 200
    ok = _provide(n, "b-expert", correction["id"], "completed", [f"Observation/{lab['id']}"])
    assert ok.status_code == 200, _diagnostics(ok)
    assert {o["type"]["coding"][0]["code"]: o for o in ok.get_json()["output"]}["quality-completeness"][
        "valueDecimal"
    ] == 1.0
    assert len(n.call("b-expert", "GET", f"Task?part-of=Task/{correction['id']}").get_json().get("entry", [])) == 0


def test_data_is_due_48_hours_before_the_consultation_and_the_late_is_flagged_and_reminded(net: Net) -> None:
    from fhir_server.util.fhirdate import parse_range

    n = net
    patient = _patient(n)
    request = _request(n, patient, in_hours=120)
    _invite(n, request)
    ask = _data_request(n, request, patient, B)
    start = parse_range(request["occurrencePeriod"]["start"])[0]
    assert parse_range(ask["restriction"]["period"]["end"])[0] == start - 48 * HOUR_US
    soon = _request(n, patient, in_hours=24)  # less than 48 hours left: due at the start
    assert (
        parse_range(_data_request(n, soon, patient, C)["restriction"]["period"]["end"])[0]
        == parse_range(soon["occurrencePeriod"]["start"])[0]
    )
    answered = _data_request(n, request, patient, C)
    assert _provide(n, "c-expert", answered["id"], "rejected", []).status_code == 200

    sweep = OverdueTasks(n.services.repo, n.services.search, kinds=(DATA,))
    sweep.sweep(now_us())
    later = start - 47 * HOUR_US  # B has not provided; C declined
    assert sum(concurrently(lambda: sweep.sweep(later))) >= 1
    sweep.sweep(later)
    flagged = n.call("a-doc", "GET", f"Task?_tag={WORKFLOW}|data-overdue&based-on=ServiceRequest/{request['id']}")
    assert [e["resource"]["id"] for e in flagged.get_json()["entry"]] == [ask["id"]]
    reminders = n.call("b-expert", "GET", f"Communication?based-on=Task/{ask['id']}").get_json()["entry"]
    assert (
        len(reminders) == 1
        and "48 hours before the consultation" in reminders[0]["resource"]["payload"][0]["contentString"]
    )
    assert reminders[0]["resource"]["recipient"] == [{"reference": f"Organization/{B}"}]
    # still answerable: B provides late
    assert _provide(n, "b-expert", ask["id"], "accepted", []).status_code == 200


def test_providing_data_needs_the_patients_consent(net: Net) -> None:
    n = net
    patient = _patient(n, disclose_to=(B, C))  # nothing may be disclosed to the leader A
    lab = _lab(n, "b-expert", B, patient)
    request = _request(n, patient)
    ask = _data_request(n, request, patient, B)
    resp = _provide(n, "b-expert", ask["id"], "accepted", [])
    assert resp.status_code == 403 and "consent does not permit" in _diagnostics(resp)[0]
    assert n.call("a-doc", "GET", f"Observation/{lab['id']}").status_code == 404


def _opinion(n: Net, who: str, request: dict[str, Any], text: str) -> str:
    opinion = example("consultation-opinion-example")
    for key in ("id", "derivedFrom"):
        opinion.pop(key, None)
    opinion["basedOn"] = [{"reference": f"ServiceRequest/{request['id']}"}]
    opinion["subject"] = request["subject"]
    opinion["performer"] = [{"reference": f"PractitionerRole/{who}-role"}]
    opinion["valueString"] = text
    return str(n.post(who, opinion)["id"])


def test_package_merge_publish_to_every_participant_and_archive(net: Net) -> None:
    n = net
    patient = _patient(n)
    lab = _lab(n, "b-expert", B, patient, performer=[{"reference": f"Organization/{B}"}],
               referenceRange=[{"low": {"value": 3.9, "unit": "mmol/L"}}])  # fmt: skip
    request = _request(n, patient)
    invitations = _invite(n, request)
    ask = _data_request(n, request, patient, B)
    assert _provide(n, "b-expert", ask["id"], "completed", [f"Observation/{lab['id']}"]).status_code == 200

    # the package, per recipient: the leader's and C's hold B's result; C sees the patient de-identified
    for who in ("a-doc", "c-expert", "b-expert"):
        resp = n.call(who, "GET", f"ServiceRequest/{request['id']}/$package")
        assert resp.status_code == 200, (who, _diagnostics(resp))
        bundle = resp.get_json()
        assert bundle["type"] == "collection" and bundle["identifier"]["value"] == request["identifier"][0]["value"]
        held = {f"{e['resource']['resourceType']}/{e['resource']['id']}": e["resource"] for e in bundle["entry"]}
        assert {f"ServiceRequest/{request['id']}", f"Patient/{patient}", f"Observation/{lab['id']}",
                f"Task/{ask['id']}"} <= set(held), who  # fmt: skip
        names = held[f"Patient/{patient}"].get("name", [])
        if who == "a-doc":
            assert names[0]["family"] == "Wang"
        else:
            assert "Wang" not in str(names)

    # opinions reach every participant as submitted; the leader merges them into its report
    opinion_b = _opinion(n, "b-expert", request, "考虑2型糖尿病")
    opinion_c = _opinion(n, "c-expert", request, "建议完善糖化血红蛋白")
    assert n.call("c-expert", "GET", f"Observation/{opinion_b}").status_code == 200
    for who, org in (("b-expert", B), ("c-expert", C)):
        for step in ("accepted", "scheduled", "in-progress", "reported"):
            assert _move(n, who, invitations[org]["id"], step).status_code == 200, (who, step)
    drafted = n.call("a-doc", "POST", f"ServiceRequest/{request['id']}/$draft-report")
    assert drafted.status_code == 201, _diagnostics(drafted)
    draft = drafted.get_json()
    opinions = next(s for s in draft["section"] if s["title"] == "专家意见")
    assert {e["reference"] for e in opinions["entry"]} == {f"Observation/{opinion_b}", f"Observation/{opinion_c}"}
    for section in draft["section"]:
        if section["title"] == "会诊结论":
            section["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml">2型糖尿病，建议复查。</div>'
    draft["status"] = "final"
    draft["attester"] = [{"mode": "professional", "party": {"reference": f"Organization/{A}"}}]
    assert n.call("a-doc", "PUT", f"Composition/{draft['id']}", draft).status_code == 200
    published = n.call("a-doc", "POST", f"Composition/{draft['id']}/$document?persist=true")
    assert published.status_code == 200, _diagnostics(published)
    index = published.headers["Location"]
    for org in (B, C):  # the publication moved the reported invitations on, the report as their output
        task = n.call("a-doc", "GET", f"Task/{invitations[org]['id']}").get_json()
        assert task["businessStatus"]["coding"][0]["code"] == "published" and task["status"] == "completed"
        [report] = [o for o in task["output"] if o["type"]["coding"][0]["code"] == "report"]
        assert report["valueReference"]["reference"].startswith("DocumentReference/"), index

    early = n.call("a-doc", "POST", f"ServiceRequest/{request['id']}/$archive")
    assert early.status_code == 409 and "completed" in _diagnostics(early)[0]
    closed = n.call("a-doc", "GET", f"ServiceRequest/{request['id']}").get_json()
    closed["status"] = "completed"
    assert n.call("a-doc", "PUT", f"ServiceRequest/{request['id']}", closed).status_code == 200
    # the report reaches every participant, also once the consultation is closed
    for who in ("b-expert", "c-expert"):
        found = n.call(who, "GET", f"DocumentReference?related=ServiceRequest/{request['id']}").get_json()
        [reference] = [e["resource"] for e in found["entry"]]
        bundle_path = reference["content"][0]["attachment"]["url"]
        assert n.call(who, "GET", bundle_path).get_json() == published.get_json()

    assert n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$archive").status_code == 403
    archived = n.call("a-doc", "POST", f"ServiceRequest/{request['id']}/$archive")
    assert archived.status_code == 201, _diagnostics(archived)
    archive = archived.get_json()
    assert archive["meta"]["tag"][0]["code"] == "consultation-archive"
    kinds = {e["resource"]["resourceType"] for e in archive["entry"]}
    assert {"ServiceRequest", "Patient", "Task", "Observation", "DocumentReference"} <= kinds
    path = f"Bundle/{archive['id']}"
    deleted = n.call("a-doc", "DELETE", path)
    assert deleted.status_code == 409 and "retained until 2029" in _diagnostics(deleted)[0]
    changed = n.call("a-doc", "PUT", path, {**archive, "entry": archive["entry"][:1]})
    assert changed.status_code == 409 and "never changes" in _diagnostics(changed)[0]
    assert n.call("plat", "DELETE", path).status_code == 409  # not even the platform
    assert n.call("a-doc", "GET", path).get_json()["entry"] == archive["entry"]


def test_the_workflow_codes_are_served(net: Net) -> None:
    lookup = net.call("plat", "GET", f"CodeSystem/$lookup?system={WORKFLOW}&code=data-request")
    assert lookup.status_code == 200, _diagnostics(lookup)
    display = next(p for p in lookup.get_json()["parameter"] if p["name"] == "display")
    assert display["valueString"].startswith("数据请求")
