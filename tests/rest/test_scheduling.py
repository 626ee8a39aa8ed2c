"""Experts' time (R10; IHE ITI Scheduling ITI-115/116/117): finding slots, holding and booking them,
no double booking on any write path nor under concurrent requests, cancellation freeing a slot.
In-process, SQLite and PostgreSQL, with real tokens of the requester A, the expert's institution B
and the platform P."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from tests.rest.workflow_network import B, Net, P, consultation, network

SPECIALTY = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"
HOLD = "http://fhir.telefhir.cn/StructureDefinition/slot-hold"
HOLDER = "http://fhir.telefhir.cn/StructureDefinition/slot-holder"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory, meeting_url_template=MEETING)


MEETING = "https://meet.example.cn/r/{room}"


class Calendar:
    """An expert of B with a schedule, and slots on a day of its own (tests do not share slots)."""

    def __init__(self, n: Net, days_ahead: int, code: str = "teleconsultation-online") -> None:
        self.n = n
        self.day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=days_ahead)).replace(
            hour=1, minute=0, second=0, microsecond=0
        )
        self.expert = n.post("plat", {"resourceType": "Practitioner", "name": [{"family": f"Li{days_ahead}"}]})["id"]
        self.schedule = n.post(
            "b-sched",
            {"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{self.expert}"}], "active": True},
        )["id"]
        self.code = code

    def slot(self, minutes: int, status: str = "free", **extra: Any) -> str:
        start = self.day + dt.timedelta(minutes=minutes)
        slot = {
            "resourceType": "Slot",
            "schedule": {"reference": f"Schedule/{self.schedule}"},
            "serviceType": [{"coding": [{"system": SPECIALTY, "code": self.code}]}],
            "status": status,
            "start": start.isoformat().replace("+00:00", "Z"),
            "end": (start + dt.timedelta(minutes=30)).isoformat().replace("+00:00", "Z"),
            **extra,
        }
        return str(self.n.post("b-sched", slot)["id"])

    def window(self) -> str:
        start = self.day.isoformat().replace("+00:00", "Z")
        end = (self.day + dt.timedelta(hours=12)).isoformat().replace("+00:00", "Z")
        return f"start={start}&end={end}"


def _find(n: Net, who: str, query: str) -> list[dict[str, Any]]:
    resp = n.call(who, "GET", f"Appointment/$find?{query}")
    assert resp.status_code == 200, resp.get_json()
    bundle = resp.get_json()
    assert bundle["type"] == "searchset" and bundle["total"] == len(bundle.get("entry", []))
    return [e["resource"] for e in bundle.get("entry", [])]


def _params(**values: Any) -> dict[str, Any]:
    parts = []
    for name, value in values.items():
        for one in value if isinstance(value, list) else [value]:
            if isinstance(one, dict) and "resourceType" in one:
                parts.append({"name": name.replace("_", "-"), "resource": one})
            else:
                parts.append({"name": name.replace("_", "-"), "valueReference": {"reference": one}})
    return {"resourceType": "Parameters", "parameter": parts}


def _slot(n: Net, slot_id: str) -> dict[str, Any]:
    return n.call("plat", "GET", f"Slot/{slot_id}").get_json()


def _booking(n: Net, slot_id: str, request_id: str, patient: str) -> dict[str, Any]:
    resource = {
        "resourceType": "Appointment",
        "id": f"proposed-{slot_id}",
        "status": "proposed",
        "basedOn": [{"reference": f"ServiceRequest/{request_id}"}],
        "description": "会诊: 胸闷",
        "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
    }
    return _params(appointment_resource=resource)


def test_find_hold_and_book_another_institutions_expert(net: Net) -> None:
    n = net
    cal = Calendar(n, 3)
    early, late, booked = cal.slot(0), cal.slot(30), cal.slot(60, status="busy")
    proposals = _find(n, "a-doc", cal.window() + f"&practitioner=Practitioner/{cal.expert}")
    assert [p["id"] for p in proposals] == [f"proposed-{early}", f"proposed-{late}"]  # earliest first, not busy
    first = proposals[0]
    assert first["status"] == "proposed" and first["slot"] == [{"reference": f"Slot/{early}"}]
    assert first["participant"][0]["actor"] == {"reference": f"Practitioner/{cal.expert}"}
    assert booked not in str(proposals)

    held = n.call("a-doc", "POST", "Appointment/$hold", _params(appointment_reference=f"Appointment/{first['id']}"))
    assert held.status_code == 200, held.get_json()
    assert held.get_json()["entry"][0]["resource"]["status"] == "pending"
    slot = _slot(n, early)
    assert slot["status"] == "busy-tentative"
    assert {e["url"] for e in slot["extension"]} == {HOLD, HOLDER}
    assert [p["id"] for p in _find(n, "a-doc", cal.window())] == [f"proposed-{late}"]  # held: not offered

    _, request = consultation(n)
    patient = request["subject"]["reference"]
    without_request = n.call(
        "a-doc", "POST", "Appointment/$book", _params(appointment_reference=f"Appointment/proposed-{early}",
                                                      patient_reference=patient)
    )  # fmt: skip
    assert without_request.status_code == 403, without_request.get_json()
    assert "basedOn an active ServiceRequest" in without_request.get_json()["issue"][0]["diagnostics"]
    assert _slot(n, early)["status"] == "busy-tentative"  # the refused booking changed nothing

    resp = n.call("a-doc", "POST", "Appointment/$book", _booking(n, early, request["id"], patient))
    assert resp.status_code == 200, resp.get_json()
    appointment = resp.get_json()["entry"][0]["resource"]
    assert appointment["status"] == "booked" and appointment["id"] != f"proposed-{early}"
    assert appointment["description"] == "会诊: 胸闷" and appointment["basedOn"][0]["reference"].endswith(request["id"])
    actors = [p["actor"]["reference"] for p in appointment["participant"]]
    assert actors == [f"Practitioner/{cal.expert}", patient]
    slot = _slot(n, early)
    assert slot["status"] == "busy" and "extension" not in slot
    # the expert's institution sees the appointment (the request's grant); the requester owns it
    assert n.call("b-expert", "GET", f"Appointment/{appointment['id']}").status_code == 200
    assert n.call("a-doc", "GET", f"Appointment/{appointment['id']}").status_code == 200
    assert f"proposed-{early}" not in str(_find(n, "a-doc", cal.window()))


def test_a_hold_keeps_the_slot_for_its_holder_until_it_expires(net: Net) -> None:
    n = net
    cal = Calendar(n, 4)
    slot_id = cal.slot(0)
    _, request = consultation(n)
    patient = request["subject"]["reference"]
    held = n.call(
        "p-sched", "POST", "Appointment/$hold", _params(appointment_reference=f"Appointment/proposed-{slot_id}")
    )
    assert held.status_code == 200, held.get_json()
    assert any(e.get("valueReference") == {"reference": f"Organization/{P}"} for e in _slot(n, slot_id)["extension"])
    again = n.call(
        "a-doc", "POST", "Appointment/$hold", _params(appointment_reference=f"Appointment/proposed-{slot_id}")
    )
    assert again.status_code == 409 and "no longer available" in again.get_json()["issue"][0]["diagnostics"]
    refused = n.call("a-doc", "POST", "Appointment/$book", _booking(n, slot_id, request["id"], patient))
    assert refused.status_code == 409 and "held by another institution" in refused.get_json()["issue"][0]["diagnostics"]
    # the hold ends (B, the slot's owner, shortens it): the slot can be had without anybody freeing it
    slot = _slot(n, slot_id)
    for ext in slot["extension"]:
        if ext["url"] == HOLD:
            ext["valueInstant"] = "2020-01-01T00:00:00Z"
    assert n.call("b-sched", "PUT", f"Slot/{slot_id}", slot).status_code == 200
    assert [p["id"] for p in _find(n, "a-doc", cal.window())] == [f"proposed-{slot_id}"]
    booked = n.call("a-doc", "POST", "Appointment/$book", _booking(n, slot_id, request["id"], patient))
    assert booked.status_code == 200, booked.get_json()


def test_every_write_path_takes_and_frees_slots(net: Net) -> None:
    n = net
    cal = Calendar(n, 5)
    slot_id = cal.slot(0)
    _, request = consultation(n)
    patient = request["subject"]["reference"]
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": _slot(n, slot_id)["start"],
        "end": _slot(n, slot_id)["end"],
        "slot": [{"reference": f"Slot/{slot_id}"}],
        "participant": [{"actor": {"reference": patient}, "status": "accepted"}],
    }
    foreign = n.call("a-doc", "POST", "Appointment", appointment)
    assert foreign.status_code == 403  # B's slot, and no request to B
    appointment["basedOn"] = [{"reference": f"ServiceRequest/{request['id']}"}]
    first = n.call("a-doc", "POST", "Appointment", appointment)
    assert first.status_code == 201, first.get_json()
    assert _slot(n, slot_id)["status"] == "busy"
    second = n.call("a-doc", "POST", "Appointment", appointment)
    assert second.status_code == 409  # no double booking through a plain create either
    batch = {"resourceType": "Bundle", "type": "transaction", "entry": [
        {"resource": appointment, "request": {"method": "POST", "url": "Appointment"}}]}  # fmt: skip
    assert n.call("a-doc", "POST", "", batch).status_code == 409

    # the expert's institution may cancel (a co-owner changing the status only) and the slot is free again
    stored = first.get_json()
    changed = {**stored, "status": "cancelled", "description": "B rewrites the booker's text"}
    changed["cancelationReason"] = {"text": "专家出诊"}
    resp = n.call("b-sched", "PUT", f"Appointment/{stored['id']}", changed)
    assert resp.status_code == 200, resp.get_json()
    after = n.call("a-doc", "GET", f"Appointment/{stored['id']}").get_json()
    assert after["status"] == "cancelled" and "description" not in after
    assert _slot(n, slot_id)["status"] == "free"
    # booked again, then deleted by its owner: freed again
    rebook = n.call("a-doc", "POST", "Appointment", appointment)
    assert rebook.status_code == 201 and _slot(n, slot_id)["status"] == "busy"
    assert n.call("a-doc", "DELETE", f"Appointment/{rebook.get_json()['id']}").status_code in (200, 204)
    assert _slot(n, slot_id)["status"] == "free"


def test_concurrent_bookings_of_one_slot_book_it_once(net: Net) -> None:
    n = net
    cal = Calendar(n, 6)
    slot_id = cal.slot(0)
    _, request = consultation(n)
    body = _booking(n, slot_id, request["id"], request["subject"]["reference"])
    workers = 6
    barrier = threading.Barrier(workers)
    codes: list[int] = []
    reasons: list[str] = []

    def book() -> None:
        client = n.client.application.test_client()
        barrier.wait()
        resp = client.post(
            "/fhir/Appointment/$book", json=body, headers={"Authorization": f"Bearer {n.tokens['a-doc']}"}
        )
        codes.append(resp.status_code)
        if resp.status_code != 200:
            reasons.append(resp.get_json()["issue"][0]["diagnostics"])

    threads = [threading.Thread(target=book) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * (workers - 1), (codes, reasons)
    assert all("find another" in reason for reason in reasons), reasons
    found = n.call("a-doc", "GET", f"Appointment?slot=Slot/{slot_id}").get_json()
    assert len(found.get("entry", [])) == 1


def test_find_filters_and_refuses_what_it_does_not_do(net: Net) -> None:
    n = net
    cal = Calendar(n, 7, code="teleconsultation-offline")
    one, two, three = cal.slot(0), cal.slot(30), cal.slot(60)
    window = cal.window()
    token = f"{SPECIALTY}|teleconsultation-offline"
    assert len(_find(n, "a-doc", f"{window}&visit-type={token}")) == 3
    assert _find(n, "a-doc", f"{window}&visit-type={SPECIALTY}|teleconsultation-online") == []
    assert len(_find(n, "a-doc", f"{window}&organization=Organization/{B}")) == 3
    assert _find(n, "a-doc", f"{window}&organization=Organization/{P}") == []
    assert [p["id"] for p in _find(n, "a-doc", f"{window}&_count=2")] == [f"proposed-{one}", f"proposed-{two}"]
    # the patient's own appointment at the second slot's time leaves that slot out
    _, request = consultation(n)
    patient = request["subject"]["reference"]
    slot = _slot(n, two)
    own = {"resourceType": "Appointment", "status": "booked", "start": slot["start"], "end": slot["end"],
           "participant": [{"actor": {"reference": patient}, "status": "accepted"}]}  # fmt: skip
    assert n.call("a-doc", "POST", "Appointment", own).status_code == 201
    ids = [p["id"] for p in _find(n, "a-doc", f"{window}&patient-reference={patient}")]
    assert ids == [f"proposed-{one}", f"proposed-{three}"]
    post = n.call("a-doc", "POST", "Appointment/$find", {"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDateTime": window.split("&")[0][6:]},
        {"name": "end", "valueDateTime": window.split("&")[1][4:]}]})  # fmt: skip
    assert post.status_code == 200 and post.get_json()["total"] == 3

    for query, expected in (
        (window + "&reason=http://snomed.info/sct|1", "not supported"),
        (window + "&colour=red", "has no parameter"),
        (window.split("&")[0], "needs the parameter 'end'"),
        ("start=2026-13-01&end=2027-01-01", "must be a FHIR dateTime"),
    ):
        resp = n.call("a-doc", "GET", f"Appointment/$find?{query}")
        assert resp.status_code == 400, query
        assert expected in resp.get_json()["issue"][0]["diagnostics"], resp.get_json()
    stored = n.call("a-doc", "POST", "Appointment/$hold", _params(appointment_reference="Appointment/123"))
    assert stored.status_code == 400 and "proposed by $find" in stored.get_json()["issue"][0]["diagnostics"]
    unknown = n.call("a-doc", "POST", "Appointment/$hold", _params(appointment_reference="Appointment/proposed-nope"))
    assert unknown.status_code == 404
    nobody = n.call(
        "a-doc", "POST", "Appointment/$book", _params(appointment_reference=f"Appointment/proposed-{three}")
    )
    assert nobody.status_code == 400 and "for a patient" in nobody.get_json()["issue"][0]["diagnostics"]


def test_the_operations_are_declared_and_defined(net: Net) -> None:
    from fhir_server.rest.operations import scheduling

    statement = net.call("plat", "GET", "metadata").get_json()
    appointment = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Appointment")
    ops = {o["name"]: o["definition"] for o in appointment["operation"]}
    for code, spec in (("find", scheduling.FIND_SPEC), ("hold", scheduling.HOLD_SPEC), ("book", scheduling.BOOK_SPEC)):
        assert ops[code] == f"http://fhir.telefhir.cn/OperationDefinition/appointment-{code}"
        definition = net.call("plat", "GET", f"OperationDefinition/appointment-{code}").get_json()
        assert definition["base"] == f"https://profiles.ihe.net/ITI/Scheduling/OperationDefinition/appointment-{code}"
        assert {p["name"] for p in definition["parameter"] if p["use"] == "in"} == set(spec)


def _booked(n: Net, days_ahead: int) -> tuple[Calendar, dict[str, Any], dict[str, Any]]:
    """A consultation of A booked with B's expert ``days_ahead``: the calendar, the Appointment, the request."""
    cal = Calendar(n, days_ahead)
    _, request = consultation(n)
    booking = _booking(n, cal.slot(0), request["id"], request["subject"]["reference"])
    booked = n.call("a-doc", "POST", "Appointment/$book", booking)
    assert booked.status_code == 200, booked.get_json()
    return cal, booked.get_json()["entry"][0]["resource"], request


def test_booking_a_consultation_opens_its_virtual_encounter_with_a_room(net: Net) -> None:
    n = net
    _, appointment, request = _booked(n, 9)
    patient = request["subject"]["reference"]
    found = n.call("a-doc", "GET", f"Encounter?appointment=Appointment/{appointment['id']}").get_json()
    [encounter] = [e["resource"] for e in found["entry"]]
    assert encounter["class"]["code"] == "VR" and encounter["status"] == "planned"
    assert encounter["subject"]["reference"] == patient and encounter["basedOn"] == appointment["basedOn"]
    assert encounter["period"]["start"] == appointment["start"]
    assert encounter["location"] == [{"location": {"reference": "#room"}, "status": "planned"}]
    url = encounter["contained"][0]["telecom"][0]["value"]
    prefix = MEETING.replace("{room}", "")
    assert url.startswith(prefix) and len(url) >= len(prefix) + 20  # an unguessable room
    seen = n.call("b-expert", "GET", f"Encounter/{encounter['id']}")  # the expert's side meets there too
    assert seen.status_code == 200 and seen.get_json()["contained"][0]["telecom"][0]["value"] == url
    appointment["status"] = "cancelled"
    assert n.call("a-doc", "PUT", f"Appointment/{appointment['id']}", appointment).status_code == 200
    assert n.call("a-doc", "GET", f"Encounter/{encounter['id']}").get_json()["status"] == "cancelled"
    assert (
        len(n.call("a-doc", "GET", f"Encounter?appointment=Appointment/{appointment['id']}").get_json()["entry"]) == 1
    )


def test_the_expert_accepts_declines_or_proposes_another_time(net: Net) -> None:
    """Issue 6, item 1: the invited institution accepts, rejects with a reason or proposes a time —
    an AppointmentResponse, whose status the booker then sees on the Appointment."""
    n = net
    cal, appointment, _ = _booked(n, 10)
    expert = f"Practitioner/{cal.expert}"
    start = dt.datetime.fromisoformat(appointment["start"].replace("Z", "+00:00")) + dt.timedelta(days=1)
    later = {"start": start.isoformat(), "end": (start + dt.timedelta(minutes=30)).isoformat()}
    answer = {"resourceType": "AppointmentResponse", "appointment": {"reference": f"Appointment/{appointment['id']}"},
              "actor": {"reference": expert}}  # fmt: skip
    for body, says in (
        ({**answer, "participantStatus": "tentative", "start": later["start"]}, "gives both start and end"),
        ({**answer, "participantStatus": "declined"}, "gives its reason"),
        (
            {**answer, "participantStatus": "accepted", "actor": {"reference": "Practitioner/nobody"}},
            "not a participant",
        ),
        ({**answer, "participantStatus": "tentative", **later, "end": later["start"]}, "start must come before end"),
    ):
        refused = n.call("b-expert", "POST", "AppointmentResponse", body)
        assert refused.status_code == 422 and says in refused.get_json()["issue"][0]["diagnostics"], body
    away = "专家当日出诊，建议次日同一时间 The expert is away: the next day?"
    proposal = n.post("b-expert", {**answer, "participantStatus": "tentative", **later, "comment": away})
    seen = n.call("a-doc", "GET", f"Appointment/{appointment['id']}").get_json()
    assert {p["actor"]["reference"]: p["status"] for p in seen["participant"]}[expert] == "tentative"
    found = n.call("a-doc", "GET", f"AppointmentResponse?appointment=Appointment/{appointment['id']}").get_json()
    [answered] = [e["resource"] for e in found["entry"]]
    assert answered["id"] == proposal["id"] and answered["start"] == later["start"]  # the booker reads the time
    n.post("b-expert", {**answer, "participantStatus": "accepted"})
    seen = n.call("a-doc", "GET", f"Appointment/{appointment['id']}").get_json()
    assert {p["actor"]["reference"]: p["status"] for p in seen["participant"]}[expert] == "accepted"
    assert seen["status"] == "booked"  # the answer changes the participant, not the booking
