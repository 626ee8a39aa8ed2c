"""The FHIR ``patch`` interaction's two patch formats, chosen by the request's Content-Type.

Why: http://hl7.org/fhir/R4/http.html#patch defines JSON Patch (``application/json-patch+json``)
and FHIRPath Patch (a ``Parameters`` resource in any FHIR format,
http://hl7.org/fhir/R4/fhirpatch.html). The REST layer hands over the stored resource and the
raw body; it gets back a new resource to validate and store. XML Patch (RFC 5261) is not
supported and answers 415.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.formats.json import loads
from fhir_server.patching.fhirpath_patch import apply_fhirpath_patch
from fhir_server.patching.json_patch import apply_json_patch

__all__ = ["apply_patch", "apply_json_patch", "apply_fhirpath_patch"]

JSON_PATCH_TYPES = frozenset({"application/json-patch+json"})
FHIR_JSON_TYPES = frozenset({"application/fhir+json", "application/json", "application/json+fhir"})
FHIR_XML_TYPES = frozenset({"application/fhir+xml", "application/xml", "application/xml+fhir", "text/xml"})


def _mime(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def _parameters_from_xml(body: bytes) -> Any:
    from fhir_server.formats.xml import xml_to_json  # written alongside; imported when needed

    return xml_to_json(body)


def apply_patch(resource: dict, content_type: str, body: bytes) -> dict:
    """Patch a copy of ``resource`` with ``body``, interpreted according to ``content_type``."""
    mime = _mime(content_type)
    if mime in JSON_PATCH_TYPES:
        return apply_json_patch(resource, loads(body))
    if mime in FHIR_JSON_TYPES:
        document = loads(body)
        if isinstance(document, list) and mime == "application/json":
            return apply_json_patch(resource, document)  # a JSON Patch sent with a generic type
        return apply_fhirpath_patch(resource, _require_parameters(document))
    if mime in FHIR_XML_TYPES:
        return apply_fhirpath_patch(resource, _require_parameters(_parameters_from_xml(body)))
    raise FhirError(
        "unsupported-media",
        f"Unsupported patch Content-Type {content_type!r}: use application/json-patch+json, "
        "or a FHIRPath Patch Parameters resource as application/fhir+json or application/fhir+xml",
    )


def _require_parameters(document: Any) -> dict:
    if not isinstance(document, dict) or document.get("resourceType") != "Parameters":
        raise FhirError("bad-request", "A FHIRPath Patch body must be a Parameters resource")
    return document
