"""capabilities: ``GET [base]/metadata`` (http://hl7.org/fhir/R4/http.html#capabilities).

Generated from the route table and the search-parameter registry, so it states exactly what is
routed: an interaction appears only if a route serves it.
"""

from __future__ import annotations

import functools
from typing import Any

from fhir_server import __version__
from fhir_server.context import RequestContext
from fhir_server.model import FHIR_VERSION, get_model
from fhir_server.notify.topics import TOPICS
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.search.query import supported_modifiers
from fhir_server.util.clock import instant, now_us

FORMATS = ["application/fhir+json", "application/fhir+xml", "json", "xml"]
#: Canonical URLs of the server's own operations (no OperationDefinition is published for them).
OPERATIONS = {
    "reindex": "urn:telefhir:OperationDefinition:reindex",
    "validate": "http://hl7.org/fhir/OperationDefinition/Resource-validate",
    "assess-constitution": "http://fhir.telefhir.cn/OperationDefinition/assess-constitution",
    "interpret-meridian": "http://fhir.telefhir.cn/OperationDefinition/interpret-meridian",
    "import-aecg": "http://fhir.telefhir.cn/OperationDefinition/import-aecg",
    "deidentify": "http://fhir.telefhir.cn/OperationDefinition/deidentify",
    "everything": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    "export-abroad": "http://fhir.telefhir.cn/OperationDefinition/export-abroad",
    "export-ledger": "http://fhir.telefhir.cn/OperationDefinition/export-ledger",
    "document": "http://hl7.org/fhir/OperationDefinition/Composition-document",
    "draft-report": "http://fhir.telefhir.cn/OperationDefinition/draft-report",
    "invite": "http://fhir.telefhir.cn/OperationDefinition/invite",
    "package": "http://fhir.telefhir.cn/OperationDefinition/package",
    "archive": "http://fhir.telefhir.cn/OperationDefinition/archive",
    "find": "http://fhir.telefhir.cn/OperationDefinition/appointment-find",
    "status": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status",
    "events": "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events",
    "get-ws-binding-token": (
        "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-get-ws-binding-token"
    ),
    "hold": "http://fhir.telefhir.cn/OperationDefinition/appointment-hold",
    "book": "http://fhir.telefhir.cn/OperationDefinition/appointment-book",
    # "Type/name": an operation whose definition differs by resource type (profiles/operationdefinition-*.json)
    "CodeSystem/lookup": "http://fhir.telefhir.cn/OperationDefinition/codesystem-lookup",
    "CodeSystem/validate-code": "http://fhir.telefhir.cn/OperationDefinition/codesystem-validate-code",
    "CodeSystem/subsumes": "http://fhir.telefhir.cn/OperationDefinition/codesystem-subsumes",
    "ValueSet/expand": "http://fhir.telefhir.cn/OperationDefinition/valueset-expand",
    "ValueSet/validate-code": "http://fhir.telefhir.cn/OperationDefinition/valueset-validate-code",
    "ConceptMap/translate": "http://fhir.telefhir.cn/OperationDefinition/conceptmap-translate",
}


def operation_definition(name: str, res_type: str | None) -> str:
    """The canonical of operation ``name`` (without ``$``) as routed for ``res_type``."""
    return OPERATIONS.get(f"{res_type}/{name}") or OPERATIONS[name]


TOPIC_CANONICAL = (
    "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/capabilitystatement-subscriptiontopic-canonical"
)
WEBSOCKET_EXTENSION = "http://hl7.org/fhir/StructureDefinition/capabilitystatement-websocket"
PATCH_FORMATS = ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"]


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    registry = ctx.search.registry
    return FhirResponse(200, resource=_statement(ctx.base_url, registry, registry.version, ctx.settings.auth))


def _operations(routes: Any, levels: tuple[str, ...], res_type: str | None = None) -> list[dict[str, str]]:
    """The operations routed at ``levels``; for a type, those of every type and its own."""
    names = sorted(
        {
            r.interaction[1:]
            for r in routes
            if r.interaction.startswith("$")
            and r.level in levels
            and (res_type is None or r.pattern[0] in ("{type}", res_type))
        }
    )
    return [{"name": name, "definition": operation_definition(name, res_type)} for name in names]


def _param(p: Any) -> dict[str, Any]:
    out = {"name": p.code, "definition": p.url, "type": p.type}
    if p.custom and p.description:
        out["documentation"] = p.description
    return out


def _security(base_url: str) -> dict[str, Any]:
    """SMART on FHIR (http://hl7.org/fhir/smart-app-launch/conformance.html#using-cs): the
    service code and the OAuth endpoints in the ``oauth-uris`` extension."""
    root = base_url.removesuffix("/fhir")
    uris = [("token", "/auth/token"), ("introspect", "/auth/introspect"), ("revoke", "/auth/revoke")]
    return {
        "extension": [
            {
                "url": "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris",
                "extension": [{"url": name, "valueUri": root + path} for name, path in uris],
            }
        ],
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ]
            }
        ],
        "description": "OAuth2 bearer tokens (SMART Backend Services); see /fhir/.well-known/smart-configuration",
    }


@functools.lru_cache(maxsize=8)
def _statement(base_url: str, registry: Any, _version: int, auth: bool) -> dict[str, Any]:
    """Built once per base URL and registry version (custom parameters change it)."""
    from fhir_server.rest.routes import ROUTES

    interactions = [r for r in ROUTES if not r.interaction.startswith("$")]  # "$name": operations
    type_interactions = sorted({r.interaction for r in interactions if r.level in ("type", "instance")})
    system_codes = {r.interaction for r in interactions if r.level == "system"} - {"capabilities"}
    if "transaction" in system_codes:
        system_codes.add("batch")  # one route (POST [base]) serves both Bundle types
    system_interactions = [{"code": code} for code in sorted(system_codes)]
    includes, revincludes = _includes(registry)
    resources = []
    for res_type in sorted(get_model().resource_types):
        params = [_param(p) for p in registry.params_for(res_type) if supported_modifiers(registry, p) is not None]
        resources.append(
            {
                "type": res_type,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{res_type}",
                "interaction": [{"code": c} for c in type_interactions],
                "versioning": "versioned-update",
                "readHistory": True,
                "updateCreate": True,
                "conditionalCreate": True,
                "conditionalRead": "not-supported",
                "conditionalUpdate": True,
                "conditionalDelete": "multiple",
                "referencePolicy": ["literal", "logical"],
                "searchParam": [
                    {"name": "_id", "type": "token"},
                    {"name": "_lastUpdated", "type": "date"},
                    *params,
                ],
                "searchInclude": ["*", *includes.get(res_type, [])],
                "searchRevInclude": revincludes.get(res_type, []),
                "operation": _operations(ROUTES, ("type", "instance"), res_type),
            }
        )
        if res_type == "Subscription":  # the topics it may name (Subscriptions Backport)
            resources[-1]["extension"] = [{"url": TOPIC_CANONICAL, "valueCanonical": url} for url in sorted(TOPICS)]
        resources[-1] = _without_empty(resources[-1])
    root = base_url.removesuffix("/fhir")
    websocket = ("wss" + root[5:] if root.startswith("https") else "ws" + root[4:]) + "/websocket"
    rest = _without_empty(
        {
            "extension": [{"url": WEBSOCKET_EXTENSION, "valueUri": websocket}],
            "mode": "server",
            "security": _security(base_url) if auth else [],
            "resource": resources,
            "interaction": system_interactions,
            "searchParam": [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}],
            "operation": _operations(ROUTES, ("system",)),
            "compartment": [
                f"http://hl7.org/fhir/CompartmentDefinition/{c.lower()}"
                for c in sorted(registry.compartments())
                if any(r.level == "compartment" for r in ROUTES)
            ],
        }
    )
    return {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": instant(now_us())[:10],
        "publisher": "telefhir",
        "kind": "instance",
        "software": {"name": "telefhir", "version": __version__},
        "implementation": {"description": "Teleconsultation FHIR server", "url": base_url},
        "fhirVersion": FHIR_VERSION,
        "format": FORMATS,
        "patchFormat": PATCH_FORMATS,
        "rest": [rest],
    }


def _without_empty(element: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in element.items() if v != []}  # FHIR JSON has no empty arrays


def _includes(registry: Any) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """``Type:param`` values for ``_include`` (by source type) and ``_revinclude`` (by target type)."""
    includes: dict[str, list[str]] = {}
    revincludes: dict[str, list[str]] = {}
    types = registry.resource_types
    for source in sorted(types):
        for p in registry.params_for(source):
            if p.type != "reference" or not (p.indexed or p.union_of):
                continue
            includes.setdefault(source, []).append(f"{source}:{p.code}")
            for target in p.targets or types:
                revincludes.setdefault(target, []).append(f"{source}:{p.code}")
    return includes, revincludes
