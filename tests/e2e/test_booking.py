"""Booking an expert against a real server (IHE ITI Scheduling ITI-115/116/117): two worker
processes, two institutions with their own OAuth clients, fhirpy as the FHIR client. Many
clients booking the same slot at once, spread over both workers, book it once."""

from __future__ import annotations

import datetime as dt
import json
import threading
from collections.abc import Iterator

import pytest
import requests

from tests.e2e.institutions import Network, consent, two_institutions

SERVICE = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"


@pytest.fixture(scope="module")
def institutions(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    with two_institutions(database_url, tmp_path_factory.mktemp("booking-e2e")) as net:
        yield net


def _slots(net: Network, count: int) -> tuple[str, list[str], str, str]:
    """B's expert with ``count`` free half-hour slots tomorrow; the window that holds them."""
    expert = net.create("b", {"resourceType": "Practitioner", "name": [{"family": "Zhao"}]})
    schedule = net.create("b", {"resourceType": "Schedule", "actor": [{"reference": f"Practitioner/{expert}"}]})
    day = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(hour=2, minute=0, second=0, microsecond=0)
    ids = []
    for i in range(count):
        start = day + dt.timedelta(minutes=30 * i)
        ids.append(
            net.create(
                "b",
                {
                    "resourceType": "Slot",
                    "schedule": {"reference": f"Schedule/{schedule}"},
                    "serviceType": [{"coding": [{"system": SERVICE, "code": "teleconsultation-online"}]}],
                    "status": "free",
                    "start": start.isoformat(),
                    "end": (start + dt.timedelta(minutes=30)).isoformat(),
                },
            )
        )
    return expert, ids, day.isoformat(), (day + dt.timedelta(hours=8)).isoformat()


def _request_to_b(net: Network) -> tuple[str, str]:
    """A's patient, consenting to disclosure to B, and A's consultation request to B."""
    patient = net.create("a", {"resourceType": "Patient", "name": [{"family": "Sun"}]})
    net.create("a", consent(patient, ("collect", None, None), ("disclose", net.b, None)))
    request = net.create(
        "a",
        {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "code": {"coding": [{"system": SERVICE, "code": "teleconsultation-online"}]},
            "subject": {"reference": f"Patient/{patient}"},
            "performer": [{"reference": f"Organization/{net.b}"}],
        },
    )
    return patient, request


def test_find_then_book_through_a_fhir_client(institutions: Network) -> None:
    net = institutions
    expert, slots, start, end = _slots(net, 3)
    patient, request = _request_to_b(net)
    client = net.fhirpy("a")
    found = client.execute(
        "Appointment/$find", method="get", params={"start": start, "end": end, "practitioner": f"Practitioner/{expert}"}
    )
    assert [e["resource"]["id"] for e in found["entry"]] == [f"proposed-{s}" for s in slots]
    held = client.execute(
        "Appointment/$hold",
        data={"resourceType": "Parameters", "parameter": [
            {"name": "appointment-reference", "valueReference": {"reference": f"Appointment/proposed-{slots[1]}"}}]},
    )  # fmt: skip
    assert held["entry"][0]["resource"]["status"] == "pending"
    booked = client.execute(
        "Appointment/$book",
        data={"resourceType": "Parameters", "parameter": [
            {"name": "appointment-resource", "resource": {
                "resourceType": "Appointment", "id": f"proposed-{slots[1]}", "status": "proposed",
                "basedOn": [{"reference": f"ServiceRequest/{request}"}]}},
            {"name": "patient-reference", "valueReference": {"reference": f"Patient/{patient}"}}]},
    )  # fmt: skip
    appointment = booked["entry"][0]["resource"]
    assert appointment["status"] == "booked"
    # B sees its expert's appointment; the slot is busy; $find offers the two others
    seen = net.fhirpy("b").resources("Appointment").search(_id=appointment["id"]).fetch_all()
    assert [a.id for a in seen] == [appointment["id"]]
    assert net.call("b", "GET", f"Slot/{slots[1]}").json()["status"] == "busy"
    again = client.execute("Appointment/$find", method="get", params={"start": start, "end": end})
    assert f"proposed-{slots[1]}" not in {e["resource"]["id"] for e in again.get("entry", [])}


def test_concurrent_bookings_over_two_workers_book_a_slot_once(institutions: Network) -> None:
    net = institutions
    _, slots, _, _ = _slots(net, 1)
    patient, request = _request_to_b(net)
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "appointment-resource", "resource": {
            "resourceType": "Appointment", "id": f"proposed-{slots[0]}", "status": "proposed",
            "basedOn": [{"reference": f"ServiceRequest/{request}"}],
            "participant": [{"actor": {"reference": f"Patient/{patient}"}}]}}]}  # fmt: skip
    workers = 12
    barrier = threading.Barrier(workers)
    codes: list[int] = []
    token = net.sessions["a"].token["access_token"]

    def book() -> None:
        with requests.Session() as session:  # a connection of its own: the two workers share them out
            barrier.wait()
            resp = session.post(
                f"{net.server.base}/Appointment/$book",
                data=json.dumps(body),
                headers={"Content-Type": "application/fhir+json", "Authorization": f"Bearer {token}"},
                timeout=30,
            )
            codes.append(resp.status_code)

    threads = [threading.Thread(target=book) for _ in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(codes) == [200] + [409] * (workers - 1), codes
    booked = net.fhirpy("a").resources("Appointment").search(slot=f"Slot/{slots[0]}").fetch_all()
    assert len(booked) == 1
