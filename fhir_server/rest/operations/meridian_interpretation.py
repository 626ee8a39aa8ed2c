"""``$interpret-meridian``: ``POST [base]/Observation/$interpret-meridian``.

Takes a meridian measurement Observation (24 ``tcm-meridian-point`` components in µA) as the
body or as the ``observation`` part of a Parameters body, and returns it completed: each point
judged 虚/平/实 against the band around the mean, the mean and band edges as components, and a
component per meridian whose left/right sides differ twofold (clinical/meridian_fhir.py).
Nothing is stored: the client stores the completed Observation as it likes (PUT or POST), so
a measurement can be re-interpreted with another band without leaving derived copies behind.

Band parameters: ``relativeWidth`` (fraction of the mean, default 1/3, the 经穴测定 rule) or
``absoluteWidth`` (µA either side of the mean, e.g. 15 for the Ryodoraku-style band [U]).
Definition: profiles/operationdefinition-interpret-meridian.json. Errors are a ``422`` with the
FHIRPath of each offending component.
"""

from __future__ import annotations

from fhir_server.clinical.meridian import MeridianInputError
from fhir_server.clinical.meridian_fhir import interpret_observation
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import DECIMAL, Inputs
from fhir_server.validation import check_resource

SPEC = {
    "observation": ("resource:Observation", False),
    "relativeWidth": (DECIMAL, False),
    "absoluteWidth": (DECIMAL, False),
}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "interpret-meridian", SPEC, body_resource="observation")
    observation = inputs.get("observation")
    if observation is None:
        raise FhirError("bad-request", "$interpret-meridian needs an Observation (the body, or a Parameters part)")
    check_resource(observation, "Observation")
    try:
        completed, _ = interpret_observation(
            observation, relative_width=inputs.get("relativeWidth"), absolute_width=inputs.get("absoluteWidth")
        )
    except MeridianInputError as err:
        issues = [Issue("error", "invalid", message, [where] if where else []) for message, where in err.problems]
        more = f" (and {len(issues) - 1} more)" if len(issues) > 1 else ""
        raise FhirError("invalid", issues[0].diagnostics + more, issues=issues) from None
    check_resource(completed, "Observation")
    return FhirResponse(200, resource=completed)
