"""Tasks left unanswered past their deadline — multi-centre invitations (24 h, 001 §7.2 c), data
requests (48 h before the consultation, §7.2 f) and corrections (12 h, §7.5 b) — flagged once,
and the institution that owes the answer reminded.

Why every worker looks (workflow/sweeps.py): a deadline passes without any request to notice it,
and a flag and its reminder must be written once whoever looks. Each overdue Task is handled in
its own transaction that re-reads it and updates it under the optimistic lock
(storage/repository.py ``_replace``): of two workers that saw it, one flags it and writes the
reminder, the other's update conflicts and its transaction — reminder included — rolls back. A
Task answered meanwhile (an invitation no longer ``applied``, a data request completed, rejected or
cancelled) is left alone.

The flag is a tag (``meta.tag`` consultation-workflow|invitation-overdue or data-overdue), so the
leader finds them with ``Task?_tag=…|invitation-overdue``; the reminder is a ``Communication``
(category reminder, ``basedOn`` and ``about`` the Task) from the Task's requester to its owner,
stored as the owner's record, which its subscriptions announce like any change it may see.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fhir_server.search.engine import SearchEngine
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Repository
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import machine as m
from fhir_server.workflow.data_requests import DATA_CORRECTION, DATA_REQUEST, NOT_FINISHED
from fhir_server.workflow.multicentre import MULTICENTRE, WORKFLOW, deadline_us
from fhir_server.workflow.sweeps import each, matching_ids

log = logging.getLogger(__name__)
OVERDUE = "invitation-overdue"
DATA_OVERDUE = "data-overdue"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"


@dataclass(frozen=True)
class Deadline:
    """One kind of Task with a deadline: how to find the open ones, and what to say when late."""

    name: str
    #: the search for open Tasks of the kind not yet flagged
    params: tuple[tuple[str, str], ...]
    #: still open (re-checked on the current version before flagging)
    open: Callable[[dict[str, Any]], bool]
    tag: str
    display: str
    #: (the Task, its id, its number or "", its deadline) -> the reminder's text
    text: Callable[[dict[str, Any], str, str, str], str]


INVITATIONS = Deadline(
    "invitation",
    (
        ("code", f"{m.SERVICE_TYPES}|{MULTICENTRE}"),
        ("business-status", f"{m.SYSTEM}|{m.INITIAL}"),
        ("_tag:not", f"{WORKFLOW}|{OVERDUE}"),
    ),
    lambda task: m.business_status(task) == m.INITIAL,
    OVERDUE,
    "邀请逾期未答复 invitation overdue",
    lambda task, task_id, number, due: (
        f"会诊邀请 {number} 已超过答复期限 {due}，请尽快答复。"
        f" The invitation Task/{task_id} {number} was due to be answered by {due}: please accept or decline it."
    ),
)
DATA = Deadline(
    "data request",
    (
        ("code", f"{WORKFLOW}|{DATA_REQUEST},{WORKFLOW}|{DATA_CORRECTION}"),
        ("status", ",".join(NOT_FINISHED)),
        ("_tag:not", f"{WORKFLOW}|{DATA_OVERDUE}"),
    ),
    lambda task: task.get("status") in NOT_FINISHED,
    DATA_OVERDUE,
    "数据逾期未提供 data overdue",
    lambda task, task_id, number, due: (
        f"会诊 {number} 所请求的数据已超过提供期限 {due}，请尽快提供。"
        f" The data asked for by Task/{task_id} {number} was due by {due}"
        " (at least 48 hours before the consultation): please provide it, or decline the request."
    ),
)


class OverdueTasks:
    """Finds the overdue Tasks of each kind and flags and reminds each (a job of workflow/sweeps.py)."""

    def __init__(
        self, repo: Repository, search: SearchEngine, kinds: tuple[Deadline, ...] = (INVITATIONS, DATA)
    ) -> None:
        self.repo = repo
        self.search = search
        self.kinds = kinds

    def __call__(self, now: int) -> int:
        return self.sweep(now)

    def sweep(self, now: int | None = None) -> int:
        """Flag and remind every Task overdue at ``now``; the number this call flagged."""
        now = now_us() if now is None else now
        flagged = 0
        for kind in self.kinds:
            late = self._overdue(kind, now)
            flagged += each(late, lambda task_id: self._flag(kind, task_id, now), f"overdue {kind.name} Task")  # noqa: B023
        return flagged

    def _overdue(self, kind: Deadline, now: int) -> list[str]:
        def overdue(task: dict[str, Any]) -> bool:
            due = deadline_us(task)
            return due is not None and due < now

        return matching_ids(self.repo, self.search, "Task", list(kind.params), overdue)

    def _flag(self, kind: Deadline, task_id: str, now: int) -> int:
        with self.repo.session(write=True) as session:
            current = session.read_current("Task", task_id)
            if current is None or current.deleted:
                return 0
            task = current.resource()
            tags = task.setdefault("meta", {}).setdefault("tag", [])
            if not kind.open(task) or any(t.get("system") == WORKFLOW and t.get("code") == kind.tag for t in tags):
                return 0
            tags.append({"system": WORKFLOW, "code": kind.tag, "display": kind.display})
            session.update(current, task)
            reminder = _reminder(kind, task_id, task, now)
            # the reminded institution's own record (it has no patient to be shared through)
            reminded = institutions(session, [task.get("owner")])
            with session.acting(institution_access(reminded[0] if reminded else None)):
                session.create(reminder)
        log.info("%s Task/%s is overdue: flagged and reminded", kind.name, task_id)
        return 1


def _reminder(kind: Deadline, task_id: str, task: dict[str, Any], now: int) -> dict[str, Any]:
    due = ((task.get("restriction") or {}).get("period") or {}).get("end") or ""
    number = (task.get("groupIdentifier") or {}).get("value") or ""
    reminder: dict[str, Any] = {
        "resourceType": "Communication",
        "status": "completed",
        "category": [{"coding": [{"system": COMMUNICATION_CATEGORY, "code": "reminder"}]}],
        "basedOn": [{"reference": f"Task/{task_id}"}],
        "about": [{"reference": f"Task/{task_id}"}],
        "sent": instant(now),
        "payload": [{"contentString": kind.text(task, task_id, number, due)}],
    }
    if task.get("owner"):
        reminder["recipient"] = [task["owner"]]
    if task.get("requester"):
        reminder["sender"] = task["requester"]
    return reminder
