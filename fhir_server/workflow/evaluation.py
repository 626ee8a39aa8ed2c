"""The requester's evaluation of a consultation: what the step to ``evaluated`` must carry.

Why a QuestionnaireResponse checked at the step: MISSION.md R3 ends the chain with the inviter's
evaluation — satisfaction, diagnosis concordance, ratings — which the platform's supervisors
count across institutions; a bare status change would say that an evaluation happened without
saying what it was. The response (to the packaged Questionnaire consultation-evaluation) is the
requester's own record, and the Task points at it (``output`` consultation-workflow|evaluation), so
an EHR records it with two ordinary writes, or one transaction Bundle.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session
from fhir_server.workflow.multicentre import WORKFLOW, typed

QUESTIONNAIRE = "http://fhir.telefhir.cn/Questionnaire/consultation-evaluation"
CONCORDANCE = frozenset({"concordant", "partially-concordant", "discordant"})
_SCALES = ("satisfaction", "rating")


def require(session: Session, task_id: str, task: dict[str, Any]) -> None:
    """The Task moving to ``evaluated`` names a complete evaluation, or 422 saying what is wrong."""
    refs = [
        (o.get("valueReference") or {}).get("reference") for o in task.get("output") or () if typed(o, "evaluation")
    ]
    if not refs or not isinstance(refs[-1], str) or not refs[-1].startswith("QuestionnaireResponse/"):
        raise FhirError(
            "processing",
            f"Task/{task_id}: the step to 'evaluated' carries the evaluation: an output of type {WORKFLOW}|evaluation "
            f"referencing a QuestionnaireResponse to {QUESTIONNAIRE}",
            "Task.output",
        )
    ref = refs[-1].split("/_history")[0]
    found = session.read_current("QuestionnaireResponse", ref.split("/", 1)[1])
    if found is None or found.deleted:
        raise FhirError("processing", f"Task/{task_id}: the evaluation {ref} does not exist", "Task.output")
    problems = check(found.resource())
    if problems:
        raise FhirError("processing", f"Task/{task_id}: the evaluation {ref} {'; '.join(problems)}", "Task.output")


def check(response: dict[str, Any]) -> list[str]:
    """What keeps ``response`` from being a complete evaluation (empty: nothing)."""
    problems = []
    if str(response.get("questionnaire", "")).split("|")[0] != QUESTIONNAIRE:
        problems.append(f"answers {response.get('questionnaire')!r}, not {QUESTIONNAIRE}")
    if response.get("status") != "completed":
        problems.append(f"is {response.get('status')!r}, not completed")
    answers = {
        item.get("linkId"): (item.get("answer") or [{}])[0]
        for item in response.get("item") or ()
        if isinstance(item, dict)
    }
    for link in _SCALES:
        value = answers.get(link, {}).get("valueInteger")
        if not isinstance(value, int) or not 1 <= value <= 5:
            problems.append(f"needs {link} as an integer from 1 to 5")
    coding = answers.get("concordance", {}).get("valueCoding") or {}
    if coding.get("system") != WORKFLOW or coding.get("code") not in CONCORDANCE:
        problems.append(f"needs concordance, one of {', '.join(sorted(CONCORDANCE))} ({WORKFLOW})")
    return problems
