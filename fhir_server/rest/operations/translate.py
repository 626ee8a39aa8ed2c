"""``ConceptMap/$translate`` (IHE ITI-101), GET or POST, at ``ConceptMap/`` and ``ConceptMap/[id]/``.

See http://hl7.org/fhir/R4/conceptmap-operation-translate.html and terminology/translate.py.
The map is the instance, the one with canonical ``url`` (``conceptMapVersion``), or one given
whole as ``conceptMap``; without any of them, every stored map whose groups start (or, with
``reverse``, end) at the code's system is tried, at most ``MAX_CANDIDATES`` of them. A named map
that is not stored is 404; no applicable map is an answer (``result`` = false), not an error.
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.terminology_inputs import BOOLEAN, CODING, CONCEPT, STRING, Inputs, coded_inputs
from fhir_server.storage.repository import Session
from fhir_server.terminology.canonical import escape_search_value
from fhir_server.terminology.locate import NotStored, open_resource
from fhir_server.terminology.parameters import not_found
from fhir_server.terminology.translate import translate

#: stored ConceptMaps tried when no map is named
MAX_CANDIDATES = 100
SPEC = {
    "url": (STRING, False),
    "conceptMap": ("resource:ConceptMap", False),
    "conceptMapVersion": (STRING, False),
    "code": (STRING, False),
    "system": (STRING, False),
    "version": (STRING, False),
    "source": (STRING, False),
    "coding": (CODING, False),
    "codeableConcept": (CONCEPT, False),
    "target": (STRING, False),
    "targetsystem": (STRING, False),
    "reverse": (BOOLEAN, False),
}
UNSUPPORTED = frozenset({"dependency"})


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "ConceptMap"
    inputs = Inputs(req, "translate", SPEC, UNSUPPORTED)
    coded = coded_inputs(inputs, "system", "version")
    reverse = bool(inputs.get("reverse"))
    with ctx.session() as session:
        maps = _maps(req, inputs, session, ctx, coded, reverse)

        def resolve(url: str) -> dict[str, Any] | None:
            try:
                return open_resource(session, "ConceptMap", url, search=ctx.search)
            except NotStored:
                return None

        answer = translate(
            maps,
            coded,
            source=inputs.get("source"),
            target=inputs.get("target"),
            target_system=inputs.get("targetsystem"),
            reverse=reverse,
            resolve=resolve,
        )
    return FhirResponse(200, resource=answer)


def _maps(
    req: FhirRequest, inputs: Inputs, session: Session, ctx: RequestContext, coded: list[Any], reverse: bool
) -> list[dict[str, Any]]:
    version = inputs.get("conceptMapVersion")
    if req.res_id is not None:
        for name in ("url", "conceptMap"):
            if inputs.has(name):
                raise FhirError("invalid-param", f"$translate on ConceptMap/{req.res_id} takes no {name}", name)
        try:
            return [open_resource(session, "ConceptMap", res_id=req.res_id, version=version, search=ctx.search)]
        except NotStored as err:
            raise not_found(err) from None
    inputs.forbid_together("url", "conceptMap")
    if inputs.has("conceptMap"):
        return [inputs.get("conceptMap")]
    if inputs.has("url"):
        try:
            return [open_resource(session, "ConceptMap", inputs.get("url"), version, search=ctx.search)]
        except NotStored as err:
            raise not_found(err) from None
    if version is not None:
        raise FhirError("invalid-param", "$translate: conceptMapVersion goes with url", "conceptMapVersion")
    param = "target-system" if reverse else "source-system"
    found: dict[int, dict[str, Any]] = {}
    for system in sorted({c.system for c in coded if c.system}):
        for stored in ctx.search.match(session, "ConceptMap", [(param, escape_search_value(system))], MAX_CANDIDATES):
            found.setdefault(stored.rid, stored.resource())
    return list(found.values())
