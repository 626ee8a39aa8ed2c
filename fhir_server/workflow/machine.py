"""The business states of a consultation, diagnosis or referral Task, and who may move it.

Why on the Task's ``businessStatus``: the FHIR workflow pattern (workflow-management.html; HL7
BSeR; research notes §6) keeps the filler's progress on a Task that points at the request, and
``Task.status`` has too few states for the chain of MISSION.md R3 (apply → pre-review →
accept/reject → schedule → conduct → report → review → publish → evaluate). The states are the
codes of http://fhir.telefhir.cn/CodeSystem/consultation-task-status; each fixes ``Task.status``
(profile invariant cn-task-1). ``docs/workflows.md`` draws the machine.

Three parties move a Task: the **requester** (the institution that created it), the
**performer** (the institution its ``owner`` names) and the **platform** (its own clients and the
institution configured as the platform's operator, which does the pre-review of consultations).
"""

from __future__ import annotations

from typing import Any

SYSTEM = "http://fhir.telefhir.cn/CodeSystem/consultation-task-status"
SERVICE_TYPES = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"

REQUESTER, PERFORMER, PLATFORM = "requester", "performer", "platform"

#: the Task.status each business status goes with (cn-task-1)
TASK_STATUS = {
    "applied": "requested",
    "pre-reviewed": "received",
    "accepted": "accepted",
    "rejected": "rejected",
    "scheduled": "ready",
    "in-progress": "in-progress",
    "reported": "in-progress",
    "reviewed": "in-progress",
    "published": "completed",
    "evaluated": "completed",
    "cancelled": "cancelled",
}
INITIAL = "applied"

#: from -> to -> the parties that may take the step
_COMMON: dict[str, dict[str, frozenset[str]]] = {
    "applied": {
        "pre-reviewed": frozenset({PLATFORM}),
        "rejected": frozenset({PLATFORM}),
        "cancelled": frozenset({REQUESTER}),
    },
    "pre-reviewed": {
        "accepted": frozenset({PERFORMER}),
        "rejected": frozenset({PERFORMER}),
        "cancelled": frozenset({REQUESTER}),
    },
    "accepted": {"scheduled": frozenset({PERFORMER, PLATFORM}), "cancelled": frozenset({REQUESTER})},
    "scheduled": {"in-progress": frozenset({PERFORMER}), "cancelled": frozenset({REQUESTER})},
    "in-progress": {"reported": frozenset({PERFORMER})},
    "reported": {"reviewed": frozenset({PERFORMER}), "in-progress": frozenset({PERFORMER})},
    "reviewed": {"published": frozenset({PERFORMER}), "in-progress": frozenset({PERFORMER})},
    "published": {"evaluated": frozenset({REQUESTER})},
}
#: an offline consultation (离线会诊) has no session to schedule: the experts take it up once accepted
_OFFLINE = {"accepted": {"in-progress": frozenset({PERFORMER})}}
#: a diagnosis request or a referral needs no pre-review: the performer answers it directly
_DIRECT = {"applied": {"accepted": frozenset({PERFORMER}), "rejected": frozenset({PERFORMER, PLATFORM})}}
#: a multi-centre invitation (001 §7): the participant answers it directly (within 24 hours), the
#: leader schedules and opens the session, and publishes once it has merged the opinions
_MULTICENTRE = {
    "applied": {"accepted": frozenset({PERFORMER}), "rejected": frozenset({PERFORMER})},
    "accepted": {"scheduled": frozenset({REQUESTER})},
    "scheduled": {"in-progress": frozenset({REQUESTER})},
    "reported": {"published": frozenset({REQUESTER})},
    "reviewed": {"published": frozenset({REQUESTER})},
}


def service_codings(resource: dict[str, Any]) -> list[dict[str, Any]]:
    """The codings of ``resource.code`` in the platform's service types."""
    return [
        c
        for c in (resource.get("code") or {}).get("coding", [])
        if isinstance(c, dict) and c.get("system") == SERVICE_TYPES
    ]


def kind_of(task: dict[str, Any]) -> str:
    """``consultation``, ``offline``, ``multicentre``, ``referral`` or ``diagnosis``, from the Task's
    service type code."""
    codes = [c.get("code", "") for c in service_codings(task)]
    code = codes[0] if codes else ""
    if code == "teleconsultation-multicentre":
        return "multicentre"
    if code == "teleconsultation-offline":
        return "offline"
    if code.startswith("teleconsultation"):
        return "consultation"
    if code.startswith("referral"):
        return "referral"
    return "diagnosis"


def transitions(kind: str, source: str) -> dict[str, frozenset[str]]:
    """The steps out of ``source`` for a Task of ``kind``, with who may take each."""
    if kind == "multicentre" and source == "pre-reviewed":
        return {}  # an invitation is not pre-reviewed
    steps = dict(_COMMON.get(source, {}))
    extra = {"consultation": {}, "offline": _OFFLINE, "multicentre": _MULTICENTRE}.get(kind, _DIRECT)
    if kind == "multicentre":
        steps.pop("pre-reviewed", None)
    for target, parties in extra.get(source, {}).items():
        steps[target] = steps.get(target, frozenset()) | parties
    return steps


def business_status(task: dict[str, Any] | None) -> str | None:
    """The Task's business status code in our system, or None when it is not one of ours."""
    if not isinstance(task, dict):
        return None
    for coding in (task.get("businessStatus") or {}).get("coding", []):
        if isinstance(coding, dict) and coding.get("system") == SYSTEM:
            return str(coding.get("code"))
    return None


def describe(steps: dict[str, frozenset[str]]) -> str:
    """``accepted (by the performer), cancelled (by the requester)`` — for error messages."""
    if not steps:
        return "none: it is final"
    return ", ".join(f"{target} (by the {' or '.join(sorted(parties))})" for target, parties in sorted(steps.items()))


def mermaid(kind: str) -> str:
    """The machine of a kind as a Mermaid state diagram (docs/workflows.md is checked against it)."""
    lines = ["stateDiagram-v2", f"    [*] --> {node(INITIAL)}"]
    for source in TASK_STATUS:
        for target, parties in sorted(transitions(kind, source).items()):
            lines.append(f"    {node(source)} --> {node(target)}: {' / '.join(sorted(parties))}")
    lines += [f"    {node(s)} --> [*]" for s in ("evaluated", "rejected", "cancelled")]
    return "\n".join(lines)


def node(state: str) -> str:
    """A state as a Mermaid node name."""
    return state.replace("-", "_")
