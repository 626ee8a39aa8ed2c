"""Errors are data: ``FhirError(kind, diagnostics)``; one table maps kind to HTTP status.

Why: handlers deep in storage or validation must be able to say "this is a conflict" or
"this element is invalid" without knowing about HTTP. The REST adapter, the batch/transaction
processor and the loader all turn the same error into an ``OperationOutcome``.
See http://hl7.org/fhir/R4/operationoutcome.html and http://hl7.org/fhir/R4/http.html.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

#: kind -> (HTTP status, OperationOutcome issue code)
ERROR_KINDS: dict[str, tuple[int, str]] = {
    "malformed": (400, "structure"),  # unparseable JSON/XML, bad Bundle shape
    "invalid-param": (400, "invalid"),  # bad search/query/operation parameter
    "bad-request": (400, "invalid"),
    "unauthorized": (401, "login"),
    "forbidden": (403, "forbidden"),
    "consent": (403, "security"),  # the patient's consent does not permit it
    "not-found": (404, "not-found"),
    "unknown-type": (404, "not-supported"),
    "not-allowed": (405, "not-supported"),  # interaction not supported on this route
    "not-acceptable": (406, "not-supported"),
    "conflict": (409, "conflict"),
    "gone": (410, "deleted"),
    "precondition-failed": (412, "conflict"),
    "multiple-matches": (412, "multiple-matches"),
    "unsupported-media": (415, "not-supported"),
    "invalid": (422, "invalid"),  # resource fails validation
    "processing": (422, "processing"),  # business rule
    "too-costly": (413, "too-costly"),
    "exception": (500, "exception"),
    "unavailable": (503, "transient"),
}


@dataclass(slots=True)
class Issue:
    """One OperationOutcome.issue; ``expression`` holds FHIRPath locations."""

    severity: str
    code: str
    diagnostics: str
    expression: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"severity": self.severity, "code": self.code, "diagnostics": self.diagnostics}
        if self.expression:
            out["expression"] = list(self.expression)
        return out


class FhirError(Exception):
    """A failure the client should be told about, with an HTTP status via ``ERROR_KINDS``."""

    def __init__(
        self,
        kind: str,
        diagnostics: str,
        expression: str | Iterable[str] | None = None,
        *,
        issues: list[Issue] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        if kind not in ERROR_KINDS:
            raise ValueError(f"unknown error kind {kind!r}")
        super().__init__(diagnostics)
        self.kind = kind
        self.diagnostics = diagnostics
        if isinstance(expression, str):
            expression = [expression]
        code = ERROR_KINDS[kind][1]
        self.issues = issues or [Issue("error", code, diagnostics, list(expression or []))]
        self.headers = headers or {}

    @property
    def status(self) -> int:
        return ERROR_KINDS[self.kind][0]

    def outcome(self) -> dict[str, Any]:
        return operation_outcome(self.issues)


def operation_outcome(issues: Iterable[Issue]) -> dict[str, Any]:
    return {"resourceType": "OperationOutcome", "issue": [i.to_json() for i in issues]}


def info_outcome(diagnostics: str, code: str = "informational") -> dict[str, Any]:
    return operation_outcome([Issue("information", code, diagnostics)])
