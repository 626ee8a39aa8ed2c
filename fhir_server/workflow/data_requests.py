"""Data requests and correction requests of a multi-centre consultation (001 §7.2 e–g, §7.5 b).

Why Tasks: the leader asks a participating institution for the patient's data it holds (``code``
data-request, ``owner`` the participant, ``basedOn`` the consultation request, ``input``
required-data naming data categories of 001 表1); the participant answers on the same Task —
accepts, provides (``output`` provided-data, references to its own records), completes — as a
filler does in the FHIR workflow pattern. What is provided becomes visible to the leader and the
other participants of the consultation, in the requested categories, through the grant the Task
makes while the participant provides (security/grants.py), de-identified on the way out
(security/egress.py): the participant "provides it de-identified" without copying anything.

When the participant completes a data request, the platform checks the provided data's core
elements (workflow/quality.py) in the same transaction and records the figure on the Task
(``output`` quality-completeness, missing-element). Below 99 % the data goes back to its sender as
a correction request: a Task (``code`` data-correction, ``partOf`` the data request, ``owner`` the
sender, due within 12 hours, §7.5 b) listing the missing elements; completing it (after the
records were corrected or more provided) is checked again the same way.

Deadlines: the participant provides the data at least 48 hours before the consultation (001 §7.2
f). A data request written without ``restriction.period.end`` is due then — the consultation
request's ``occurrence[x]`` less 48 hours, or the consultation's start when less than that is
left; none when the request has no time. A correction is due 12 hours after it is written. One
still unanswered or unfinished when due is flagged and its institution reminded
(workflow/overdue.py).

Steps (``Task.status``): the participant takes requested → accepted | rejected | in-progress |
completed, accepted/in-progress → completed | failed, completed → in-progress (to provide again);
the leader cancels one not finished. 409 names the allowed steps, 403 who may take them.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.security import categories as cat
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import institution_access
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import machine as m
from fhir_server.workflow import quality
from fhir_server.workflow.multicentre import HOUR_US, WORKFLOW, deadline_us, occurrence_start, typed, workflow_code

DATA_REQUEST, DATA_CORRECTION = "data-request", "data-correction"
REQUIRED, PROVIDED = "required-data", "provided-data"
COMPLETENESS, MISSING = "quality-completeness", "missing-element"
#: statuses in which the participant provides what was asked: the requested data is shared
PROVIDING = frozenset({"accepted", "in-progress", "completed"})
#: 001 §7.5 b): the sender corrects within 12 hours
CORRECTION_HOURS = 12
#: 001 §7.2 f): the data reaches the leader at least 48 hours before the consultation
BEFORE_CONSULTATION_HOURS = 48
_MAX_LISTED = 100

#: a data request or correction still to be answered or finished (overdue once its deadline passes)
NOT_FINISHED = ("requested", "accepted", "in-progress")
#: from -> to -> the parties that may take the step
STEPS: dict[str, dict[str, frozenset[str]]] = {
    "requested": {
        "accepted": frozenset({m.PERFORMER}),
        "rejected": frozenset({m.PERFORMER}),
        "in-progress": frozenset({m.PERFORMER}),
        "completed": frozenset({m.PERFORMER}),
    },
    "accepted": {"in-progress": frozenset({m.PERFORMER}), "completed": frozenset({m.PERFORMER})},
    "in-progress": {"completed": frozenset({m.PERFORMER}), "failed": frozenset({m.PERFORMER})},
    "completed": {"in-progress": frozenset({m.PERFORMER})},
}
for _source in NOT_FINISHED:
    STEPS[_source]["cancelled"] = frozenset({m.REQUESTER})
STEPS["accepted"]["failed"] = frozenset({m.PERFORMER})


def mermaid() -> str:
    """The data request's machine (``Task.status``) as a Mermaid state diagram (docs/workflows.md is
    checked against it)."""
    lines = ["stateDiagram-v2", "    [*] --> requested"]
    for source, steps in STEPS.items():
        for target, parties in sorted(steps.items()):
            lines.append(f"    {m.node(source)} --> {m.node(target)}: {' / '.join(sorted(parties))}")
    lines += [f"    {m.node(s)} --> [*]" for s in ("completed", "rejected", "failed", "cancelled")]
    return "\n".join(lines)


def task_type(task: dict[str, Any] | None) -> str | None:
    """``data-request`` or ``data-correction`` for such a Task, else None."""
    if not isinstance(task, dict):
        return None
    for coding in (task.get("code") or {}).get("coding", []):
        if (
            isinstance(coding, dict)
            and coding.get("system") == WORKFLOW
            and coding.get("code")
            in (
                DATA_REQUEST,
                DATA_CORRECTION,
            )
        ):
            return str(coding["code"])
    return None


def requested_categories(task: dict[str, Any]) -> int:
    """The data categories (001 表1) a data request asks for."""
    mask = 0
    for item in task.get("input") or ():
        if not typed(item, REQUIRED):
            continue
        for coding in (item.get("valueCodeableConcept") or {}).get("coding", []):
            if coding.get("system") == cat.SYSTEM:
                mask |= cat.CODES.get(coding.get("code"), 0) & cat.PATIENT_DATA
    return mask


def provided(task: dict[str, Any]) -> list[str]:
    """The references a data request's participant listed as provided."""
    found = []
    for item in task.get("output") or ():
        ref = (item.get("valueReference") or {}).get("reference") if typed(item, PROVIDED) else None
        if isinstance(ref, str):
            found.append(ref.split("/_history")[0])
    return found


# -- the write rules -------------------------------------------------------------------------
def before_write(
    session: Session, res_id: str, task: dict[str, Any], stored: dict[str, Any] | None, parties: set[str]
) -> None:
    """Check the step; on completion, check the provided data's quality and record it."""
    kind = task_type(task) or task_type(stored)
    if kind == DATA_REQUEST and stored is None and not requested_categories(task):
        raise FhirError(
            "processing",
            f"Task/{res_id}: a data request names the data it asks for: input of type {WORKFLOW}|{REQUIRED} with "
            f"a {cat.SYSTEM} code",
            "Task.input",
        )
    if kind == DATA_REQUEST and stored is None and deadline_us(task) is None:
        _default_deadline(session, task)
    source, target = (stored or {}).get("status"), task.get("status")
    if stored is None or source == target:
        if target == "completed" and (stored is None or _outputs_changed(task, stored)):
            _record_quality(session, res_id, task)
        return
    steps = STEPS.get(str(source), {})
    if target not in steps:
        allowed = m.describe(steps)
        raise FhirError(
            "conflict", f"Task/{res_id} ({kind}) cannot go from {source!r} to {target!r}; it may go to: {allowed}"
        )
    if not parties & steps[target]:
        raise FhirError(
            "forbidden", f"Task/{res_id}: only the {' or '.join(sorted(steps[target]))} may set it {target!r}"
        )
    if target == "completed":
        _record_quality(session, res_id, task)


def _default_deadline(session: Session, task: dict[str, Any]) -> None:
    """Due 48 hours before the consultation (or at its start when less is left); none without a time."""
    starts = []
    with session.unrestricted():  # the consultation request as stored, whoever writes the Task
        for ref in task.get("basedOn") or ():
            target = ref.get("reference") if isinstance(ref, dict) else None
            if isinstance(target, str) and target.startswith("ServiceRequest/"):
                version = session.read_current("ServiceRequest", target.split("/")[1].split("/_history")[0])
                if version is not None and not version.deleted:
                    starts.append(occurrence_start(version.resource()))
    start = min((s for s in starts if s is not None), default=None)
    if start is None:
        return
    due = start - BEFORE_CONSULTATION_HOURS * HOUR_US
    task.setdefault("restriction", {}).setdefault("period", {})["end"] = instant(due if due > now_us() else start)


def _outputs_changed(task: dict[str, Any], stored: dict[str, Any]) -> bool:
    return provided(task) != provided(stored)


def _record_quality(session: Session, res_id: str, task: dict[str, Any]) -> None:
    refs = provided(task)
    owners = institutions(session, [task.get("owner")])
    owner = owners[0] if owners else None
    subject = str((task.get("for") or {}).get("reference", ""))
    patient = subject.split("/")[1] if subject.startswith("Patient/") else None
    records = []
    with session.unrestricted():  # the platform checks the data as stored
        for ref in refs:
            res_type, _, ref_id = ref.partition("/")
            version = session.read_current(res_type, ref_id) if ref_id else None
            if version is None or version.deleted:
                raise FhirError("processing", f"Task/{res_id}: the provided {ref} does not exist", "Task.output")
            if owner is not None and version.tenant not in (owner, None):
                raise FhirError(
                    "processing", f"Task/{res_id}: {ref} is not a record of Organization/{owner}", "Task.output"
                )
            if patient is not None and version.patient not in (patient, None):
                raise FhirError("processing", f"Task/{res_id}: {ref} is about another patient", "Task.output")
            records.append(version.resource())
    if not records:
        raise FhirError(
            "processing",
            f"Task/{res_id}: a completed data request lists what was provided (output of type {WORKFLOW}|{PROVIDED})",
            "Task.output",
        )
    report = quality.check(records)
    outputs = [o for o in task.get("output") or () if not (typed(o, COMPLETENESS) or typed(o, MISSING))]
    outputs.append({"type": workflow_code(COMPLETENESS), "valueDecimal": round(report.completeness, 4)})
    outputs += [{"type": workflow_code(MISSING), "valueString": text} for text in report.missing[:_MAX_LISTED]]
    task["output"] = outputs


def completeness(task: dict[str, Any]) -> float | None:
    for item in task.get("output") or ():
        if typed(item, COMPLETENESS) and isinstance(item.get("valueDecimal"), int | float):
            return float(item["valueDecimal"])
    return None


def after_write(session: Session, written: StoredVersion, previous_task: dict[str, Any] | None) -> None:
    """Data below the quality bar goes back to its sender as a correction request."""
    task = written.resource()
    figure = completeness(task)
    if task.get("status") != "completed" or figure is None or figure >= quality.CORE_THRESHOLD:
        return
    if (
        previous_task is not None
        and previous_task.get("status") == "completed"
        and not _outputs_changed(task, previous_task)
    ):
        return
    missing = [o["valueString"] for o in task.get("output") or () if typed(o, MISSING)]
    now = now_us()
    correction: dict[str, Any] = {
        "resourceType": "Task",
        "status": "requested",
        "intent": "order",
        "code": workflow_code(DATA_CORRECTION),
        "basedOn": task.get("basedOn") or [],
        "partOf": [{"reference": f"Task/{written.res_id}"}],
        "focus": {"reference": f"Task/{written.res_id}"},
        "for": task.get("for"),
        "authoredOn": instant(now),
        "owner": task.get("owner"),
        "restriction": {"period": {"end": instant(now + CORRECTION_HOURS * HOUR_US)}},
        "description": (
            f"数据质量校验未通过 The core data elements provided for Task/{written.res_id} are {figure * 100:.1f} % "
            f"complete (at least {quality.CORE_THRESHOLD * 100:.0f} % is required): correct them and provide them "
            f"again within {CORRECTION_HOURS} hours"
        ),
        "input": [{"type": workflow_code(MISSING), "valueString": text} for text in missing],
    }
    if task.get("requester"):
        correction["requester"] = task["requester"]
    correction = {k: v for k, v in correction.items() if v not in (None, [])}
    with session.acting(institution_access(written.tenant) if written.tenant else None):
        session.create(correction)  # the receiver's request to the sender, as if it had written it
