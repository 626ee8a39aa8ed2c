"""``$validate-code`` (IHE ITI-99) on ValueSet and CodeSystem, type and instance level, GET and POST.

See http://hl7.org/fhir/R4/valueset-operation-validate-code.html,
http://hl7.org/fhir/R4/codesystem-operation-validate-code.html and terminology/validate.py
for the verdicts (a wrong display is a warning, an unknown code ``result`` = false). The value
set or code system validated against is named by ``url``, by the instance id, or given whole
(``valueSet``/``codeSystem`` in a POSTed body); if it is not stored, 404.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.expand import named_valueset
from fhir_server.rest.operations.terminology_inputs import BOOLEAN, CODING, CONCEPT, STRING, Inputs, coded_inputs
from fhir_server.terminology.locate import NotStored, open_codesystem
from fhir_server.terminology.memory import MemoryContent
from fhir_server.terminology.parameters import not_found
from fhir_server.terminology.validate import answer, in_codesystem, in_valueset

_COMMON = {
    "code": (STRING, False),
    "display": (STRING, False),
    "coding": (CODING, False),
    "codeableConcept": (CONCEPT, False),
    "abstract": (BOOLEAN, False),
    "displayLanguage": (STRING, False),
}
VALUESET_SPEC = {
    "url": (STRING, False),
    "valueSet": ("resource:ValueSet", False),
    "valueSetVersion": (STRING, False),
    "system": (STRING, False),
    "systemVersion": (STRING, False),
    **_COMMON,
}
CODESYSTEM_SPEC = {
    "url": (STRING, False),
    "codeSystem": ("resource:CodeSystem", False),
    "version": (STRING, False),
    **_COMMON,
}
UNSUPPORTED = frozenset({"context", "date"})


def valueset(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "ValueSet"
    inputs = Inputs(req, "validate-code", VALUESET_SPEC, UNSUPPORTED)
    coded = coded_inputs(inputs, "system", "systemVersion")
    abstract_ok = inputs.get("abstract") is not False
    with ctx.session() as session:
        vs, reference = named_valueset(req, inputs, session, ctx, "validate-code")
        verdicts = [
            in_valueset(
                session,
                vs,
                c,
                reference=reference,
                language=inputs.get("displayLanguage"),
                abstract_ok=abstract_ok,
                search=ctx.search,
            )
            for c in coded
        ]
    return FhirResponse(200, resource=answer(verdicts))


def codesystem(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "CodeSystem"
    inputs = Inputs(req, "validate-code", CODESYSTEM_SPEC, UNSUPPORTED)
    abstract_ok = inputs.get("abstract") is not False
    with ctx.session() as session:
        if req.res_id is not None:
            for name in ("url", "codeSystem"):
                if inputs.has(name):
                    raise FhirError("invalid-param", f"$validate-code on CodeSystem/{req.res_id} takes no {name}", name)
        else:
            inputs.forbid_together("url", "codeSystem")
        posted = inputs.get("codeSystem")
        if posted is not None:
            content = MemoryContent(posted, posted.get("id"))
        else:
            url = inputs.get("url")
            if req.res_id is None and not url:
                raise FhirError("invalid-param", "$validate-code needs url (the code system) or a codeSystem", "url")
            try:
                content = open_codesystem(session, url, inputs.get("version"), res_id=req.res_id, search=ctx.search)
            except NotStored as err:
                raise not_found(err) from None
        coded = coded_inputs(inputs, None, "version", system_default=content.info.url)
        verdicts = [
            in_codesystem(content, c, language=inputs.get("displayLanguage"), abstract_ok=abstract_ok) for c in coded
        ]
    return FhirResponse(200, resource=answer(verdicts))
