"""What one FHIR request was, for its audit record: the BALP kind, the resource, the patients.

Which patients an interaction touched (BALP: one AuditEvent per patient): a Patient's own id;
for a single resource written or read, the Patient its ``subject``, ``patient`` or
``beneficiary`` names (an Appointment's: its Patient participants); for a search or an operation,
the patients its ``patient``/``subject``/``patient-reference`` parameters (or a Patient ``_id``)
name, in the query or a ``Parameters`` body. A search without such parameters yields one event without a patient:
finding the patients of every result would cost a parse of each, and the query itself is
recorded (``entity[query]``), so what was asked stays answerable (docs/security.md).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.audit import balp
from fhir_server.audit.recorder import AuditRecorder
from fhir_server.rest.messages import FhirRequest, FhirResponse

_PATIENT_KEYS = ("subject", "patient", "beneficiary")
#: operation parameters naming the patient(s) a call is about (``$book``'s ``patient-reference``)
_PATIENT_PARAMS = frozenset({"patient", "subject", "patient-reference"})
_SEARCH_KINDS = {"search-type": "search-type", "search-compartment": "search-type", "search-system": "search-system"}


def kind_of(interaction: str, req: FhirRequest) -> tuple[str, str | None]:
    """(BALP kind, operation name) of a route interaction."""
    if interaction.startswith("$"):
        return "operation", interaction
    if interaction in _SEARCH_KINDS:
        return _SEARCH_KINDS[interaction], None
    if interaction == "transaction":
        bundle_type = (req.resource or {}).get("type")
        return ("batch" if bundle_type == "batch" else "transaction"), None
    return interaction, None


def _patient_of(resource: Any) -> list[str]:
    if not isinstance(resource, dict):
        return []
    res_type = resource.get("resourceType")
    if res_type == "Patient" and resource.get("id"):
        return [f"Patient/{resource['id']}"]
    if res_type == "Parameters":  # an operation's input: its patient parameters and resources
        found = []
        for part in resource.get("parameter") or ():
            if not isinstance(part, dict):
                continue
            if part.get("name") in _PATIENT_PARAMS:
                found += _patient_refs([part.get("valueReference")])
            found += _patient_of(part.get("resource"))
        return found
    refs = [resource.get(key) for key in _PATIENT_KEYS]
    if res_type == "Appointment":  # an appointment's patients are among its participants
        refs += [p.get("actor") for p in resource.get("participant") or () if isinstance(p, dict)]
    return _patient_refs(refs)


def _patient_refs(refs: list[Any]) -> list[str]:
    return [
        str(ref["reference"]).split("/_history")[0]
        for ref in refs
        if isinstance(ref, dict) and str(ref.get("reference", "")).startswith("Patient/")
    ]


def _patients_of_search(req: FhirRequest) -> list[str]:
    found = []
    for name, value in req.params:
        base = name.split(":", 1)[0]
        if base in _PATIENT_PARAMS or (req.res_type == "Patient" and base == "_id"):
            for one in value.split(","):
                one = one.strip()
                if one:
                    found.append(one if one.startswith("Patient/") else f"Patient/{one}")
    if req.compartment and req.compartment[0] == "Patient":
        found.append(f"Patient/{req.compartment[1]}")
    return found


def patients_of(kind: str, req: FhirRequest, resp: FhirResponse | None) -> tuple[str, ...]:
    found: list[str] = []
    if req.res_type == "Patient" and req.res_id:
        found.append(f"Patient/{req.res_id}")
    if kind.startswith("search") or kind == "operation":
        found += _patients_of_search(req)
    if not kind.startswith("search") and req.resource is not None:
        found += _patient_of(req.resource)
    if resp is not None and kind in ("read", "vread", "create", "update", "patch") and not found:
        stored = resp.version
        if stored is not None and stored.patient is not None:  # the row knows it: no parse of the body
            return (f"Patient/{stored.patient}",) if balp.PATIENT_RE.fullmatch(f"Patient/{stored.patient}") else ()
        resource = resp.resource
        if resource is None and resp.body:
            try:
                resource = orjson.loads(resp.body)
            except orjson.JSONDecodeError:
                resource = None
        found += _patient_of(resource)
    return tuple(dict.fromkeys(p for p in found if balp.PATIENT_RE.fullmatch(p)))


def _created_id(resp: FhirResponse | None) -> tuple[str | None, str | None]:
    location = (resp.headers.get("Location") or resp.headers.get("Content-Location") or "") if resp else ""
    parts = location.split("/")
    if "_history" in parts:
        i = parts.index("_history")
        return parts[i - 1], parts[i + 1] if i + 1 < len(parts) else None
    return None, None


@dataclass
class RequestAuditor:
    """The audit records of one HTTP request (and of its Bundle entries)."""

    recorder: AuditRecorder
    requester: balp.Requester
    server: balp.Server
    request_id: str | None
    #: a transaction's entries wait here for its outcome (``buffered``/``release``)
    buffer: list[balp.Interaction] | None = None

    def buffered(self) -> RequestAuditor:
        """An auditor for the entries of a transaction: nothing is recorded until ``release``."""
        return RequestAuditor(self.recorder, self.requester, self.server, self.request_id, [])

    def release(self, failure: tuple[int, str] | None) -> None:
        """Record the buffered entries; if the transaction failed, each entry that had
        succeeded is recorded with the transaction's failure (it was rolled back)."""
        items = self.buffer or []
        if failure is not None:
            detail = f"rolled back with the transaction: {failure[1]}"
            items = [replace(i, status=failure[0], detail=detail) if i.status < 400 else i for i in items]
        self.recorder.record_all(items, self.requester, self.server)
        self.buffer = []

    def _emit(self, item: balp.Interaction) -> None:
        if self.buffer is not None:
            self.buffer.append(item)
        else:
            self.recorder.record(item, self.requester, self.server)

    def interaction(
        self, interaction: str, req: FhirRequest, status: int, detail: str | None, resp: FhirResponse | None
    ) -> None:
        kind, operation = kind_of(interaction, req)
        res_id, version = req.res_id, req.vid
        if kind == "create" and status < 300:
            res_id, version = _created_id(resp)
        query = (
            "&".join(f"{k}={v}" for k, v in req.params) if kind.startswith(("search", "history", "operation")) else None
        )
        if kind == "operation":
            query = query or None
        self._emit(
            balp.Interaction(
                kind=kind,
                status=status,
                recorded=datetime.now(UTC),
                resource_type=req.res_type if kind not in ("search-system", "history-system") else None,
                resource_id=res_id,
                version=version,
                operation=operation,
                query=query,
                patients=patients_of(kind, req, resp) if status < 500 else (),
                detail=detail if status >= 400 else None,
                request_id=self.request_id,
                http_method=req.method,
            )
        )

    def authentication(self, kind: str, status: int, detail: str | None) -> None:
        """A login (token request) or a request refused for want of a valid token."""
        self.recorder.record(
            balp.Interaction(
                kind=kind,
                status=status,
                recorded=datetime.now(UTC),
                detail=detail if status >= 400 else None,
                request_id=self.request_id,
            ),
            self.requester,
            self.server,
        )
