"""The route table: every FHIR interaction the server answers, in one place.

Why one table: the HTTP adapter, the batch/transaction processor and the CapabilityStatement
all read it, so the server cannot claim an interaction it does not route, nor route one it
does not claim (ARCHITECTURE.md, "One route table").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions import (
    audit_events,
    batch,
    capabilities,
    create,
    delete,
    history,
    patch,
    read,
    reindex,
    search,
    update,
    vread,
)
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations import (
    aecg_import,
    assess_constitution,
    deidentify,
    documents,
    everything,
    expand,
    export_abroad,
    lookup,
    meridian_interpretation,
    multicentre,
    scheduling,
    subscriptions,
    subsumes,
    translate,
    validate,
    validate_code,
)
from fhir_server.security import access

Handler = Callable[[FhirRequest, RequestContext], FhirResponse]


@dataclass(frozen=True)
class Route:
    """``pattern`` segments: literals, ``{type}``, ``{id}``, ``{vid}``."""

    interaction: str  # CapabilityStatement code (TypeRestfulInteraction / SystemRestfulInteraction)
    level: str  # instance | type | system
    method: str
    pattern: tuple[str, ...]
    handler: Handler
    #: the handler reads ``req.body`` itself (a non-FHIR document such as an aECG): the adapter
    #: parses the body as a FHIR resource only when its media type is a FHIR one
    raw_body: bool = False
    #: the SMART permissions an operation needs, as (resource type or "{type}", letters of
    #: "cruds"); None: derived from the interaction (security/access.py)
    access: tuple[tuple[str, str], ...] | None = None


_ADMIN = (("*", "cruds"),)
_READ = (("{type}", "r"),)
_ASSESS = (("QuestionnaireResponse", "r"), ("Observation", "c"))
_BOOK = (("Slot", "r"), ("Appointment", "c"))

ROUTES: tuple[Route, ...] = (
    Route("capabilities", "system", "GET", ("metadata",), capabilities.handle),
    # the audit store (rest/interactions/audit_events.py): read, ITI-81 search, ITI-20 feed; append-only
    Route("read", "instance", "GET", ("AuditEvent", "{id}"), audit_events.read),
    Route("search-type", "type", "GET", ("AuditEvent",), audit_events.search),
    Route("search-type", "type", "POST", ("AuditEvent", "_search"), audit_events.search),
    Route("create", "type", "POST", ("AuditEvent",), audit_events.create),
    *(
        Route(interaction, level, method, pattern, audit_events.refuse)
        for interaction, level, method, pattern in (
            ("update", "instance", "PUT", ("AuditEvent", "{id}")),
            ("patch", "instance", "PATCH", ("AuditEvent", "{id}")),
            ("delete", "instance", "DELETE", ("AuditEvent", "{id}")),
            ("update", "type", "PUT", ("AuditEvent",)),
            ("patch", "type", "PATCH", ("AuditEvent",)),
            ("delete", "type", "DELETE", ("AuditEvent",)),
            ("history-instance", "instance", "GET", ("AuditEvent", "{id}", "_history")),
            ("history-type", "type", "GET", ("AuditEvent", "_history")),
        )
    ),
    Route("transaction", "system", "POST", (), batch.handle),
    Route("history-system", "system", "GET", ("_history",), history.handle),
    Route("search-system", "system", "GET", (), search.handle),
    Route("search-system", "system", "POST", ("_search",), search.handle),
    Route("search-type", "type", "GET", ("{type}",), search.handle),
    Route("search-type", "type", "POST", ("{type}", "_search"), search.handle),
    Route("create", "type", "POST", ("{type}",), create.handle),
    Route("update", "type", "PUT", ("{type}",), update.handle),  # conditional update
    Route("patch", "type", "PATCH", ("{type}",), patch.handle),  # conditional patch
    Route("delete", "type", "DELETE", ("{type}",), delete.handle),  # conditional delete
    Route("history-type", "type", "GET", ("{type}", "_history"), history.handle),
    Route("read", "instance", "GET", ("{type}", "{id}"), read.handle),
    Route("update", "instance", "PUT", ("{type}", "{id}"), update.handle),
    Route("patch", "instance", "PATCH", ("{type}", "{id}"), patch.handle),
    Route("delete", "instance", "DELETE", ("{type}", "{id}"), delete.handle),
    Route("history-instance", "instance", "GET", ("{type}", "{id}", "_history"), history.handle),
    Route("vread", "instance", "GET", ("{type}", "{id}", "_history", "{vid}"), vread.handle),
    Route("search-compartment", "compartment", "GET", ("{compartment}", "{cid}", "{type}"), search.handle),
    Route("search-compartment", "compartment", "POST", ("{compartment}", "{cid}", "{type}", "_search"), search.handle),
    # operations: interaction "$name" (the CapabilityStatement lists them under ``operation``)
    Route("$reindex", "system", "POST", ("$reindex",), reindex.start, access=_ADMIN),
    Route("$reindex", "type", "POST", ("{type}", "$reindex"), reindex.start, access=_ADMIN),
    Route("$reindex", "system", "GET", ("$reindex", "{id}"), reindex.status, access=_ADMIN),  # async status URL
    Route("$reindex", "system", "DELETE", ("$reindex", "{id}"), reindex.cancel, access=_ADMIN),
    Route("$validate", "type", "POST", ("{type}", "$validate"), validate.handle, access=_READ),
    Route("$validate", "instance", "POST", ("{type}", "{id}", "$validate"), validate.handle, access=_READ),
    Route("$validate", "instance", "GET", ("{type}", "{id}", "$validate"), validate.handle, access=_READ),
    Route(
        "$assess-constitution",
        "type",
        "POST",
        ("QuestionnaireResponse", "$assess-constitution"),
        assess_constitution.handle,
        access=_ASSESS,
    ),
    Route(
        "$assess-constitution",
        "instance",
        "POST",
        ("QuestionnaireResponse", "{id}", "$assess-constitution"),
        assess_constitution.handle,
        access=_ASSESS,
    ),
    Route(
        "$interpret-meridian",
        "type",
        "POST",
        ("Observation", "$interpret-meridian"),
        meridian_interpretation.handle,
        access=(("Observation", "r"),),
    ),
    Route(
        "$import-aecg",
        "type",
        "POST",
        ("Observation", "$import-aecg"),
        aecg_import.handle,
        raw_body=True,
        access=(("Observation", "c"), ("DocumentReference", "c"), ("Binary", "c")),
    ),
    # the patient's record: rest/operations/everything.py
    Route(
        "$everything",
        "instance",
        "GET",
        ("Patient", "{id}", "$everything"),
        everything.handle,
        access=(("Patient", "r"), ("*", "s")),
    ),
    # experts' time, IHE ITI Scheduling: rest/operations/scheduling.py
    *(
        Route("$find", "type", method, ("Appointment", "$find"), scheduling.find, access=(("Slot", "s"),))
        for method in ("GET", "POST")
    ),
    Route("$hold", "type", "POST", ("Appointment", "$hold"), scheduling.hold, access=_BOOK),
    Route("$book", "type", "POST", ("Appointment", "$book"), scheduling.book, access=_BOOK),
    # the consultation report: rest/operations/documents.py
    Route(
        "$draft-report",
        "instance",
        "POST",
        ("ServiceRequest", "{id}", "$draft-report"),
        documents.draft_report,
        access=(("ServiceRequest", "r"), ("Observation", "s"), ("Composition", "c")),
    ),
    Route("$document", "instance", "GET", ("Composition", "{id}", "$document"), documents.document, access=_READ),
    Route(
        "$document",
        "instance",
        "POST",
        ("Composition", "{id}", "$document"),
        documents.document,
        access=(("Composition", "r"), ("Bundle", "c"), ("DocumentReference", "cu")),
    ),
    # a multi-centre consultation: rest/operations/multicentre.py
    Route(
        "$invite",
        "instance",
        "POST",
        ("ServiceRequest", "{id}", "$invite"),
        multicentre.invite,
        access=(("ServiceRequest", "r"), ("Task", "cs")),
    ),
    Route(
        "$package",
        "instance",
        "GET",
        ("ServiceRequest", "{id}", "$package"),
        multicentre.package,
        access=(("ServiceRequest", "r"), ("Task", "s"), ("Observation", "s")),
    ),
    Route(
        "$archive",
        "instance",
        "POST",
        ("ServiceRequest", "{id}", "$archive"),
        multicentre.archive,
        access=(("ServiceRequest", "r"), ("Bundle", "c")),
    ),  # fmt: skip
    # Subscriptions Backport: rest/operations/subscriptions.py
    *(
        Route(f"${name}", "instance", method, ("Subscription", "{id}", f"${name}"), handler, access=_READ)
        for name, handler in (
            ("status", subscriptions.status),
            ("events", subscriptions.events),
            ("get-ws-binding-token", subscriptions.ws_binding_token),
        )
        for method in ("GET", "POST")
    ),
    # data sent abroad and its ledger (R28): rest/operations/export_abroad.py
    Route("$export-abroad", "system", "POST", ("$export-abroad",), export_abroad.export, access=(("*", "rs"),)),
    Route("$export-ledger", "system", "GET", ("$export-ledger",), export_abroad.ledger, access=(("AuditEvent", "s"),)),
    # de-identification (R25): rest/operations/deidentify.py
    Route("$deidentify", "instance", "GET", ("{type}", "{id}", "$deidentify"), deidentify.instance, access=_READ),
    Route("$deidentify", "instance", "POST", ("{type}", "{id}", "$deidentify"), deidentify.instance, access=_READ),
    Route("$deidentify", "system", "POST", ("$deidentify",), deidentify.system, access=()),
    # terminology (IHE SVCM ITI-97..101): rest/operations/{lookup,expand,validate_code,subsumes,translate}.py
    *(
        Route(f"${name}", level, method, pattern, handler, access=((pattern[0], "r"),))
        for name, level, pattern, handler in (
            ("lookup", "type", ("CodeSystem", "$lookup"), lookup.handle),
            ("validate-code", "type", ("CodeSystem", "$validate-code"), validate_code.codesystem),
            ("validate-code", "instance", ("CodeSystem", "{id}", "$validate-code"), validate_code.codesystem),
            ("subsumes", "type", ("CodeSystem", "$subsumes"), subsumes.handle),
            ("subsumes", "instance", ("CodeSystem", "{id}", "$subsumes"), subsumes.handle),
            ("expand", "type", ("ValueSet", "$expand"), expand.handle),
            ("expand", "instance", ("ValueSet", "{id}", "$expand"), expand.handle),
            ("validate-code", "type", ("ValueSet", "$validate-code"), validate_code.valueset),
            ("validate-code", "instance", ("ValueSet", "{id}", "$validate-code"), validate_code.valueset),
            ("translate", "type", ("ConceptMap", "$translate"), translate.handle),
            ("translate", "instance", ("ConceptMap", "{id}", "$translate"), translate.handle),
        )
        for method in ("GET", "POST")
    ),
)


def _matches(pattern: tuple[str, ...], segments: list[str]) -> dict[str, str] | None:
    if len(pattern) != len(segments):
        return None
    out: dict[str, str] = {}
    for pat, seg in zip(pattern, segments, strict=True):
        if pat.startswith("{"):
            if seg.startswith("_") or seg.startswith("$") or seg == "metadata":
                return None
            out[pat[1:-1]] = seg
        elif pat != seg:
            return None
    return out


#: the routes by number of path segments, in table order (the first match wins)
_BY_LENGTH: dict[int, tuple[Route, ...]] = {
    n: tuple(r for r in ROUTES if len(r.pattern) == n) for n in {len(r.pattern) for r in ROUTES}
}


def resolve(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """Route and path variables for ``method`` and ``path`` (relative to the FHIR base)."""
    method = "GET" if method == "HEAD" else method
    segments = [s for s in path.strip("/").split("/") if s]
    shape_matched = False
    for route in _BY_LENGTH.get(len(segments), ()):
        found = _matches(route.pattern, segments)
        if found is None:
            continue
        shape_matched = True
        if route.method == method:
            if "type" not in found and route.pattern and route.pattern[0][:1].isupper():
                found["type"] = route.pattern[0]  # a route of one type ("AuditEvent", "Observation/$import-aecg")
            return route, found
    if shape_matched:
        raise FhirError("not-allowed", f"{method} is not supported on /{'/'.join(segments)}")
    raise FhirError("not-found", f"No FHIR interaction at /{'/'.join(segments)}")


def bind(req: FhirRequest, variables: dict[str, str]) -> FhirRequest:
    req.res_type = variables.get("type")
    req.res_id = variables.get("id")
    req.vid = variables.get("vid")
    if "compartment" in variables:
        req.compartment = (variables["compartment"], variables["cid"])
    return req


def run(
    route: Route,
    variables: dict[str, str],
    req: FhirRequest,
    ctx: RequestContext,
    call: Callable[[], FhirResponse] | None = None,
) -> FhirResponse:
    """The route's handler (or ``call``), once the request's token allows it
    (security/access.py); its outcome, answer or failure, is audited (audit/interactions.py)."""
    bind(req, variables)
    try:
        access.check(ctx.principal, route, req)
        if ctx.access is not None and ctx.access.scopes is not None:  # SMART scopes with a query
            access.check_rows(ctx, route, req)
        resp = call() if call is not None else route.handler(req, ctx)
    except FhirError as err:
        if ctx.auditor is not None:
            ctx.auditor.interaction(route.interaction, req, err.status, err.diagnostics, None)
        raise
    except Exception:
        if ctx.auditor is not None:
            ctx.auditor.interaction(route.interaction, req, 500, "internal error", None)
        raise
    if ctx.auditor is not None:
        ctx.auditor.interaction(route.interaction, req, resp.status, None, resp)
    return resp


def dispatch(req: FhirRequest, path: str, ctx: RequestContext) -> FhirResponse:
    route, variables = resolve(req.method, path)
    return run(route, variables, req, ctx)
