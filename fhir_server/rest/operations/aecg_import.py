"""``$import-aecg``: ``POST [base]/Observation/$import-aecg?subject=Patient/[id]`` with an HL7 aECG.

Two ways to send it:
- the body is the aECG XML itself (``Content-Type: application/hl7-v3+xml``, ``application/xml``
  or ``text/xml``), with ``subject`` and ``timezone`` in the query; the route is declared
  ``raw_body`` so the adapter hands the bytes over instead of parsing them as FHIR XML;
- a ``Parameters`` body (``application/fhir+json``/``+xml``) with ``document`` (an Attachment:
  one of those content types and the XML as base64 ``data``), ``subject`` (a Reference) and
  ``timezone``. This is the form a Bundle entry can carry (``POST Observation/$import-aecg``),
  and in a transaction ``subject`` may name a Patient created by the same Bundle.

``subject`` names a Patient that must exist; ``timezone`` (default ``+08:00``) is the UTC offset
used for timestamps the device wrote without one.

On success, one transaction stores the original as a Binary (``application/hl7-v3+xml``), a
DocumentReference indexing it (LOINC 11524-6, ``Binary/<id>``, size, SHA-1) and the ECG
Observation (``derivedFrom`` the DocumentReference) and the answer is ``201`` with the
Observation. A document that misses the minimums (12 leads, ≥ 500 Hz, ≥ 10 s) is a ``422`` listing
every violation; XML that cannot be read is a ``400``. Either way nothing is stored.
Definition: profiles/operationdefinition-import-aecg.json.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from fhir_server.clinical.ecg import AecgFormatError, parse_aecg, violations
from fhir_server.clinical.ecg_fhir import binary, document_reference, observation
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError, Issue
from fhir_server.rest.interactions.common import read_live, require_id, written
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import ATTACHMENT, REFERENCE, STRING, Inputs
from fhir_server.storage.repository import new_id
from fhir_server.util.clock import instant, now_us
from fhir_server.validation import check_resource

MEDIA_TYPES = frozenset({"application/hl7-v3+xml", "application/xml", "text/xml"})
_OFFSET = re.compile(r"[+-](?:0\d|1[0-4]):[0-5]\d|Z")
_SPEC = {"subject": (REFERENCE, False), "timezone": (STRING, False), "document": (ATTACHMENT, False)}


def handle(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "import-aecg", _SPEC)
    document = _document(req, inputs)
    patient_id = _patient_id(inputs.get("subject"))
    offset = inputs.get("timezone") or "+08:00"
    if not _OFFSET.fullmatch(offset):
        raise FhirError("invalid-param", f"timezone must be a UTC offset such as +08:00, not {offset!r}")
    try:
        doc = parse_aecg(document)
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
        doc, document, subject=subject, binary_id=binary_id, indexed=instant(now_us()), default_offset=offset
    )
    obs = observation(doc, subject=subject, document_reference_id=docref_id, default_offset=offset)
    for resource in (docref, obs):
        check_resource(resource)
    with ctx.session(write=True) as session:
        try:
            read_live(session, "Patient", patient_id)
        except FhirError as err:
            raise FhirError("processing", f"subject: {err.diagnostics}") from None
        session.create(binary(document, subject), binary_id)
        session.create(docref, docref_id)
        version = session.create(obs)
    return written(req, ctx, version, 201, f"Imported the aECG as Observation/{version.res_id}")


def _document(req: FhirRequest, inputs: Inputs) -> bytes:
    """The aECG's bytes: the raw body, or a Parameters body's ``document`` attachment."""
    if req.resource is None:
        media = (req.content_type or "").split(";")[0].strip().lower()
        if media not in MEDIA_TYPES:
            raise FhirError(
                "unsupported-media",
                f"$import-aecg reads an aECG document ({', '.join(sorted(MEDIA_TYPES))}) or a Parameters "
                f"resource, not {media!r}",
            )
        if not req.body:
            raise FhirError("bad-request", "$import-aecg needs the aECG XML as the request body")
        return req.body
    attachment = inputs.get("document")
    if attachment is None:
        raise FhirError("invalid-param", "$import-aecg: the Parameters body needs a document (Attachment)")
    media = str(attachment.get("contentType") or "").split(";")[0].strip().lower()
    if media not in MEDIA_TYPES:
        raise FhirError(
            "invalid-param", f"$import-aecg: document.contentType must be one of {', '.join(sorted(MEDIA_TYPES))}"
        )
    try:
        data = base64.b64decode(str(attachment.get("data") or ""), validate=True)
    except binascii.Error:
        raise FhirError("invalid-param", "$import-aecg: document.data is not base64") from None
    if not data:
        raise FhirError("invalid-param", "$import-aecg: document.data is empty (a url is not fetched)")
    return data


def _patient_id(subject: dict[str, Any] | None) -> str:
    reference = (subject or {}).get("reference")
    if not reference:
        raise FhirError("invalid-param", "$import-aecg needs the subject parameter (Patient/[id])")
    kind, _, res_id = str(reference).partition("/")
    if kind != "Patient" or not res_id:
        raise FhirError("invalid-param", f"subject must be a Patient reference (Patient/[id]), not {reference!r}")
    return require_id(res_id)
