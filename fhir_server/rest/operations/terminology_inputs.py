"""Terminology-specific input rules on top of the operations' reader (inputs.py): a coded value
given as ``code`` + system, ``coding`` or ``codeableConcept``.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.rest.operations.inputs import (  # noqa: F401 - the terminology operations' vocabulary
    BOOLEAN,
    CODING,
    CONCEPT,
    INTEGER,
    STRING,
    Inputs,
    resource_type,
)


def codings_of(value: dict[str, Any], name: str, operation: str) -> list[dict[str, Any]]:
    """The codings of a CodeableConcept parameter (at least one with a code)."""
    codings = [c for c in value.get("coding") or () if isinstance(c, dict) and c.get("code")]
    if not codings:
        raise FhirError("invalid-param", f"${operation}: {name} has no coding with a code", name)
    return codings


def coded_inputs(
    inputs: Inputs, system_param: str | None, version_param: str, *, system_default: str | None = None
) -> list[Any]:
    """The coded values to validate or translate: exactly one of ``code`` (with its system),
    ``coding`` or ``codeableConcept``, as ``Coded`` values."""
    from fhir_server.terminology.validate import Coded

    op = inputs.operation
    inputs.forbid_together("code", "coding", "codeableConcept")
    if inputs.has("display") and not inputs.has("code"):
        raise FhirError("invalid-param", f"${op}: display goes with code (a Coding carries its own display)", "display")
    if inputs.has("code"):
        system = inputs.get(system_param) if system_param else None
        system = system or system_default
        if not system:
            raise FhirError(
                "invalid-param", f"${op}: code needs {system_param or 'url'} (the code system)", system_param
            )
        return [Coded(system, inputs.get("code"), inputs.get(version_param), inputs.get("display"))]
    if inputs.has("coding"):
        codings = [inputs.get("coding")]
        where = "coding"
    elif inputs.has("codeableConcept"):
        codings = codings_of(inputs.get("codeableConcept"), "codeableConcept", op)
        where = "codeableConcept"
    else:
        raise FhirError("invalid-param", f"${op}: give code (with its system), coding or codeableConcept", "code")
    out = []
    for coding in codings:
        if not isinstance(coding.get("code"), str) or not coding["code"]:
            raise FhirError("invalid-param", f"${op}: {where} has no code", where)
        out.append(
            Coded(coding.get("system") or system_default, coding["code"], coding.get("version"), coding.get("display"))
        )
    return out
