"""When a notification could not be delivered: retries with back-off, then a failure notice.

R19 (001 §5.3.1, §7.5): a notification is retried at most three times; then its sender learns
that it did not arrive — the institution whose change it announced (else the subscriber) gets a
``Communication`` saying which notification, to whom and why, the Task it was about gets a note,
and the Subscription turns ``error`` with the reason (R4: the server sets ``error`` when it cannot
deliver), so the subscriber sees it too. An audit record is written for every final outcome
(notify/dispatcher.py). The notice's own writes announce nothing (``Session.notify``): they would
otherwise go to the same failing endpoint and be noticed again.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.notify.outbox import Notification
from fhir_server.notify.subscriptions import Subscription
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Repository
from fhir_server.util.clock import instant, now_us


@dataclass(frozen=True)
class RetryPolicy:
    #: seconds before each retry: three retries by default
    delays: tuple[float, ...] = (1.0, 4.0, 16.0)

    def next_delay(self, attempts_done: int) -> float | None:
        """The wait before the next attempt after ``attempts_done`` failed ones; None: give up."""
        return self.delays[attempts_done - 1] if attempts_done <= len(self.delays) else None


def notice_failure(repo: Repository, sub: Subscription, row: Notification, error: str) -> None:
    """Record the failed delivery: Subscription ``error``, a Communication, a Task note."""
    attempts = row.attempts + 1
    text = (
        f"通知发送失败 Notification {row.notification_id} (event {row.event_number} of Subscription/{sub.id}, "
        f"{sub.channel} {sub.endpoint or ''}) was not delivered after {attempts} attempts: {error}"
    )
    focus = row.focus.split("/_history")[0] if row.focus else None
    with repo.session(write=True, side=True) as session:  # the dispatcher's work: the side pool
        session.notify = False
        current = session.read_current("Subscription", sub.id)
        if current is not None and not current.deleted:
            content = current.resource()
            if content.get("status") in ("active", "requested"):  # a failed handshake too
                content["status"] = "error"
                content["error"] = text[:1000]
                session.update(current, content)
        recipient = row.origin or sub.owner
        communication: dict[str, Any] = {
            "resourceType": "Communication",
            "status": "completed",
            "category": [{"text": "notification-failure"}],
            "sent": instant(now_us()),
            "sender": {"reference": "Device/telefhir"},
            "payload": [{"contentString": text}],
        }
        if focus:
            communication["about"] = [{"reference": focus}]
        if recipient:
            communication["recipient"] = [{"reference": f"Organization/{recipient}"}]
        # no subject: the notice is the recipient's own record, not data about the patient
        with session.acting(institution_access(recipient)):
            session.create(communication)
        if focus and focus.startswith("Task/"):
            task = session.read_current("Task", focus.split("/", 1)[1])
            if task is not None and not task.deleted:
                content = task.resource()
                content.setdefault("note", []).append(
                    {"authorString": "telefhir", "time": instant(now_us()), "text": text}
                )
                session.update(task, content)
