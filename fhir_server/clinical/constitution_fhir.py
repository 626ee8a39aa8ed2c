"""QuestionnaireResponse in, constitution assessment Observation out (pure FHIR dict handling).

Why separate from :mod:`.tcm_constitution`: scoring works on item codes and integers and is
tested on the standards' examples; this module only translates between those and FHIR, and
turns a problem with item ``q07`` into the FHIRPath a client can act on
(``QuestionnaireResponse.item[6].answer[0]``).

Answers are read from ``valueInteger`` (1–5) or ``valueCoding`` ("1"–"5" of tcm-ccmq-answer, the
Questionnaires' answer options; a coding without system is read the same way). Items may be
nested in groups; each form item must appear once.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from fhir_server.clinical import codes
from fhir_server.clinical.ccmq import ANSWER_SYSTEM, TYPES, Form, form_for_questionnaire
from fhir_server.clinical.tcm_constitution import (
    RESULTS,
    Assessment,
    ConstitutionInputError,
    Problem,
    assess,
)

QR = "QuestionnaireResponse"


def _walk(items: Any, path: str) -> Iterator[tuple[dict[str, Any], str]]:
    """Every item with its FHIRPath, depth first (group items and items nested under answers)."""
    if not isinstance(items, list):
        return
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            continue
        here = f"{path}.item[{i}]"
        yield item, here
        yield from _walk(item.get("item"), here)
        for j, answer in enumerate(item.get("answer") or []):
            if isinstance(answer, dict):
                yield from _walk(answer.get("item"), f"{here}.answer[{j}]")


def _answer_value(answer: dict[str, Any]) -> object:
    """The scale value 1–5 of an answer, or what was given instead (reported as out of range)."""
    if "valueInteger" in answer:
        return answer["valueInteger"]
    coding = answer.get("valueCoding")
    if isinstance(coding, dict):
        code, system = coding.get("code"), coding.get("system")
        if system not in (None, ANSWER_SYSTEM):
            return f"{system}|{code}"
        return int(code) if isinstance(code, str) and code.isdigit() else code
    values = [v for k, v in answer.items() if k.startswith("value")]
    return values[0] if values else None


def read_answers(form: Form, response: dict[str, Any]) -> tuple[dict[str, object], dict[str, str]]:
    """``(item code -> answer value, item code -> FHIRPath of that answer)``; raises on structure."""
    answers: dict[str, object] = {}
    where: dict[str, str] = {}
    problems: list[Problem] = []
    for item, path in _walk(response.get("item"), QR):
        link_id = item.get("linkId")
        given = item.get("answer") or []
        if form.item(link_id) is None:
            if given and not item.get("item"):
                problems.append(Problem(f"Item {link_id!r} is not an item of the {form.key} questionnaire", path))
            continue
        if link_id in where:
            problems.append(Problem(f"Item {link_id} appears more than once (first at {where[link_id]})", path))
            continue
        where[link_id] = path
        if not given:
            continue  # reported as unanswered by the scoring, if it applies
        if len(given) > 1:
            problems.append(Problem(f"Item {link_id} has {len(given)} answers; exactly one is allowed", path))
            continue
        where[link_id] = f"{path}.answer[0]"
        answers[link_id] = _answer_value(given[0]) if isinstance(given[0], dict) else None
    if problems:
        raise ConstitutionInputError(problems)
    return answers, where


def response_form(response: dict[str, Any]) -> Form:
    canonical = response.get("questionnaire")
    form = form_for_questionnaire(canonical) if isinstance(canonical, str) else None
    if form is None:
        raise ConstitutionInputError(
            [
                Problem(
                    f"QuestionnaireResponse.questionnaire {canonical!r} is not one of the constitution "
                    "questionnaires (http://fhir.telefhir.cn/Questionnaire/questionnaire-ccmq-2009 or "
                    "…/questionnaire-ccmq-2025)",
                    f"{QR}.questionnaire",
                )
            ]
        )
    return form


def assess_response(response: dict[str, Any], sex: str) -> Assessment:
    """Score a QuestionnaireResponse; every problem's location is a FHIRPath into it."""
    form = response_form(response)
    answers, where = read_answers(form, response)
    try:
        return assess(form, answers, sex)  # type: ignore[arg-type]  # assess checks the value
    except ConstitutionInputError as err:
        raise ConstitutionInputError([_located(p, where) for p in err.problems]) from None


def _located(problem: Problem, where: dict[str, str]) -> Problem:
    code = problem.location
    if code is None:
        return problem
    path = where.get(code, f"{QR}.item.where(linkId='{code}')")
    return Problem(problem.message, path)


def observation(
    assessment: Assessment,
    *,
    subject: dict[str, Any] | None,
    effective: str | None,
    derived_from: dict[str, Any] | None,
    based_on: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The constitution assessment Observation (shape fixed in the issue 4 brief); ``based_on``:
    the requests it answers (a diagnosis request's finding goes back to its requester)."""
    obs: dict[str, Any] = {
        "resourceType": "Observation",
        "meta": {"profile": [codes.CONSTITUTION_PROFILE]},
        "status": "final",
        "category": codes.category("survey", "Survey"),
        "code": codes.concept(codes.OBSERVATION_CODE, "constitution-assessment", "中医体质辨识"),
        "method": codes.concept(codes.CONSTITUTION_FORM, assessment.form.key, assessment.form.display),
    }
    if subject is not None:
        obs["subject"] = subject
    if effective is not None:
        obs["effectiveDateTime"] = effective
    if based_on:
        obs["basedOn"] = based_on
    if derived_from is not None:
        obs["derivedFrom"] = [derived_from]
    obs["component"] = [_component(assessment, t) for t in TYPES]
    return obs


def _component(assessment: Assessment, type_code: str) -> dict[str, Any]:
    score = assessment.scores[type_code]
    return {
        "code": codes.concept(codes.CONSTITUTION, type_code, TYPES[type_code]),
        "valueQuantity": {
            "value": float(score.rounded),
            "unit": "score",
            "system": codes.UCUM,
            "code": "{score}",
        },
        "interpretation": [codes.concept(codes.CONSTITUTION_RESULT, score.result, RESULTS[score.result])],
    }
