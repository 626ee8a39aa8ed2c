"""``ValueSet/$expand`` (IHE ITI-97): ``GET``/``POST [base]/ValueSet/$expand`` and ``ValueSet/[id]/$expand``.

See http://hl7.org/fhir/R4/valueset-operation-expand.html and terminology/expand.py for the
rules (nesting, paging, filter, limits). The value set is named by ``url`` (with
``valueSetVersion``), by the instance id, or given whole as ``valueSet`` in a POSTed body; one
of them, never two. A value set that is not stored is 404; one that cannot be expanded is 422.
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.terminology_inputs import BOOLEAN, INTEGER, STRING, Inputs
from fhir_server.storage.repository import Session
from fhir_server.terminology.expand import ExpandOptions, expand
from fhir_server.terminology.locate import NotStored, open_resource
from fhir_server.terminology.parameters import not_found

SPEC = {
    "url": (STRING, False),
    "valueSet": ("resource:ValueSet", False),
    "valueSetVersion": (STRING, False),
    "filter": (STRING, False),
    "offset": (INTEGER, False),
    "count": (INTEGER, False),
    "includeDesignations": (BOOLEAN, False),
    "activeOnly": (BOOLEAN, False),
    "excludeNested": (BOOLEAN, False),
    "displayLanguage": (STRING, False),
}
UNSUPPORTED = frozenset(
    {
        "context",
        "contextDirection",
        "date",
        "designation",
        "includeDefinition",
        "excludeNotForUI",
        "excludePostCoordinated",
        "exclude-system",
        "system-version",
        "check-system-version",
        "force-system-version",
    }
)
_ECHO = ("filter", "offset", "count", "includeDesignations", "activeOnly", "excludeNested", "displayLanguage")


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    req.res_type = "ValueSet"
    inputs = Inputs(req, "expand", SPEC, UNSUPPORTED)
    options = ExpandOptions(
        filter=inputs.get("filter"),
        offset=inputs.get("offset") or 0,
        count=inputs.get("count"),
        include_designations=bool(inputs.get("includeDesignations")),
        active_only=bool(inputs.get("activeOnly")),
        exclude_nested=bool(inputs.get("excludeNested")),
        display_language=inputs.get("displayLanguage"),
        echo=inputs.echo(*_ECHO),
    )
    with ctx.session() as session:
        valueset, reference = named_valueset(req, inputs, session, ctx, "expand")
        answer = expand(session, valueset, options, ctx.search, reference=reference)
    return FhirResponse(200, resource=answer)


def named_valueset(
    req: FhirRequest, inputs: Inputs, session: Session, ctx: RequestContext, op: str
) -> tuple[dict[str, Any], str | None]:
    """The value set the call is about and, if stored, its reference (for the cached evaluation)."""
    version = inputs.get("valueSetVersion")
    if req.res_id is not None:
        for name in ("url", "valueSet"):
            if inputs.has(name):
                raise FhirError("invalid-param", f"${op} on ValueSet/{req.res_id} takes no {name}", name)
        try:
            valueset = open_resource(session, "ValueSet", res_id=req.res_id, version=version, search=ctx.search)
        except NotStored as err:
            raise not_found(err) from None
        return valueset, f"ValueSet/{req.res_id}"
    inputs.forbid_together("url", "valueSet")
    if inputs.has("valueSet"):
        if version is not None:
            raise FhirError(
                "invalid-param",
                f"${op}: valueSetVersion goes with url, not with a valueSet given whole",
                "valueSetVersion",
            )
        return inputs.get("valueSet"), None
    url = inputs.get("url")
    if not url:
        raise FhirError("invalid-param", f"${op} needs url (the value set's canonical url) or a valueSet", "url")
    try:
        valueset = open_resource(session, "ValueSet", url, version, search=ctx.search)
    except NotStored as err:
        raise not_found(err) from None
    reference = url if "|" in url or version is None else f"{url}|{version}"
    return valueset, reference
