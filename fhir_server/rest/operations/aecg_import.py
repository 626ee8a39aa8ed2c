"""``$import-aecg``: ``POST [base]/Observation/$import-aecg?subject=Patient/[id]`` with an HL7 aECG.

The body is the aECG XML itself (``Content-Type: application/hl7-v3+xml``, ``application/xml``
or ``text/xml``); the route is declared ``raw_body`` so the adapter hands the bytes over instead
of parsing them as FHIR XML. ``subject`` names a Patient that must exist; ``timezone`` (default
``+08:00``) is the UTC offset used for timestamps the device wrote without one.

On success, one transaction stores the original as a Binary (``application/hl7-v3+xml``), a
DocumentReference indexing it (LOINC 11524-6, ``Binary/<id>``, size, SHA-1) and the ECG
Observation (``derivedFrom`` the DocumentReference) and the answer is ``201`` with the
Observation. A document that misses the minimums (12 leads, ≥ 500 Hz, ≥ 10 s) is a ``422`` listing
every violation; XML that cannot be read is a ``400``. Either way nothing is stored.
Definition: profiles/operationdefinition-import-aecg.json.
"""

from __future__ import annotations

import re

from fhir_server.clinical.ecg import AecgFormatError, parse_aecg, violations
from fhir_server.clinical.ecg_fhir import binary, document_reference, observation
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue
from fhir_server.rest.interactions.common import read_live, require_id, written
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.storage.repository import new_id
from fhir_server.util.clock import instant, now_us
from fhir_server.validation import check_resource

MEDIA_TYPES = frozenset({"application/hl7-v3+xml", "application/xml", "text/xml"})
_OFFSET = re.compile(r"[+-](?:0\d|1[0-4]):[0-5]\d|Z")
_KNOWN = frozenset({"subject", "timezone", "_format", "_pretty"})


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    unknown = sorted({k for k, _ in req.params} - _KNOWN)
    if unknown:
        raise FhirError("invalid-param", f"$import-aecg has no parameter {unknown[0]!r}")
    media = (req.content_type or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise FhirError(
            "unsupported-media",
            f"$import-aecg reads an aECG document ({', '.join(sorted(MEDIA_TYPES))}), not {media!r}",
        )
    if not req.body:
        raise FhirError("bad-request", "$import-aecg needs the aECG XML as the request body")
    patient_id = _patient_id(req.param("subject"))
    offset = req.param("timezone") or "+08:00"
    if not _OFFSET.fullmatch(offset):
        raise FhirError("invalid-param", f"timezone must be a UTC offset such as +08:00, not {offset!r}")
    try:
        doc = parse_aecg(req.body)
    except AecgFormatError as err:
        raise FhirError("malformed", f"The aECG cannot be read: {err}") from None
    found = violations(doc)
    if found:
        issues = [Issue("error", "business-rule", v) for v in found]
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise FhirError("processing", f"The ECG does not meet the minimums: {found[0]}{more}", issues=issues)
    subject = f"Patient/{patient_id}"
    binary_id, docref_id = new_id(), new_id()
    docref = document_reference(
        doc, req.body, subject=subject, binary_id=binary_id, indexed=instant(now_us()), default_offset=offset
    )
    obs = observation(doc, subject=subject, document_reference_id=docref_id, default_offset=offset)
    for resource in (docref, obs):
        check_resource(resource)
    with ctx.session(write=True) as session:
        try:
            read_live(session, "Patient", patient_id)
        except FhirError as err:
            raise FhirError("processing", f"subject: {err.diagnostics}") from None
        session.create(binary(req.body, subject), binary_id)
        session.create(docref, docref_id)
        version = session.create(obs)
    return written(req, ctx, version, 201, f"Imported the aECG as Observation/{version.res_id}")


def _patient_id(subject: str | None) -> str:
    if not subject:
        raise FhirError("invalid-param", "$import-aecg needs the subject parameter (Patient/[id])")
    kind, _, res_id = subject.partition("/")
    if kind != "Patient" or not res_id:
        raise FhirError("invalid-param", f"subject must be a Patient reference (Patient/[id]), not {subject!r}")
    return require_id(res_id)
