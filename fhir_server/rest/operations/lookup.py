"""``CodeSystem/$lookup`` (IHE ITI-98): ``GET`` or ``POST [base]/CodeSystem/$lookup``.

See http://hl7.org/fhir/R4/codesystem-operation-lookup.html (type level only, as R4 defines
it) and terminology/lookup.py for what the answer holds. A code system that is not stored, or a
code it does not define, is 404 (terminology/parameters.py says why).
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.terminology_inputs import CODING, STRING, Inputs
from fhir_server.terminology.locate import NotStored, open_codesystem
from fhir_server.terminology.lookup import lookup
from fhir_server.terminology.parameters import not_found

SPEC = {
    "code": (STRING, False),
    "system": (STRING, False),
    "version": (STRING, False),
    "coding": (CODING, False),
    "displayLanguage": (STRING, False),
    "property": (STRING, True),
}
UNSUPPORTED = frozenset({"date"})


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "CodeSystem"
    inputs = Inputs(req, "lookup", SPEC, UNSUPPORTED)
    inputs.forbid_together("code", "coding")
    system, code, version = inputs.get("system"), inputs.get("code"), inputs.get("version")
    coding = inputs.get("coding")
    if coding is not None:
        code = coding.get("code")
        if system and coding.get("system") and coding["system"] != system:
            raise FhirError(
                "invalid-param", f"$lookup: coding.system {coding['system']} contradicts system {system}", "coding"
            )
        system = coding.get("system") or system
        version = coding.get("version") or version
        if not code:
            raise FhirError("invalid-param", "$lookup: coding has no code", "coding")
    if not code:
        raise FhirError("invalid-param", "$lookup needs code (with system) or coding", "code")
    if not system:
        raise FhirError("invalid-param", "$lookup needs system: the code system the code is from", "system")
    with ctx.session() as session:
        try:
            content = open_codesystem(session, system, version, search=ctx.search)
        except NotStored as err:
            raise not_found(err) from None
        answer = lookup(
            content, code, display_language=inputs.get("displayLanguage"), properties=inputs.all("property") or None
        )
    return FhirResponse(200, resource=answer)
