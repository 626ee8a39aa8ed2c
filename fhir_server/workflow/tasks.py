"""The Task state machine enforced on every write path, and each step recorded.

Why a repository write hook: a Task changes by PUT, PATCH (JSON or FHIRPath Patch), a conditional
update or an entry of a transaction Bundle, and each of these reaches ``Session.update``; a hook
there judges them all alike (ARCHITECTURE.md: "every entrance uses the same path").

What it enforces on a Task whose ``businessStatus`` is one of ours (workflow/machine.py):

* the step from the stored business status to the new one is in the machine, else **409** naming
  the steps allowed from there; the party taking it (requester, performer or platform) is one the
  machine allows for that step, else **403** saying who may;
* ``Task.status`` goes with the business status, and a rejection has a ``statusReason``: the
  consultation-task profile says so (cn-task-1, cn-task-2), and the ImplementationGuide's global
  rule applies it to every Task with our business status (422);
* an institution creates a Task at ``applied``; the platform's own clients may create one in any
  state (migrations, the demo network);
* the **performer** (the institution the Task's ``owner`` names) and the platform may update the
  requester's Task — it is a shared work item, the one exception to "only the owner changes a row"
  (security/tenancy.py ``co_owners``) — but only its progress: ``status``, ``businessStatus``,
  ``statusReason``, ``output``, ``note``, ``lastModified``, ``executionPeriod``; everything else
  stays as the requester wrote it, whatever the request body says.

Two more kinds of Task pass the same hook: data and correction requests of a multi-centre
consultation, judged by workflow/data_requests.py on ``Task.status``; and a multi-centre
invitation written without a deadline is given one (workflow/multicentre.py). The step to
``evaluated`` carries the requester's evaluation (workflow/evaluation.py).

Each step is recorded: the Task keeps its history (every version), and a ``Provenance`` of the new
version (its activity the new business status, its agent who took the step for which institution)
is written in the same transaction. The audit record of the update is written as for any update.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import organization_id
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import data_requests, evaluation
from fhir_server.workflow import machine as m
from fhir_server.workflow.multicentre import ensure_deadline
from fhir_server.workflow.shared_records import as_stored, keep_owners_part, provenance_agent

#: what the performer may change in the requester's Task
PERFORMER_WRITABLE = frozenset(
    {"status", "businessStatus", "statusReason", "output", "note", "lastModified", "executionPeriod"}
)


class TaskRules:
    def __init__(self, platform_organization: str | None = None, invitation_hours: float = 24.0) -> None:
        #: the institution that runs the platform (its pre-review), as an Organization id
        self.platform_organization = organization_id(platform_organization)
        #: a multi-centre invitation is answered within this many hours (001 §7.2 c)
        self.invitation_hours = invitation_hours

    def install(self, repo: Repository) -> None:
        repo.write_hooks["Task"] = self.before_write
        repo.after_write.setdefault("Task", []).append(self.after_write)
        repo.co_owners["Task"] = self.co_owners

    # -- who is acting --------------------------------------------------------------------
    def co_owners(self, session: Session, current: StoredVersion) -> set[str]:
        """The institutions besides its creator that may update a Task: its performer's, and the
        platform's (pre-review)."""
        stored = as_stored(current)
        if m.business_status(stored) is None and data_requests.task_type(stored) is None:
            return set()
        found = set(institutions(session, [stored.get("owner")]))
        if self.platform_organization is not None:
            found.add(self.platform_organization)
        return found

    def parties(self, session: Session, task: dict[str, Any], tenant: str | None) -> set[str]:
        access = session.access
        if access is None or access.platform:
            return {m.REQUESTER, m.PERFORMER, m.PLATFORM}  # the platform's own clients act for any party
        org = access.organization
        found = set()
        if org is not None and org == tenant:
            found.add(m.REQUESTER)
        if org is not None and org in institutions(session, [task.get("owner")]):
            found.add(m.PERFORMER)
        if org is not None and org == self.platform_organization:
            found.add(m.PLATFORM)
        return found

    # -- the hook ---------------------------------------------------------------------------
    def before_write(
        self, session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
    ) -> None:
        if resource is None:
            return  # a deletion: only its creator may (tenancy), whatever the state
        stored = as_stored(current) if current is not None and not current.deleted else None
        access = session.access
        if stored is not None and access is not None and access.organization not in (None, current.tenant):
            keep_owners_part(resource, stored, PERFORMER_WRITABLE)  # a co-owner changes the progress only
        if data_requests.task_type(resource) or data_requests.task_type(stored):
            tenant = current.tenant if current is not None else None
            data_requests.before_write(
                session, res_id, resource, stored, self.parties(session, stored or resource, tenant)
            )
            return
        target = m.business_status(resource)
        source = m.business_status(stored)
        if target is None and source is None:
            return  # not one of our workflow Tasks
        if target is None:
            raise FhirError("processing", f"Task/{res_id}: its businessStatus ({m.SYSTEM}) cannot be removed")
        if target not in m.TASK_STATUS:
            return  # not a code of ours: the profile's required binding refuses it (422)
        if stored is None:
            if target != m.INITIAL and access is not None and not access.platform:
                raise FhirError(
                    "conflict", f"Task/{res_id}: a Task starts at businessStatus {m.INITIAL!r}, not {target!r}"
                )
            if target == m.INITIAL and m.kind_of(resource) == "multicentre":
                ensure_deadline(resource, now_us(), self.invitation_hours)
            return
        if target == source:
            return
        kind = m.kind_of(stored)
        steps = m.transitions(kind, str(source))
        if target not in steps:
            raise FhirError(
                "conflict",
                f"Task/{res_id} ({kind}) cannot go from {source!r} to {target!r}; from {source!r} it may go to: "
                f"{m.describe(steps)}",
                "Task.businessStatus",
            )
        acting = self.parties(session, stored, current.tenant if current is not None else None)
        if not acting & steps[target]:
            raise FhirError(
                "forbidden",
                f"Task/{res_id}: only the {' or '.join(sorted(steps[target]))} may move it from {source!r} to "
                f"{target!r}",
                "Task.businessStatus",
            )
        if target == "evaluated":
            evaluation.require(session, res_id, resource)  # satisfaction, concordance, rating (R3)

    def after_write(self, session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
        """A Provenance of each step (and of a Task's creation)."""
        if written.deleted or written.content is None:
            return
        task = fjson.loads(written.content)
        if data_requests.task_type(task):
            data_requests.after_write(session, written, as_stored(previous) if previous is not None else None)
            return
        target = m.business_status(task)
        if target is None or (previous is not None and m.business_status(as_stored(previous)) == target):
            return
        agent = provenance_agent(session, "performer")
        provenance: dict[str, Any] = {
            "resourceType": "Provenance",
            "target": [{"reference": f"Task/{written.res_id}/_history/{written.version}"}],
            "recorded": instant(now_us()),
            "activity": {"coding": [{"system": m.SYSTEM, "code": target}]},
            "agent": [agent],
        }
        if previous is not None:
            provenance["entity"] = [
                {"role": "revision", "what": {"reference": f"Task/{written.res_id}/_history/{previous.version}"}}
            ]
        with session.unrestricted():  # the server's record of the step, not a write of the requester's
            session.create(provenance)
