"""Follow-up plans (随访计划) after a consultation or a referral, and their reminders (随访提醒).

Why a CarePlan: MISSION.md R3 ends a consultation with planned follow-up and R9 gives the
community clinic a follow-up plan with reminders (002: 随访记录、随访计划、随访记录查询、随访提醒).
FHIR's plan of a patient's future care is the CarePlan, which any EHR already writes. A follow-up
plan is one with category consultation-workflow|follow-up, about a Patient; it names what it
follows in ``supportingInfo`` (the consultation or referral ServiceRequest, its report). Each
activity is one follow-up — a visit, a call, a re-examination — with its dates in
``activity.detail.scheduled[x]``:

* a Period: one follow-up at its start;
* a Timing's ``event``: one at each;
* a Timing's ``repeat``: one every ``period`` ``periodUnit`` from ``boundsPeriod.start``, for
  ``count`` follow-ups or until ``boundsPeriod.end``, or for as long as the plan is active
  (a chronic disease's follow-up).

What a follow-up found is recorded on its activity (``outcomeReference``: the Encounter,
Observation or QuestionnaireResponse; ``detail.status`` completed), so the plan is also the
follow-up record's index.

The server keeps two extensions on an active plan:

* ``follow-up-reminded-until``: every follow-up up to this instant has been reminded. It starts
  when the plan is written (a follow-up dated before is history, not something to remind), and
  only moves forward (a client's copy without it keeps the stored one);
* ``follow-up-due``: the next follow-up after that of an activity still open (not completed,
  cancelled, stopped or on hold), or none. The packaged SearchParameter ``follow-up-due`` indexes it:
  ``CarePlan?follow-up-due=le2026-12-14`` is the list of follow-ups due by then, and the
  reminder sweep reads only the plans it must remind.

Every worker's sweep (workflow/sweeps.py) takes each plan whose next follow-up falls within the
reminder lead (``--follow-up-reminder-hours``) and, in one transaction, writes one reminder per
follow-up in that window — a Communication (category reminder) of the plan's institution to the
activity's performers, the plan's author and the patient, based on the plan — and moves
``follow-up-reminded-until`` to the window's end under the optimistic lock: of two workers, one
reminds and the other's transaction rolls back (as workflow/overdue.py).
"""

from __future__ import annotations

import datetime as dt
import heapq
import logging
from collections.abc import Iterator
from typing import Any

from dateutil.relativedelta import relativedelta

from fhir_server.errors import FhirError
from fhir_server.search.engine import SearchEngine
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow.multicentre import WORKFLOW
from fhir_server.workflow.overdue import COMMUNICATION_CATEGORY
from fhir_server.workflow.sweeps import each, matching_ids

log = logging.getLogger(__name__)

FOLLOW_UP = "follow-up"
DUE_URL = "http://fhir.telefhir.cn/StructureDefinition/follow-up-due"
REMINDED_URL = "http://fhir.telefhir.cn/StructureDefinition/follow-up-reminded-until"
#: activity states whose follow-ups are still to happen
OPEN = frozenset({"not-started", "scheduled", "in-progress"})
#: Timing.repeat.periodUnit (UCUM) as a step
_UNITS = {
    "s": relativedelta(seconds=1),
    "min": relativedelta(minutes=1),
    "h": relativedelta(hours=1),
    "d": relativedelta(days=1),
    "wk": relativedelta(weeks=1),
    "mo": relativedelta(months=1),
    "a": relativedelta(years=1),
}
#: a repeat's occurrences looked at, at most, to find the next (ten years of daily follow-ups)
_MAX_STEPS = 3660
_UNSUPPORTED_REPEAT = ("dayOfWeek", "timeOfDay", "when", "offset", "boundsDuration", "boundsRange", "frequencyMax")


def is_follow_up(plan: dict[str, Any]) -> bool:
    return any(
        isinstance(c, dict) and c.get("system") == WORKFLOW and c.get("code") == FOLLOW_UP
        for concept in plan.get("category") or ()
        if isinstance(concept, dict)
        for c in concept.get("coding") or ()
    )


# -- the dates of a follow-up -----------------------------------------------------------------
class ScheduleError(ValueError):
    """A schedule the server cannot remind."""


def occurrences(detail: dict[str, Any]) -> Iterator[int]:
    """The instants (µs) of an activity's follow-ups, in order (empty: it has no dates)."""
    period = detail.get("scheduledPeriod")
    if isinstance(period, dict):
        if not isinstance(period.get("start"), str):
            raise ScheduleError("scheduledPeriod needs a start (when the follow-up is due)")
        return iter([_instant(period["start"])])
    timing = detail.get("scheduledTiming")
    if isinstance(timing, dict):
        events = sorted(_instant(e) for e in timing.get("event") or () if isinstance(e, str))
        repeat = timing.get("repeat")
        if repeat is None and not events:
            raise ScheduleError("scheduledTiming needs an event or a repeat")
        return heapq.merge(events, _repeat(repeat)) if isinstance(repeat, dict) else iter(events)
    if "scheduledString" in detail:
        raise ScheduleError("scheduledString has no date to remind: use scheduledPeriod or scheduledTiming")
    return iter(())


def _repeat(repeat: dict[str, Any]) -> Iterator[int]:
    unsupported = [k for k in _UNSUPPORTED_REPEAT if k in repeat]
    if unsupported:
        raise ScheduleError(f"Timing.repeat.{unsupported[0]} is not supported for a follow-up")
    if repeat.get("frequency", 1) != 1:
        raise ScheduleError("Timing.repeat.frequency must be 1: one follow-up per period")
    bounds = repeat.get("boundsPeriod") or {}
    if not isinstance(bounds.get("start"), str):
        raise ScheduleError("Timing.repeat needs boundsPeriod.start: the first follow-up")
    unit, period = repeat.get("periodUnit"), repeat.get("period")
    if unit not in _UNITS or not isinstance(period, int | float) or period <= 0:
        raise ScheduleError(f"Timing.repeat needs a period > 0 and a periodUnit, one of {', '.join(_UNITS)}")
    if unit in ("mo", "a") and period != int(period):
        raise ScheduleError("Timing.repeat.period in months or years must be whole")
    count = repeat.get("count")
    if count is not None and (not isinstance(count, int) or count < 1):
        raise ScheduleError("Timing.repeat.count must be a positive integer")
    first = dt.datetime.fromtimestamp(_instant(bounds["start"]) / 1e6, dt.UTC)
    end = parse_range(bounds["end"])[1] if isinstance(bounds.get("end"), str) else None
    step = _UNITS[unit] * int(period) if period == int(period) else relativedelta(seconds=period * _seconds(unit))
    return _steps(first, step, count, end)


def _steps(first: dt.datetime, step: relativedelta, count: int | None, end: int | None) -> Iterator[int]:
    for n in range(min(count or _MAX_STEPS, _MAX_STEPS)):
        at = int((first + step * n).timestamp() * 1_000_000)  # from the first: month ends do not drift
        if end is not None and at > end:
            return
        yield at


def _seconds(unit: str) -> float:
    return {"s": 1, "min": 60, "h": 3600, "d": 86400, "wk": 604800}[unit]


def _instant(text: str) -> int:
    try:
        return parse_range(text)[0]
    except ValueError:
        raise ScheduleError(f"{text!r} is not a FHIR date or dateTime") from None


# -- the plan as written ---------------------------------------------------------------------
def problems(plan: dict[str, Any]) -> list[str]:
    """What keeps ``plan`` from being a follow-up plan the server can remind (empty: nothing)."""
    found = []
    subject = (plan.get("subject") or {}).get("reference")
    if not isinstance(subject, str) or not subject.startswith("Patient/"):
        found.append("CarePlan.subject must reference the Patient followed up")
    scheduled = 0
    for n, activity in enumerate(plan.get("activity") or ()):
        detail = activity.get("detail") if isinstance(activity, dict) else None
        if not isinstance(detail, dict):
            continue
        try:
            scheduled += next(occurrences(detail), None) is not None
        except ScheduleError as exc:
            found.append(f"CarePlan.activity[{n}].detail: {exc}")
    if scheduled == 0 and not found:
        found.append(
            "a follow-up plan needs at least one activity.detail with a date (scheduledPeriod or scheduledTiming)"
        )
    return found


def reminded_until(plan: dict[str, Any]) -> int | None:
    for ext in plan.get("extension") or ():
        if isinstance(ext, dict) and ext.get("url") == REMINDED_URL and isinstance(ext.get("valueDateTime"), str):
            try:
                return parse_range(ext["valueDateTime"])[0]
            except ValueError:
                return None
    return None


def due(plan: dict[str, Any], after: int, until: int | None = None) -> Iterator[tuple[int, dict[str, Any], int]]:
    """(activity index, activity, instant) of each open activity's follow-up after ``after``
    (and up to ``until``), activity by activity."""
    for n, activity in enumerate(plan.get("activity") or ()):
        detail = activity.get("detail") if isinstance(activity, dict) else None
        if not isinstance(detail, dict) or detail.get("status") not in OPEN:
            continue
        for at in occurrences(detail):
            if until is not None and at > until:
                break
            if at > after:
                yield n, activity, at
                if until is None:
                    break


def _set_extension(plan: dict[str, Any], url: str, at: int | None) -> None:
    kept = [e for e in plan.get("extension") or () if not (isinstance(e, dict) and e.get("url") == url)]
    if at is not None:
        kept.append({"url": url, "valueDateTime": instant(at)})
    if kept:
        plan["extension"] = kept
    else:
        plan.pop("extension", None)


def before_write(session: Session, res_id: str, plan: dict[str, Any] | None, current: StoredVersion | None) -> None:
    """Check a follow-up plan and keep its reminder state (the two server extensions)."""
    if plan is None or not is_follow_up(plan):
        return
    found = problems(plan)
    if found:
        raise FhirError("processing", f"CarePlan/{res_id}: {'; '.join(found)}", "CarePlan")
    stored = reminded_until(current.resource()) if current is not None and not current.deleted else None
    until = max((x for x in (stored, reminded_until(plan)) if x is not None), default=now_us())
    _set_extension(plan, REMINDED_URL, until)
    following = [at for _, _, at in due(plan, until)] if plan.get("status") == "active" else []
    _set_extension(plan, DUE_URL, min(following, default=None))


def install(repo: Repository) -> None:
    repo.write_hooks["CarePlan"] = before_write


# -- the reminders ---------------------------------------------------------------------------
class FollowUpReminders:
    """Reminds the follow-ups due within ``lead_hours`` (a job of workflow/sweeps.py)."""

    def __init__(self, repo: Repository, search: SearchEngine, lead_hours: float = 24.0) -> None:
        self.repo = repo
        self.search = search
        self.lead_us = int(lead_hours * 3600 * 1_000_000)

    def __call__(self, now: int) -> int:
        return self.sweep(now)

    def sweep(self, now: int | None = None) -> int:
        """Remind every follow-up due by ``now`` + the lead; the number of reminders written."""
        horizon = (now_us() if now is None else now) + self.lead_us
        params = [
            ("status", "active"),
            ("category", f"{WORKFLOW}|{FOLLOW_UP}"),
            ("follow-up-due", f"le{instant(horizon)}"),
        ]
        plans = matching_ids(self.repo, self.search, "CarePlan", params)
        return each(plans, lambda plan_id: self._remind(plan_id, horizon), "follow-up CarePlan")

    def _remind(self, plan_id: str, horizon: int) -> int:
        with self.repo.session(write=True) as session:
            current = session.read_current("CarePlan", plan_id)
            if current is None or current.deleted:
                return 0
            plan = current.resource()
            after = reminded_until(plan)
            if plan.get("status") != "active" or not is_follow_up(plan) or after is None or after >= horizon:
                return 0
            reminders = [
                _reminder(plan_id, plan, activity, at, current.tenant) for _, activity, at in due(plan, after, horizon)
            ]
            _set_extension(plan, REMINDED_URL, horizon)
            session.update(current, plan)  # conflicts if another worker reminded it meanwhile
            with session.acting(institution_access(current.tenant)):  # the plan's institution's record
                for reminder in reminders:
                    session.create(reminder)
        if reminders:
            log.info("CarePlan/%s: %d follow-up reminder(s)", plan_id, len(reminders))
        return len(reminders)


def _concept_text(concept: dict[str, Any]) -> str | None:
    """A CodeableConcept's text, else its first coding's display."""
    return concept.get("text") or next((c["display"] for c in concept.get("coding") or () if c.get("display")), None)


def _reminder(
    plan_id: str, plan: dict[str, Any], activity: dict[str, Any], at: int, owner: str | None
) -> dict[str, Any]:
    detail = activity.get("detail") or {}
    what = detail.get("description") or _concept_text(detail.get("code") or {}) or "随访 follow-up"
    when = instant(at)
    recipients: list[dict[str, Any]] = []
    for ref in [*(detail.get("performer") or ()), plan.get("author"), plan.get("subject")]:
        if isinstance(ref, dict) and isinstance(ref.get("reference"), str) and ref not in recipients:
            recipients.append({"reference": ref["reference"]})
    reminder: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": "reminder"}]}],
        "subject": {"reference": plan["subject"]["reference"]},
        "basedOn": [{"reference": f"CarePlan/{plan_id}"}],  # searchable: Communication?based-on=CarePlan/…
        "about": [{"reference": f"CarePlan/{plan_id}"}],
        "sent": instant(now_us()),
        "recipient": recipients,
        "payload": [{"contentString": f"随访提醒：{what}，计划时间 {when}。 Follow-up reminder: {what}, due {when}."}],
    }
    if owner is not None:
        reminder["sender"] = {"reference": f"Organization/{owner}"}
    return reminder
