"""``$assess-constitution``: score a constitution questionnaire response (中医体质辨识).

``POST [base]/QuestionnaireResponse/$assess-constitution`` takes the QuestionnaireResponse as the
body or as the ``questionnaireResponse`` part of a Parameters body;
``POST [base]/QuestionnaireResponse/[id]/$assess-constitution`` scores the stored one. The form
(ZYYXH/T157-2009 or GB/T 46939-2025) is recognised by ``QuestionnaireResponse.questionnaire``.
Definition: profiles/operationdefinition-assess-constitution.json.

Sex (needed for the 湿热 items): ``Patient.gender`` of the subject when it can be read and is
male or female; otherwise the ``sex`` parameter (``male``/``female``). A ``sex`` that contradicts
the Patient is refused rather than silently preferred: one of the two records is wrong.

``persist=true`` stores the Observation, and the QuestionnaireResponse too unless it is already
stored (called at instance level, or the body carries the id and content of a stored one), in
one transaction; the answer is ``201`` with the Observation. Otherwise the Observation is
returned (``200``) and nothing is written. Its ``derivedFrom`` names the QuestionnaireResponse
when it is stored, or by its ``identifier`` when it has one; an unstored response without an
identifier cannot be referenced, so ``derivedFrom`` is then absent.

Answers that cannot be scored are a ``422`` listing every problem with the FHIRPath of the
offending item, e.g. ``QuestionnaireResponse.item[3].answer[0]``; nothing is stored. An answer
to the other sex's item is not an error: it is left out of the score (clinical/tcm_constitution.py).
"""

from __future__ import annotations

import copy
from typing import Any

from fhir_server.clinical.constitution_fhir import assess_response, observation
from fhir_server.clinical.tcm_constitution import ConstitutionInputError
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue
from fhir_server.rest.interactions.common import read_live, require_id, written
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import BOOLEAN, STRING, Inputs
from fhir_server.storage.repository import Session, new_id
from fhir_server.validation import check_resource

QR = "QuestionnaireResponse"
SEXES = ("male", "female")
SPEC = {"questionnaireResponse": (f"resource:{QR}", False), "sex": (STRING, False), "persist": (BOOLEAN, False)}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "assess-constitution", SPEC, body_resource="questionnaireResponse")
    persist = bool(inputs.get("persist"))
    given_sex = inputs.get("sex")
    if given_sex is not None and given_sex not in SEXES:
        raise FhirError("invalid-param", f"sex must be 'male' or 'female', not {given_sex!r}")
    with ctx.session(write=persist) as session:
        response, stored_ref = _response(req, inputs, session)
        sex = _sex(ctx, session, response, given_sex)
        try:
            assessment = assess_response(response, sex)
        except ConstitutionInputError as err:
            raise unprocessable(err) from None
        if persist and stored_ref is None:
            qr_id = new_id()
            session.create(response, qr_id)
            stored_ref = f"{QR}/{qr_id}"
        obs = observation(
            assessment,
            subject=copy.deepcopy(response.get("subject")),
            effective=response.get("authored"),
            derived_from=_derived_from(response, stored_ref),
            based_on=[
                copy.deepcopy(b)
                for b in response.get("basedOn") or ()
                if isinstance(b, dict) and str(b.get("reference", "")).startswith("ServiceRequest/")
            ],
        )
        check_resource(obs, "Observation")
        if not persist:
            return FhirResponse(200, resource=obs)
        version = session.create(obs)
    return written(req, ctx, version, 201, f"Created Observation/{version.res_id} from {stored_ref}")


def unprocessable(err: ConstitutionInputError) -> FhirError:
    issues = [Issue("error", "invalid", p.message, [p.location] if p.location else []) for p in err.problems]
    summary = issues[0].diagnostics if len(issues) == 1 else f"{issues[0].diagnostics} (and {len(issues) - 1} more)"
    return FhirError("invalid", summary, issues=issues)


def _response(req: FhirRequest, inputs: Inputs, session: Session) -> tuple[dict[str, Any], str | None]:
    """The QuestionnaireResponse to score and, if it is stored, its reference."""
    if req.res_id is not None:
        if inputs.has("questionnaireResponse"):
            raise FhirError("bad-request", "At instance level the stored QuestionnaireResponse is scored; send none")
        res_id = require_id(req.res_id)
        return read_live(session, QR, res_id).resource(), f"{QR}/{res_id}"
    response = inputs.get("questionnaireResponse")
    if response is None:
        raise FhirError(
            "bad-request", "$assess-constitution needs a QuestionnaireResponse (the body, or a Parameters part)"
        )
    check_resource(response, QR)
    res_id = response.get("id")
    if isinstance(res_id, str):
        current = session.read_current(QR, res_id)
        if current is not None and not current.deleted and _same(current.resource(), response):
            return response, f"{QR}/{res_id}"
    return response, None


def _same(stored: dict[str, Any], given: dict[str, Any]) -> bool:
    return {k: v for k, v in stored.items() if k != "meta"} == {k: v for k, v in given.items() if k != "meta"}


def _derived_from(response: dict[str, Any], stored_ref: str | None) -> dict[str, Any] | None:
    if stored_ref is not None:
        return {"reference": stored_ref}
    ident = response.get("identifier")
    if isinstance(ident, dict):
        return {"type": QR, "identifier": copy.deepcopy(ident)}
    return None


def _patient_id(ctx: RequestContext, reference: object) -> str | None:
    if not isinstance(reference, str):
        return None
    ref = reference.removeprefix(ctx.base_url + "/")
    parts = ref.split("/")
    if len(parts) in (2, 4) and parts[0] == "Patient" and (len(parts) == 2 or parts[2] == "_history"):
        return parts[1]
    return None


def _sex(ctx: RequestContext, session: Session, response: dict[str, Any], given: str | None) -> str:
    subject = response.get("subject")
    patient_id = _patient_id(ctx, subject.get("reference") if isinstance(subject, dict) else None)
    why = "the QuestionnaireResponse has no Patient subject"
    if patient_id is not None:
        current = session.read_current("Patient", patient_id)
        if current is None or current.deleted:
            why = f"Patient/{patient_id} cannot be read"
        else:
            gender = current.resource().get("gender")
            if gender in SEXES:
                if given is not None and given != gender:
                    raise FhirError(
                        "processing",
                        f"The sex parameter ({given}) contradicts Patient/{patient_id}.gender ({gender})",
                        f"{QR}.subject",
                    )
                return str(gender)
            why = f"Patient/{patient_id}.gender is {gender or 'absent'}"
    if given is not None:
        return given
    raise FhirError(
        "processing",
        f"The subject's sex (male or female) is needed to score 湿热质, but {why}; pass the sex parameter",
        f"{QR}.subject",
    )
