"""Invitations left unanswered past their deadline: flagged once, and their institution reminded.

Why a sweep in every worker: a deadline passes without any request to notice it, so someone has to
look; any worker may, and several do, so a flag and its reminder must be written once whoever
looks. Each overdue invitation is handled in its own transaction that re-reads it and updates it
under the optimistic lock (storage/repository.py ``_replace``): of two workers that saw it, one
flags it and writes the reminder, the other's update conflicts and its transaction — reminder
included — rolls back. An invitation answered meanwhile is no longer ``applied`` and is left alone.

The flag is a tag (``meta.tag`` consultation-workflow|invitation-overdue), so the leader finds
them with ``Task?_tag=…|invitation-overdue``; the reminder is a ``Communication`` (category
reminder) from the leader's institution to the invited one, about the Task, which the invited
institution's subscriptions announce like any change it may see.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from sqlalchemy.exc import DBAPIError

from fhir_server.errors import FhirError
from fhir_server.search.engine import Cursor, SearchEngine
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Repository
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import machine as m
from fhir_server.workflow.multicentre import MULTICENTRE, WORKFLOW, deadline_us

log = logging.getLogger(__name__)
OVERDUE = "invitation-overdue"
COMMUNICATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/communication-category"
_PAGE = 200


class OverdueSweep:
    """Looks for overdue invitations every ``interval`` seconds, in a thread of the worker."""

    def __init__(self, repo: Repository, search: SearchEngine, interval: float = 60.0) -> None:
        self.repo = repo
        self.search = search
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0:
            return
        self._thread = threading.Thread(target=self._run, name="overdue-invitations", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sweep()
            except Exception:  # the next pass tries again; a failure must not end the thread
                log.exception("overdue invitation sweep failed")

    def sweep(self, now: int | None = None) -> int:
        """Flag and remind every invitation overdue at ``now``; the number this call flagged."""
        now = now_us() if now is None else now
        flagged = 0
        for task_id in self._overdue(now):
            try:
                flagged += self._flag(task_id, now)
            except FhirError as exc:  # changed meanwhile: answered, or flagged by another worker
                log.debug("invitation Task/%s not flagged: %s", task_id, exc)
            except DBAPIError as exc:  # e.g. a deadlock with another worker's pass: the next pass looks again
                log.warning("invitation Task/%s not flagged this time: %s", task_id, exc)
        return flagged

    def _overdue(self, now: int) -> list[str]:
        params = [
            ("code", f"{m.SERVICE_TYPES}|{MULTICENTRE}"),
            ("business-status", f"{m.SYSTEM}|{m.INITIAL}"),
            ("_tag:not", f"{WORKFLOW}|{OVERDUE}"),
        ]
        found: list[str] = []
        cursor = None
        with self.repo.session(side=True) as session:
            while True:
                page = self.search.search(session, "Task", params, _PAGE, cursor)
                for version in page.versions:
                    due = deadline_us(version.resource())
                    if due is not None and due < now:
                        found.append(version.res_id)
                if not page.has_next or not page.versions:
                    return found
                cursor = Cursor(page.keys[-1], page.versions[-1].rid)

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
