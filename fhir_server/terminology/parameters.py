"""Building ``Parameters`` answers and the errors the terminology operations share.

Why here and not in the REST layer: the answers are FHIR data (http://hl7.org/fhir/R4/parameters.html)
that any caller (REST, a Bundle entry, a validator asking ``$validate-code``) wants in the same
shape, so the service functions return them ready-made.

Status codes chosen (R4 leaves them to the server; IHE SVCM only says "an OperationOutcome"):
- the CodeSystem, ValueSet or ConceptMap an operation addresses (instance id, ``url``,
  ``system`` of ``$lookup``/``$subsumes``) is not stored: **404** not-found, as a read of it
  would be;
- ``$lookup`` of a code its CodeSystem does not define: **404** (the concept addressed does not
  exist); ``$validate-code`` answers the same question with ``result`` = false and 200;
- a stored resource that cannot answer (a ValueSet whose CodeSystem is not stored, a
  CodeSystem without its codes, a hierarchy that is not subsumption, ``$subsumes`` of an unknown
  code): **422** processing;
- an expansion over the server's limit: **422** with issue code ``too-costly`` and the limit;
- missing, repeated, unknown or contradictory parameters: **400** naming the parameter.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError, Issue
from fhir_server.terminology.store import NotStored


def param(name: str, **value: Any) -> dict[str, Any]:
    """``{"name": name, "valueX": ...}``; ``part=[...]`` for a group."""
    return {"name": name, **value}


def parameters(items: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Parameters"}
    if items:
        out["parameter"] = items
    return out


def too_costly(label: str, size: int | None, limit: int) -> FhirError:
    size_text = f"{size} codes" if size is not None else "more codes"
    message = (
        f"The expansion of {label} has {size_text}, more than this server returns at once ({limit}); "
        f"page through it with offset and count (count at most {limit}), or narrow it with filter"
    )
    return FhirError("processing", message, issues=[Issue("error", "too-costly", message)])


def not_found(err: NotStored) -> FhirError:
    """The addressed resource is missing: 404 (see the module docstring)."""
    return FhirError("not-found", err.diagnostics)


def unprocessable(err: FhirError, label: str | None = None) -> FhirError:
    """A stored resource could not answer (its content or what it depends on): 422."""
    text = f"{label}: {err.diagnostics}" if label else err.diagnostics
    return FhirError("processing", text)
