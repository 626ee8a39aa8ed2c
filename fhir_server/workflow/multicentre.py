"""A multi-centre consultation (001 §7): the leader's invitations and their 24-hour answer.

Why one Task per invited institution: each participating institution answers for itself — accepts,
declines with a reason — and may take days to provide its data while another has already given its
opinion; a Task per participant (``owner`` the participant, ``basedOn`` the leader's
ServiceRequest, ``code`` teleconsultation-multicentre) carries each one's progress through the
multi-centre machine (workflow/machine.py), as the FHIR workflow pattern does for any performer.

The invitation says what 001 §7.2 b) lists: the consultation number (the request's identifier),
the patient (the participant reads the request and the patient de-identified, security/egress.py),
the time (``input`` consultation-time), the needs (the request's reasons, ``description``) and the
required-data list (the request's ``orderDetail``, ``input`` required-data). Its answer is due
within 24 hours (§7.2 c): ``restriction.period.end``, set when the invitation is written without
one; workflow/overdue.py flags and reminds those left unanswered.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.util.clock import instant
from fhir_server.util.fhirdate import date_range
from fhir_server.workflow import machine as m

CN = "http://fhir.telefhir.cn"
#: Task codes, input/output types and flags of the multi-centre workflow
WORKFLOW = f"{CN}/CodeSystem/consultation-workflow"
TASK_PROFILE = f"{CN}/StructureDefinition/consultation-task"
NUMBER_SYSTEM = f"{CN}/sid/consultation-number"
MULTICENTRE = "teleconsultation-multicentre"
#: 001 §7.2 b): at least two participating institutions
MIN_PARTICIPANTS = 2
HOUR_US = 3_600_000_000


def workflow_code(code: str) -> dict[str, Any]:
    """A CodeableConcept of the consultation-workflow CodeSystem."""
    return {"coding": [{"system": WORKFLOW, "code": code}]}


def typed(item: Any, code: str) -> bool:
    """A Task input or output whose ``type`` is consultation-workflow|``code``."""
    return isinstance(item, dict) and any(
        isinstance(c, dict) and c.get("system") == WORKFLOW and c.get("code") == code
        for c in (item.get("type") or {}).get("coding", [])
    )


def is_multicentre(resource: dict[str, Any] | None) -> bool:
    """A multi-centre consultation's request or invitation."""
    return isinstance(resource, dict) and any(c.get("code") == MULTICENTRE for c in m.service_codings(resource))


def deadline_us(task: dict[str, Any]) -> int | None:
    """When the Task's answer is due (``restriction.period.end``), or None."""
    bounds = date_range(((task.get("restriction") or {}).get("period") or {}).get("end"))
    return bounds[1] if bounds else None


def occurrence_start(request: dict[str, Any]) -> int | None:
    """When a request's consultation starts (``occurrenceDateTime``, ``occurrencePeriod.start``), or None."""
    bounds = date_range(request.get("occurrenceDateTime") or (request.get("occurrencePeriod") or {}).get("start"))
    return bounds[0] if bounds else None


def ensure_deadline(task: dict[str, Any], now: int, hours: float) -> None:
    """An invitation written without a deadline is due ``hours`` after it is written."""
    if deadline_us(task) is not None:
        return
    restriction = task.setdefault("restriction", {})
    restriction.setdefault("period", {})["end"] = instant(now + int(hours * HOUR_US))


def consultation_number(request: dict[str, Any]) -> str | None:
    for identifier in request.get("identifier") or ():
        if isinstance(identifier, dict) and identifier.get("system") == NUMBER_SYSTEM:
            return identifier.get("value")
    return None


def check_request(request: dict[str, Any], participants: list[str], leader: str | None) -> None:
    """A multi-centre request that can be sent out: active, with at least two other institutions."""
    if not is_multicentre(request):
        raise FhirError(
            "processing",
            f"ServiceRequest/{request['id']} is not a multi-centre consultation (code {m.SERVICE_TYPES}|{MULTICENTRE})",
        )
    if request.get("status") != "active":
        raise FhirError(
            "conflict", f"ServiceRequest/{request['id']} is {request.get('status')!r}: only an active request invites"
        )
    others = [p for p in dict.fromkeys(participants) if p != leader]
    if len(others) < MIN_PARTICIPANTS:
        raise FhirError(
            "processing",
            f"ServiceRequest/{request['id']} names {len(others)} participating institution(s) as performer: a "
            f"multi-centre consultation invites at least {MIN_PARTICIPANTS} besides the leader",
            "ServiceRequest.performer",
        )


def invitation(request: dict[str, Any], participant: str, now: int, hours: float) -> dict[str, Any]:
    """The invitation of ``participant`` (an Organization id) to the multi-centre ``request``."""
    reference = {"reference": f"ServiceRequest/{request['id']}"}
    number = consultation_number(request)
    needs = [
        str(c.get("text") or next((d.get("display") for d in c.get("coding", []) if d.get("display")), ""))
        for c in request.get("reasonCode") or ()
    ]
    task: dict[str, Any] = {
        "resourceType": "Task",
        "meta": {"profile": [TASK_PROFILE]},
        "basedOn": [reference],
        "status": m.TASK_STATUS[m.INITIAL],
        "businessStatus": {"coding": [{"system": m.SYSTEM, "code": m.INITIAL}]},
        "intent": "order",
        "code": {"coding": m.service_codings(request)},
        "description": "；".join(filter(None, [f"多中心会诊邀请 {number or ''}".strip(), *needs])),
        "focus": reference,
        "for": request["subject"],
        "authoredOn": instant(now),
        "owner": {"reference": f"Organization/{participant}"},
        "restriction": {"period": {"end": instant(now + int(hours * HOUR_US))}},
    }
    if number:
        task["groupIdentifier"] = {"system": NUMBER_SYSTEM, "value": number}
    if request.get("requester"):
        task["requester"] = request["requester"]
    inputs = [
        {"type": workflow_code("required-data"), "valueCodeableConcept": d} for d in request.get("orderDetail") or ()
    ]
    for key in ("occurrenceDateTime", "occurrencePeriod"):
        if key in request:
            inputs.append({"type": workflow_code("consultation-time"), f"value{key[10:]}": request[key]})
    if inputs:
        task["input"] = inputs
    return task
