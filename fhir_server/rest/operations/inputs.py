"""Operation inputs, from the query string or a ``Parameters`` body (or the body resource itself).

Why typed and strict: the operations' definitions (http://hl7.org/fhir/R4/operations.html#request)
give every parameter a type and a cardinality; a parameter this server does not know, or one it
knows but does not implement (``context``, ``date``, ``dependency``...), is refused with 400
naming it, rather than ignored, so a client never gets an answer to a question it did not ask
(and a misspelt ``persist`` cannot silently not persist). One reader for every operation.

GET can only carry primitive values; as many terminology servers do, a ``Coding`` may be given
in a query as ``system|code`` (``coding=http://loinc.org|8867-4``). A ``CodeableConcept`` or a
resource needs POST. An operation whose input is one resource may take it as the body itself
(``body_resource``), as http://hl7.org/fhir/R4/operations.html#request allows.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest

#: query parameters about the response format, allowed on every operation
_FORMAT_PARAMS = frozenset({"_format", "_pretty", "_summary", "_elements"})
_PRIMITIVE_KEYS = ("valueString", "valueCode", "valueUri", "valueCanonical", "valueUrl", "valueId", "valueMarkdown")

# parameter types
STRING = "string"
DATETIME = "dateTime"
BOOLEAN = "boolean"
INTEGER = "integer"
DECIMAL = "decimal"
CODING = "Coding"
CONCEPT = "CodeableConcept"
REFERENCE = "Reference"
ATTACHMENT = "Attachment"


def resource_type(kind: str) -> str | None:
    """``resource:ValueSet`` → ``ValueSet``."""
    return kind.split(":", 1)[1] if kind.startswith("resource:") else None


class Inputs:
    """The parameters of one call: ``spec`` maps each supported name to (type, repeats);
    ``unsupported`` names parameters of the definition this server refuses; ``body_resource``
    names the ``resource:Type`` parameter a body of that type stands for."""

    def __init__(
        self,
        req: FhirRequest,
        operation: str,
        spec: dict[str, tuple[str, bool]],
        unsupported: frozenset[str] = frozenset(),
        body_resource: str | None = None,
    ) -> None:
        self.operation = operation
        self.spec = spec
        self._values: dict[str, list[Any]] = {}
        for name, raw in req.params:
            if name in _FORMAT_PARAMS:
                continue
            self._add(name, self._from_query(name, raw, unsupported), None)
        body = req.resource
        if body is None:
            return
        own_type = resource_type(spec[body_resource][0]) if body_resource else None
        if own_type is not None and body.get("resourceType") == own_type:
            self._add(body_resource, body, None)  # type: ignore[arg-type]
            return
        if body.get("resourceType") != "Parameters":
            wanted = f"a {own_type} or a Parameters resource" if own_type else "a Parameters resource"
            raise FhirError("bad-request", f"The body of ${operation} must be {wanted}, not {body.get('resourceType')}")
        for i, part in enumerate(body.get("parameter") or ()):
            where = f"Parameters.parameter[{i}]"
            name = part.get("name") if isinstance(part, dict) else None
            if not isinstance(name, str):
                raise FhirError("bad-request", f"${operation}: a parameter without a name", where)
            self._check_name(name, unsupported, where)
            self._add(name, self._from_part(name, part, where), where)

    # -- reading ---------------------------------------------------------------------------
    def _check_name(self, name: str, unsupported: frozenset[str], where: str | None = None) -> None:
        if name in self.spec:
            return
        if name in unsupported:
            raise FhirError(
                "invalid-param", f"${self.operation}: parameter {name!r} is not supported by this server", where
            )
        known = ", ".join(sorted(self.spec))
        raise FhirError("invalid-param", f"${self.operation} has no parameter {name!r} (it takes: {known})", where)

    def _from_query(self, name: str, raw: str, unsupported: frozenset[str]) -> Any:
        self._check_name(name, unsupported)
        kind = self.spec[name][0]
        if kind in (STRING, DATETIME):
            return raw
        if kind == BOOLEAN:
            if raw not in ("true", "false"):
                raise FhirError("invalid-param", f"${self.operation}: {name} must be true or false, not {raw!r}", name)
            return raw == "true"
        if kind == INTEGER:
            return self._integer(name, raw)
        if kind == DECIMAL:
            return self._decimal(name, raw)
        if kind == CODING:
            system, bar, code = raw.rpartition("|")
            if not bar or not system or not code:
                raise FhirError(
                    "invalid-param", f"${self.operation}: {name} in a query must be system|code, not {raw!r}", name
                )
            return {"system": system, "code": code}
        if kind == REFERENCE:
            return {"reference": raw}
        raise FhirError(
            "invalid-param", f"${self.operation}: {name} ({kind}) can only be given in a POSTed Parameters body", name
        )

    def _from_part(self, name: str, part: dict[str, Any], where: str) -> Any:
        kind = self.spec[name][0]
        wanted = resource_type(kind)
        if wanted is not None:
            found = part.get("resource")
            if not isinstance(found, dict) or (wanted != "*" and found.get("resourceType") != wanted):
                raise FhirError("bad-request", f"${self.operation}: {name} must hold a {wanted} resource", where)
            return found
        values = {k: v for k, v in part.items() if k.startswith("value")}
        if len(values) != 1:
            raise FhirError("bad-request", f"${self.operation}: {name} needs exactly one value[x]", where)
        key, value = next(iter(values.items()))
        if kind == STRING and key in _PRIMITIVE_KEYS and isinstance(value, str):
            return value
        if kind == DATETIME and key in ("valueDateTime", "valueInstant", "valueDate") and isinstance(value, str):
            return value
        if kind == BOOLEAN and key == "valueBoolean" and isinstance(value, bool):
            return value
        if kind == INTEGER and key in ("valueInteger", "valuePositiveInt", "valueUnsignedInt"):
            return self._integer(name, value)
        if kind == DECIMAL and key in ("valueDecimal", "valueInteger"):
            return self._decimal(name, value)
        if kind == CODING and key == "valueCoding" and isinstance(value, dict):
            return value
        if kind == CONCEPT and key == "valueCodeableConcept" and isinstance(value, dict):
            return value
        if kind == REFERENCE and key == "valueReference" and isinstance(value, dict):
            return value
        if kind == ATTACHMENT and key == "valueAttachment" and isinstance(value, dict):
            return value
        raise FhirError("bad-request", f"${self.operation}: {name} must be a {kind}, not {key}", where)

    def _integer(self, name: str, raw: Any) -> int:
        try:
            value = int(raw)
        except (TypeError, ValueError):
            value = -1
        if isinstance(raw, bool) or value < 0:
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a whole number ≥ 0, not {raw!r}", name)
        return value

    def _decimal(self, name: str, raw: Any) -> Decimal:
        try:
            value = Decimal(str(raw)) if not isinstance(raw, bool) else Decimal("NaN")
        except InvalidOperation:
            value = Decimal("NaN")
        if not value.is_finite():
            raise FhirError("invalid-param", f"${self.operation}: {name} must be a finite decimal, not {raw!r}", name)
        return value

    def _add(self, name: str, value: Any, where: str | None) -> None:
        values = self._values.setdefault(name, [])
        if values and not self.spec[name][1]:
            raise FhirError(
                "invalid-param", f"${self.operation}: parameter {name!r} is given more than once", where or name
            )
        values.append(value)

    # -- access ----------------------------------------------------------------------------
    def get(self, name: str) -> Any:
        values = self._values.get(name)
        return values[0] if values else None

    def all(self, name: str) -> list[Any]:
        return list(self._values.get(name, ()))

    def has(self, name: str) -> bool:
        return name in self._values

    def echo(self, *names: str) -> list[dict[str, Any]]:
        """``ValueSet.expansion.parameter`` entries for the given parameters that were passed."""
        out = []
        for name in names:
            kind = self.spec[name][0]
            for value in self._values.get(name, ()):
                key = {BOOLEAN: "valueBoolean", INTEGER: "valueInteger"}.get(kind, "valueString")
                if name == "displayLanguage":
                    key = "valueCode"
                out.append({"name": name, key: value})
        return out

    def forbid_together(self, *names: str) -> None:
        given = [n for n in names if self.has(n)]
        if len(given) > 1:
            raise FhirError(
                "invalid-param",
                f"${self.operation}: give only one of {', '.join(names)} (got {', '.join(given)})",
                given[1],
            )
