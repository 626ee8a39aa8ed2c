"""``CodeSystem/$subsumes``: ``GET``/``POST [base]/CodeSystem/$subsumes`` and ``CodeSystem/[id]/$subsumes``.

See http://hl7.org/fhir/R4/codesystem-operation-subsumes.html and terminology/subsumes.py.
Each side is ``codeA``/``codeB`` or ``codingA``/``codingB``; the code system is the instance,
or ``system`` (which may be left out when both codings name the same system). A Coding from
another code system cannot be related here (422): this server holds no cross-system links.
"""

from __future__ import annotations

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.terminology_inputs import CODING, STRING, Inputs
from fhir_server.terminology.locate import NotStored, open_codesystem
from fhir_server.terminology.parameters import not_found
from fhir_server.terminology.subsumes import subsumes

SPEC = {
    "codeA": (STRING, False),
    "codeB": (STRING, False),
    "system": (STRING, False),
    "version": (STRING, False),
    "codingA": (CODING, False),
    "codingB": (CODING, False),
}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "CodeSystem"
    inputs = Inputs(req, "subsumes", SPEC)
    sides = []
    for side in ("A", "B"):
        inputs.forbid_together(f"code{side}", f"coding{side}")
        coding = inputs.get(f"coding{side}")
        if coding is not None:
            if not coding.get("code"):
                raise FhirError("invalid-param", f"$subsumes: coding{side} has no code", f"coding{side}")
            sides.append((coding["code"], coding.get("system"), f"coding{side}"))
        elif inputs.has(f"code{side}"):
            sides.append((inputs.get(f"code{side}"), None, f"code{side}"))
        else:
            raise FhirError("invalid-param", f"$subsumes needs code{side} or coding{side}", f"code{side}")
    system = inputs.get("system")
    if req.res_id is not None and system:
        raise FhirError("invalid-param", f"$subsumes on CodeSystem/{req.res_id} takes no system", "system")
    coding_systems = {s for _, s, _ in sides if s}
    if req.res_id is None and not system:
        if len(coding_systems) != 1:
            raise FhirError(
                "invalid-param", "$subsumes needs system (or codings that both name the same system)", "system"
            )
        system = next(iter(coding_systems))
    with ctx.session() as session:
        try:
            content = open_codesystem(session, system, inputs.get("version"), res_id=req.res_id, search=ctx.search)
        except NotStored as err:
            raise not_found(err) from None
        for _, coding_system, name in sides:
            if coding_system and coding_system != content.info.url:
                raise FhirError(
                    "processing",
                    f"$subsumes: {name} is from {coding_system}, not {content.info.url}; "
                    "this server holds no relationships between code systems",
                    name,
                )
        answer = subsumes(content, sides[0][0], sides[1][0])
    return FhirResponse(200, resource=answer)
