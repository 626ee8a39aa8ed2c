"""Operation inputs of the clinical operations, from a ``Parameters`` body or the query string.

Why one reader: ``$assess-constitution`` and ``$interpret-meridian`` take a resource either as
the body itself or as a resource part of ``Parameters``, plus a few scalar parameters that may
come in either place (http://hl7.org/fhir/R4/operations.html#request). Unknown parameter names
are refused rather than ignored, so a misspelt ``persist`` cannot silently not persist.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest

#: query parameters about the response format, allowed on every operation
_FORMAT_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})


class Inputs:
    def __init__(
        self, req: FhirRequest, operation: str, resource_type: str, resource_part: str, names: set[str]
    ) -> None:
        self.operation = operation
        self.resource: dict[str, Any] | None = None
        self._values: dict[str, Any] = {}
        for key, value in req.params:
            if key in _FORMAT_PARAMS:
                continue
            if key not in names:
                raise FhirError("invalid-param", f"${operation} has no parameter {key!r}")
            self._values[key] = value
        body = req.resource
        if body is None:
            return
        if body.get("resourceType") == resource_type:
            self.resource = body
            return
        if body.get("resourceType") != "Parameters":
            raise FhirError(
                "bad-request",
                f"The body of ${operation} must be a {resource_type} or a Parameters resource, "
                f"not a {body.get('resourceType')}",
            )
        for i, part in enumerate(body.get("parameter") or []):
            name = part.get("name")
            if name == resource_part:
                found = part.get("resource")
                if not isinstance(found, dict) or found.get("resourceType") != resource_type:
                    raise FhirError(
                        "bad-request",
                        f"Parameter {resource_part!r} must hold a {resource_type} resource",
                        f"Parameters.parameter[{i}]",
                    )
                self.resource = found
            elif name in names:
                values = [v for k, v in part.items() if k.startswith("value")]
                if len(values) != 1:
                    raise FhirError(
                        "bad-request", f"Parameter {name!r} needs exactly one value[x]", f"Parameters.parameter[{i}]"
                    )
                self._values[name] = values[0]
            else:
                raise FhirError(
                    "invalid-param", f"${operation} has no parameter {name!r}", f"Parameters.parameter[{i}]"
                )

    def string(self, name: str) -> str | None:
        value = self._values.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a code or string, not {value!r}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        value = self._values.get(name)
        if value is None:
            return default
        if isinstance(value, bool):
            return value
        if value in ("true", "false"):
            return value == "true"
        raise FhirError("invalid-param", f"${self.operation}: {name} must be true or false, not {value!r}")

    def decimal(self, name: str) -> Decimal | None:
        value = self._values.get(name)
        if value is None:
            return None
        if isinstance(value, bool):
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a decimal, not {value!r}")
        try:
            out = Decimal(str(value))
        except InvalidOperation:
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a decimal, not {value!r}") from None
        if not out.is_finite():
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a finite decimal, not {value!r}")
        return out
