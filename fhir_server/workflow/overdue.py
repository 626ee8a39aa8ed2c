"""Invitations left unanswered past their deadline: flagged once, and their institution reminded.

Why every worker looks (workflow/sweeps.py): a deadline passes without any request to notice it,
and a flag and its reminder must be written once whoever looks. Each overdue invitation is
handled in its own transaction that re-reads it and updates it under the optimistic lock
(storage/repository.py ``_replace``): of two workers that saw it, one flags it and writes the
reminder, the other's update conflicts and its transaction — reminder included — rolls back.
An invitation answered meanwhile is no longer ``applied`` and is left alone.

The flag is a tag (``meta.tag`` consultation-workflow|invitation-overdue), so the leader finds
them with ``Task?_tag=…|invitation-overdue``; the reminder is a ``Communication`` (category
reminder) from the leader's institution to the invited one, about the Task, which the invited
institution's subscriptions announce like any change it may see.
"""

from __future__ import annotations

import logging
from typing import Any

from fhir_server.search.engine import SearchEngine
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Repository
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import machine as m
from fhir_server.workflow.multicentre import MULTICENTRE, WORKFLOW, deadline_us
from fhir_server.workflow.sweeps import each, matching_ids

log = logging.getLogger(__name__)
OVERDUE = "invitation-overdue"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


class OverdueInvitations:
    """Finds the overdue invitations and flags and reminds each (a job of workflow/sweeps.py)."""

    def __init__(self, repo: Repository, search: SearchEngine) -> None:
        self.repo = repo
        self.search = search

    def __call__(self, now: int) -> int:
        return self.sweep(now)

    def sweep(self, now: int | None = None) -> int:
        """Flag and remind every invitation overdue at ``now``; the number this call flagged."""
        now = now_us() if now is None else now
        return each(self._overdue(now), lambda task_id: self._flag(task_id, now), "overdue invitation Task")

    def _overdue(self, now: int) -> list[str]:
        params = [
            ("code", f"{m.SERVICE_TYPES}|{MULTICENTRE}"),
            ("business-status", f"{m.SYSTEM}|{m.INITIAL}"),
            ("_tag:not", f"{WORKFLOW}|{OVERDUE}"),
        ]

        def overdue(task: dict[str, Any]) -> bool:
            due = deadline_us(task)
            return due is not None and due < now

        return matching_ids(self.repo, self.search, "Task", params, overdue)

    def _flag(self, task_id: str, now: int) -> int:
        with self.repo.session(write=True, side=True) as session:
            current = session.read_current("Task", task_id)
            if current is None or current.deleted:
                return 0
            task = current.resource()
            tags = task.setdefault("meta", {}).setdefault("tag", [])
            if m.business_status(task) != m.INITIAL or any(
                t.get("system") == WORKFLOW and t.get("code") == OVERDUE for t in tags
            ):
                return 0
            tags.append({"system": WORKFLOW, "code": OVERDUE, "display": "邀请逾期未答复 invitation overdue"})
            session.update(current, task)
            reminder = _reminder(task_id, task, now)
            # the invited institution's own record (it has no patient to be shared through)
            invited = institutions(session, [task.get("owner")])
            with session.acting(institution_access(invited[0] if invited else None)):
                session.create(reminder)
        log.info("invitation Task/%s is overdue: flagged and reminded", task_id)
        return 1


def _reminder(task_id: str, task: dict[str, Any], now: int) -> dict[str, Any]:
    due = ((task.get("restriction") or {}).get("period") or {}).get("end")
    number = (task.get("groupIdentifier") or {}).get("value") or ""
    text = (
        f"会诊邀请 {number} 已超过答复期限 {due}，请尽快答复。"
        f" The invitation Task/{task_id} {number} was due to be answered by {due}: please accept or decline it."
    )
    reminder: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": "reminder"}]}],
        "about": [{"reference": f"Task/{task_id}"}],
        "sent": instant(now),
        "payload": [{"contentString": text}],
    }
    if task.get("owner"):
        reminder["recipient"] = [task["owner"]]
    if task.get("requester"):
        reminder["sender"] = task["requester"]
    return reminder
