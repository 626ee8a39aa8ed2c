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
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.util.clock import instant, now_us

FORMATS = ["application/fhir+json", "application/fhir+xml", "json", "xml"]
PATCH_FORMATS = ["application/json-patch+json", "application/fhir+json", "application/fhir+xml"]


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    return FhirResponse(200, resource=_statement(ctx.base_url, ctx.search.registry))


@functools.lru_cache(maxsize=8)
def _statement(base_url: str, registry: Any) -> dict[str, Any]:
    """Built once per base URL; the adapter only serialises it."""
    from fhir_server.rest.routes import ROUTES

    type_interactions = sorted({r.interaction for r in ROUTES if r.level in ("type", "instance")})
    system_codes = {r.interaction for r in ROUTES if r.level == "system"} - {"capabilities"}
    if "transaction" in system_codes:
        system_codes.add("batch")  # one route (POST [base]) serves both Bundle types
    system_interactions = [{"code": code} for code in sorted(system_codes)]
    resources = []
    for res_type in sorted(get_model().resource_types):
        params = [
            {"name": p.code, "definition": p.url, "type": p.type}
            for p in registry.params_for(res_type)
            if p.type in ("string", "token", "reference", "date", "number", "quantity", "uri")
        ]
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
        "rest": [
            {
                "mode": "server",
                "resource": resources,
                "interaction": system_interactions,
                "searchParam": [{"name": "_id", "type": "token"}, {"name": "_lastUpdated", "type": "date"}],
            }
        ],
    }
