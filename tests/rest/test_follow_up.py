"""Follow-up after a consultation (issue 6, items 1 and 4; R3, R9): the requester plans the
follow-ups as a CarePlan, the server keeps when the next one is due (searchable), and the sweep
of every worker reminds each follow-up once — whichever of them looks — to the performers, the
author and the patient. On SQLite and PostgreSQL, with real tokens."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow.follow_up import DUE_URL, REMINDED_URL, FollowUpReminders
from tests.rest.workflow_network import WORKFLOW, Net, concurrently, consultation, network

DAY_US = 86_400_000_000


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory)


def _day(start: int, days: float) -> str:
    return instant(start + int(days * DAY_US))


def _extension(plan: dict[str, Any], url: str) -> int | None:
    found = [e["valueDateTime"] for e in plan.get("extension", []) if e["url"] == url]
    return parse_range(found[0])[0] if found else None


def _plan(patient: str, request: str, start: int) -> dict[str, Any]:
    """A visit in 3 days, a call every 2 weeks from day 10 (three calls), one already done."""
    return {
        "resourceType": "CarePlan", "status": "active", "intent": "plan",
        "category": [{"coding": [{"system": WORKFLOW, "code": "follow-up"}]}],
        "title": "会诊后随访 Follow-up after the consultation",
        "subject": {"reference": f"Patient/{patient}"},
        "author": {"reference": "Practitioner/a-doc"},
        "supportingInfo": [{"reference": f"ServiceRequest/{request}"}],
        "activity": [
            {"detail": {"status": "scheduled", "description": "门诊复诊 Outpatient revisit",
                        "performer": [{"reference": "Practitioner/a-doc"}],
                        "scheduledPeriod": {"start": _day(start, 3)}}},
            {"detail": {"status": "scheduled", "description": "电话随访 Phone follow-up",
                        "scheduledTiming": {"repeat": {"boundsPeriod": {"start": _day(start, 10)},
                                                       "period": 2, "periodUnit": "wk", "count": 3}}}},
            {"detail": {"status": "completed", "description": "出院宣教 Discharge teaching",
                        "scheduledPeriod": {"start": _day(start, 1)}}},
        ],
    }  # fmt: skip


def _reminders(n: Net, plan_id: str) -> list[dict[str, Any]]:
    found = n.call("a-doc", "GET", f"Communication?based-on=CarePlan/{plan_id}&_count=50").get_json()
    return [e["resource"] for e in found.get("entry", [])]


def test_follow_ups_are_planned_searchable_by_due_date_and_each_reminded_once(net: Net) -> None:
    n = net
    _, request = consultation(n)
    patient = request["subject"]["reference"].split("/")[1]
    start = now_us()
    plan = n.post("a-doc", _plan(patient, request["id"], start))
    # the server keeps what is reminded and the next follow-up due (the visit in three days)
    assert start - 60_000_000 < _extension(plan, REMINDED_URL) <= now_us()  # type: ignore[operator]
    assert _extension(plan, DUE_URL) == parse_range(_day(start, 3))[0]
    in_two, in_four = _day(start, 2)[:10], _day(start, 4)[:10]
    by_due = f"CarePlan?follow-up-due=le{in_four}&subject=Patient/{patient}"
    assert [e["resource"]["id"] for e in n.call("a-doc", "GET", by_due).get_json()["entry"]] == [plan["id"]]
    assert (
        "entry" not in n.call("a-doc", "GET", f"CarePlan?follow-up-due=le{in_two}&subject=Patient/{patient}").get_json()
    )

    sweep = FollowUpReminders(n.services.repo, n.services.search, lead_hours=24)
    assert sweep.sweep(start) == 0  # nothing due within a day
    later = start + int(2.5 * DAY_US)  # the visit is 12 hours away
    assert sum(concurrently(lambda: sweep.sweep(later))) == 1  # four workers looked; the visit was reminded once
    assert sweep.sweep(later) == 0
    (reminder,) = _reminders(n, plan["id"])
    assert reminder["category"][0]["coding"][0]["code"] == "reminder"
    assert reminder["sender"] == {"reference": "Organization/wf-a"}
    assert {r["reference"] for r in reminder["recipient"]} == {"Practitioner/a-doc", f"Patient/{patient}"}
    assert (
        "门诊复诊" in reminder["payload"][0]["contentString"]
        and _day(start, 3) in reminder["payload"][0]["contentString"]
    )
    stored = n.call("a-doc", "GET", f"CarePlan/{plan['id']}").get_json()
    assert _extension(stored, DUE_URL) == parse_range(_day(start, 10))[0]  # the first call comes next

    # the visit happens: the client records it without the server's extensions; they are kept
    ambulatory = {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}
    visit = {"resourceType": "Encounter", "status": "finished", "class": ambulatory, "subject": request["subject"]}
    encounter = n.post("a-doc", visit)
    stored.pop("extension")
    stored["activity"][0]["detail"]["status"] = "completed"
    stored["activity"][0]["outcomeReference"] = [{"reference": f"Encounter/{encounter['id']}"}]
    updated = n.call("a-doc", "PUT", f"CarePlan/{plan['id']}", stored)
    assert updated.status_code == 200, updated.get_json()
    assert _extension(updated.get_json(), REMINDED_URL) == later + DAY_US
    # a month on, the two calls of days 10 and 24 are due: each reminded, the third one next
    assert sweep.sweep(start + 30 * DAY_US) == 2
    texts = [r["payload"][0]["contentString"] for r in _reminders(n, plan["id"])]
    assert len(texts) == 3 and sum("电话随访" in t for t in texts) == 2
    stored = n.call("a-doc", "GET", f"CarePlan/{plan['id']}").get_json()
    assert _extension(stored, DUE_URL) == parse_range(_day(start, 38))[0]
    # put on hold: nothing is due, nothing reminded
    stored["status"] = "on-hold"
    held = n.call("a-doc", "PUT", f"CarePlan/{plan['id']}", stored).get_json()
    assert _extension(held, DUE_URL) is None
    assert sweep.sweep(start + 60 * DAY_US) == 0


def test_a_follow_up_plan_the_server_cannot_remind_is_refused_saying_why(net: Net) -> None:
    n = net
    _, request = consultation(n)
    patient = request["subject"]["reference"].split("/")[1]
    plan = _plan(patient, request["id"], now_us())
    plan["activity"][1]["detail"]["scheduledTiming"]["repeat"].pop("boundsPeriod")
    resp = n.call("a-doc", "POST", "CarePlan", plan)
    assert resp.status_code == 422
    assert "activity[1].detail: Timing.repeat needs boundsPeriod.start" in resp.get_json()["issue"][0]["diagnostics"]
    undated = _plan(patient, request["id"], now_us())
    undated["activity"] = [{"detail": {"status": "scheduled", "scheduledString": "两周后 in two weeks"}}]
    resp = n.call("a-doc", "POST", "CarePlan", undated)
    assert resp.status_code == 422 and "scheduledString has no date" in resp.get_json()["issue"][0]["diagnostics"]
    # a CarePlan that is not a follow-up plan is not the server's to check
    other = {**undated, "category": [{"text": "lifestyle"}]}
    assert n.call("a-doc", "POST", "CarePlan", other).status_code == 201
    assert "entry" not in n.call("a-doc", "GET", f"CarePlan?subject=Patient/{patient}&follow-up-due=le2100").get_json()
