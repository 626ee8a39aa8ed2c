"""The dates of a follow-up activity (workflow/follow_up.py): a wrong date means a reminder sent on
the wrong day or never, so each schedule shape and each refusal is pinned here."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from fhir_server.util.clock import instant
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow.follow_up import ScheduleError, due, occurrences, problems

WORKFLOW = "http://fhir.telefhir.cn/CodeSystem/consultation-workflow"


def _at(text: str) -> int:
    return parse_range(text)[0]


def _dates(detail: dict[str, Any], n: int = 10) -> list[str]:
    return [instant(at)[:10] for at in itertools.islice(occurrences(detail), n)]


def test_a_period_is_one_follow_up_at_its_start() -> None:
    assert _dates({"scheduledPeriod": {"start": "2026-12-20T09:00:00+08:00", "end": "2026-12-20"}}) == ["2026-12-20"]


def test_events_and_a_repeat_merge_in_order() -> None:
    timing = {
        "event": ["2027-01-20", "2027-01-02"],
        "repeat": {"boundsPeriod": {"start": "2027-01-01"}, "period": 1, "periodUnit": "wk", "count": 3},
    }
    assert _dates({"scheduledTiming": timing}) == ["2027-01-01", "2027-01-02", "2027-01-08", "2027-01-15", "2027-01-20"]


def test_a_monthly_repeat_counts_from_the_first_date_so_month_ends_do_not_drift() -> None:
    repeat = {"boundsPeriod": {"start": "2027-01-31"}, "period": 1, "periodUnit": "mo", "count": 4}
    assert _dates({"scheduledTiming": {"repeat": repeat}}) == ["2027-01-31", "2027-02-28", "2027-03-31", "2027-04-30"]


def test_a_repeat_ends_at_its_bounds_or_goes_on_while_the_plan_is_active() -> None:
    bounded = {"boundsPeriod": {"start": "2027-01-01", "end": "2027-03-01"}, "period": 1, "periodUnit": "mo"}
    assert _dates({"scheduledTiming": {"repeat": bounded}}) == ["2027-01-01", "2027-02-01", "2027-03-01"]
    quarterly = {"boundsPeriod": {"start": "2027-01-01"}, "period": 3, "periodUnit": "mo"}
    assert _dates({"scheduledTiming": {"repeat": quarterly}}, 5)[-1] == "2028-01-01"
    half_days = {"boundsPeriod": {"start": "2027-01-01T00:00:00Z"}, "period": 1.5, "periodUnit": "d", "count": 3}
    assert [instant(a) for a in occurrences({"scheduledTiming": {"repeat": half_days}})][1].startswith(
        "2027-01-02T12:00:00"
    )


@pytest.mark.parametrize(
    ("detail", "says"),
    [
        ({"scheduledString": "两周后"}, "scheduledString has no date"),
        ({"scheduledPeriod": {"end": "2027-01-01"}}, "needs a start"),
        ({"scheduledTiming": {}}, "needs an event or a repeat"),
        ({"scheduledTiming": {"repeat": {"period": 1, "periodUnit": "d"}}}, "boundsPeriod.start"),
        ({"scheduledTiming": {"repeat": {"boundsPeriod": {"start": "2027-01-01"}, "period": 1,
                                         "periodUnit": "d", "frequency": 2}}}, "frequency must be 1"),
        ({"scheduledTiming": {"repeat": {"boundsPeriod": {"start": "2027-01-01"}, "period": 1,
                                         "periodUnit": "d", "dayOfWeek": ["mon"]}}}, "dayOfWeek is not supported"),
        ({"scheduledTiming": {"repeat": {"boundsPeriod": {"start": "2027-01-01"}, "period": 0,
                                         "periodUnit": "d"}}}, "period > 0"),
        ({"scheduledTiming": {"repeat": {"boundsPeriod": {"start": "2027-01-01"}, "period": 1.5,
                                         "periodUnit": "mo"}}}, "must be whole"),
        ({"scheduledTiming": {"event": ["next week"]}}, "not a FHIR date"),
    ],
)  # fmt: skip
def test_schedules_the_server_cannot_remind_are_refused_saying_why(detail: dict[str, Any], says: str) -> None:
    with pytest.raises(ScheduleError, match=says):
        list(occurrences(detail))


def _plan(*details: dict[str, Any], subject: str = "Patient/p1") -> dict[str, Any]:
    return {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "category": [{"coding": [{"system": WORKFLOW, "code": "follow-up"}]}],
        "subject": {"reference": subject},
        "activity": [{"detail": d} for d in details],
    }


def test_a_plan_is_refused_without_a_patient_or_a_dated_activity() -> None:
    dated = {"status": "scheduled", "scheduledPeriod": {"start": "2027-01-01"}}
    assert problems(_plan(dated)) == []
    assert "subject must reference the Patient" in problems(_plan(dated, subject="Group/g"))[0]
    assert "at least one activity.detail with a date" in problems(_plan({"status": "scheduled"}))[0]
    assert problems(_plan(dated, {"scheduledString": "later"}))[0].startswith("CarePlan.activity[1].detail:")


def test_only_open_activities_are_due_each_from_after_the_mark() -> None:
    weekly = {"boundsPeriod": {"start": "2027-01-01"}, "period": 1, "periodUnit": "wk", "count": 4}
    plan = _plan(
        {"status": "scheduled", "scheduledTiming": {"repeat": weekly}},
        {"status": "completed", "scheduledPeriod": {"start": "2027-01-02"}},
        {"status": "not-started", "scheduledPeriod": {"start": "2027-01-10"}},
    )
    after = _at("2027-01-05")
    assert [(n, instant(at)[:10]) for n, _, at in due(plan, after)] == [(0, "2027-01-08"), (2, "2027-01-10")]
    window = [(n, instant(at)[:10]) for n, _, at in due(plan, after, _at("2027-01-20"))]
    assert window == [(0, "2027-01-08"), (0, "2027-01-15"), (2, "2027-01-10")]
