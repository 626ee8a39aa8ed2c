"""Validation entry point used by every write path (REST, Bundles, loader).

Why one function: whichever door a resource comes in by, it is checked the same way before
anything is stored; failures become a 422 ``OperationOutcome`` listing every issue with its
FHIRPath location.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.validation.structural import validate


def check_resource(resource: Any, expected_type: str | None = None) -> None:
    if not isinstance(resource, dict):
        raise FhirError("malformed", "The body is not a FHIR resource (a JSON object with resourceType)")
    issues = validate(resource, expected_type)
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        first = errors[0]
        summary = first.diagnostics if len(errors) == 1 else f"{first.diagnostics} (and {len(errors) - 1} more issues)"
        raise FhirError("invalid", summary, issues=issues)
