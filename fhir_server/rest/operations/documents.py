"""``ServiceRequest/[id]/$draft-report`` and ``Composition/[id]/$document``: the consultation report.

The rules are workflow/documents.py's. ``$draft-report`` stores a preliminary report drafted from
the request and its experts' opinions (201, like a create). ``$document`` is FHIR's
(http://hl7.org/fhir/R4/composition-operation-document.html): the document Bundle of the
Composition; with ``persist=true`` it is the publication — signed, stored, indexed by a
DocumentReference and recorded by a Provenance, in one transaction — and the answer carries the
stored Bundle's ``Location``. ``graph`` (a GraphDefinition choosing what to include) is refused:
the document holds what the Composition references.
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions.common import read_live, require_id, written
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import BOOLEAN, REFERENCE, Inputs
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.workflow import documents
from fhir_server.workflow.shared_records import acting, provenance_agent

DRAFT_SPEC = {"author": (REFERENCE, False)}
DOCUMENT_SPEC = {"persist": (BOOLEAN, False)}
_MAX_FOUND = 1000


def draft_report(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    request_id = require_id(req.res_id)
    inputs = Inputs(req, "draft-report", DRAFT_SPEC)
    with ctx.session(write=True) as session:
        request = read_live(session, "ServiceRequest", request_id).resource()
        params = [("based-on", f"ServiceRequest/{request_id}"), ("_profile", documents.OPINION_PROFILE)]
        opinions = find_all(ctx, session, "Observation", params)
        access = session.access
        institution = None if access is None or access.platform else access.organization
        author = inputs.get("author") or _author(ctx, session)
        composition = documents.draft_report(request, opinions, author, institution)
        stored = session.create(composition)
    return written(req, ctx, stored, 201, f"Drafted Composition/{stored.res_id} from ServiceRequest/{request_id}")


def document(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    composition_id = require_id(req.res_id)
    inputs = Inputs(req, "document", DOCUMENT_SPEC, unsupported=frozenset({"graph", "id"}))
    if not inputs.get("persist"):
        with ctx.session() as session:
            composition = read_live(session, "Composition", composition_id)
            return FhirResponse(200, resource=documents.document(session, composition, ctx.base_url))
    if ctx.document_keys is None:
        raise FhirError("exception", "This server has no document signing key")
    with ctx.session(write=True) as session:
        composition = read_live(session, "Composition", composition_id)
        access = session.access
        if access is not None and not access.platform and composition.tenant != access.organization:
            raise FhirError(
                "forbidden",
                f"Composition/{composition_id} is another institution's report: "
                "only its author institution publishes it",
            )
        stored = documents.publish(
            session,
            composition,
            ctx.base_url,
            ctx.document_keys,
            lambda res_type, params: find_all(ctx, session, res_type, params),
            provenance_agent(session, "author"),
        )
    resp = FhirResponse.for_version(200, stored)
    resp.headers["Location"] = ctx.full_url(stored.location)
    return resp


def find_all(
    ctx: RequestContext, session: Session, res_type: str, params: list[tuple[str, str]]
) -> list[StoredVersion]:
    """Every current match the session may see (an operation's lookup; more than 1000 is a 413)."""
    page = ctx.search.search(session, res_type, params, _MAX_FOUND)
    if page.has_next:
        raise FhirError("too-costly", f"More than {_MAX_FOUND} {res_type} resources match {params}")
    return list(page.versions)


def _author(ctx: RequestContext, session: Session) -> dict[str, Any]:
    """The report's author: the signed-in person's role in their institution (the profile's
    author is a PractitionerRole or an Organization), else the institution."""
    access = session.access
    if access is not None and access.user and access.organization and access.user.startswith("Practitioner/"):
        params = [("practitioner", access.user), ("organization", f"Organization/{access.organization}")]
        roles = find_all(ctx, session, "PractitionerRole", params)
        if len(roles) == 1:
            return {"reference": f"PractitionerRole/{roles[0].res_id}"}
    return acting(session)
