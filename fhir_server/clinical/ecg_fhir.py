"""An imported aECG as FHIR: the original (Binary), its index entry (DocumentReference) and the
ECG Observation with one ``SampledData`` component per lead and one ``Quantity`` component per
global measurement the aECG's annotations give (``ecg_measurements``).

Why keep the original: SampledData is for display and exchange; annotations, filters and the
median beat stay in the aECG, which is the record (research §7: "keep the DICOM or aECG original
as Binary/DocumentReference"). The Observation points to it with ``derivedFrom``.

HL7 v3 timestamps carry a UTC offset only when the device wrote one; a FHIR ``dateTime`` with a
time must have one, so ``default_offset`` (the operation's ``timezone`` parameter, ``+08:00``
unless given) is used when the document has none.
"""

from __future__ import annotations

import base64
import hashlib
import re
from decimal import Decimal
from typing import Any

from fhir_server.clinical import codes
from fhir_server.clinical.ecg import LEADS, AecgDocument, Lead
from fhir_server.clinical.ecg_measurements import Measurement

AECG_MEDIA_TYPE = "application/hl7-v3+xml"
EKG_STUDY = ("11524-6", "EKG study")
_TS = re.compile(r"(\d{4})(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\d{2})?(\.\d+)?([+-]\d{4})?")
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")


def fhir_datetime(ts: str | None, default_offset: str) -> str | None:
    """HL7 v3 TS (``YYYYMMDDHHMMSS.UUUU±ZZZZ``, any precision) as a FHIR dateTime."""
    if not ts:
        return None
    m = _TS.fullmatch(ts.strip())
    if not m:
        return None
    year, month, day, hour, minute, second, fraction, offset = m.groups()
    if month is None:
        return year
    if day is None:
        return f"{year}-{month}"
    if hour is None:
        return f"{year}-{month}-{day}"
    zone = f"{offset[:3]}:{offset[3:]}" if offset else default_offset
    return f"{year}-{month}-{day}T{hour}:{minute or '00'}:{second or '00'}{fraction or ''}{zone}"


def _number(value: Decimal) -> int | float:
    return int(value) if value == value.to_integral_value() else float(value)


def identifier(root: str | None, extension: str | None) -> dict[str, str] | None:
    """An HL7 v3 II (root + extension) as a FHIR Identifier."""
    if not root:
        return None
    kind = "uuid" if _UUID.fullmatch(root) else "oid"
    if extension:
        return {"system": f"urn:{kind}:{root.lower() if kind == 'uuid' else root}", "value": extension}
    return {"system": "urn:ietf:rfc:3986", "value": f"urn:{kind}:{root.lower() if kind == 'uuid' else root}"}


def binary(xml: bytes, subject: str) -> dict[str, Any]:
    return {
        "resourceType": "Binary",
        "contentType": AECG_MEDIA_TYPE,
        "securityContext": {"reference": subject},
        "data": base64.b64encode(xml).decode("ascii"),
    }


def document_reference(
    doc: AecgDocument, xml: bytes, *, subject: str, binary_id: str, indexed: str, default_offset: str
) -> dict[str, Any]:
    attachment: dict[str, Any] = {
        "contentType": AECG_MEDIA_TYPE,
        "url": f"Binary/{binary_id}",
        "size": len(xml),
        "hash": base64.b64encode(hashlib.sha1(xml).digest()).decode("ascii"),  # noqa: S324 - FHIR mandates SHA-1
        "title": "HL7 aECG",
    }
    created = fhir_datetime(doc.effective, default_offset)
    if created is not None:
        attachment["creation"] = created
    out: dict[str, Any] = {"resourceType": "DocumentReference"}
    master = identifier(doc.id_root, doc.id_extension)
    if master is not None:
        out["masterIdentifier"] = master
    out.update(
        {
            "status": "current",
            "type": codes.concept(codes.LOINC, *EKG_STUDY),
            "subject": {"reference": subject},
            "date": indexed,
            "description": "HL7 annotated ECG (aECG) as received",
            "content": [{"attachment": attachment}],
        }
    )
    return out


def observation(doc: AecgDocument, *, subject: str, document_reference_id: str, default_offset: str) -> dict[str, Any]:
    """The ECG Observation: LOINC 11524-6, a ``SampledData`` component per recognised lead."""
    obs: dict[str, Any] = {"resourceType": "Observation", "meta": {"profile": [codes.ECG_PROFILE]}}
    ident = identifier(doc.id_root, doc.id_extension)
    if ident is not None:
        obs["identifier"] = [ident]
    obs.update(
        {
            "status": "final",
            "category": codes.category("procedure", "Procedure"),
            "code": codes.concept(codes.LOINC, *EKG_STUDY),
            "subject": {"reference": subject},
        }
    )
    effective = fhir_datetime(doc.effective, default_offset)
    if effective is not None:
        obs["effectiveDateTime"] = effective
    device = doc.device.describe()
    if device is not None:
        obs["device"] = {"display": device}
    obs["derivedFrom"] = [{"reference": f"DocumentReference/{document_reference_id}"}]
    if doc.subject.present():
        obs["note"] = [{"text": _subject_note(doc)}]
    order = {code: i for i, code in enumerate(LEADS)}
    leads = sorted((lead for lead in doc.leads if lead.code in LEADS), key=lambda lead: order[lead.code])
    obs["component"] = [_lead_component(doc, lead) for lead in leads]
    obs["component"] += [_measurement_component(m) for m in doc.measurements]
    sources = sorted({m.source for m in doc.measurements})
    if sources:
        obs.setdefault("note", []).append({"text": f"Measurements from the aECG annotations: {'; '.join(sources)}"})
    return obs


def _measurement_component(m: Measurement) -> dict[str, Any]:
    coding = [codes.coding(codes.LOINC, m.loinc, m.display)] if m.loinc else []
    coding.append(codes.coding(codes.MDC, m.code, m.display))
    return {
        "code": {"coding": coding, "text": m.display},
        "valueQuantity": {"value": _number(m.value), "unit": m.ucum, "system": codes.UCUM, "code": m.ucum},
    }


def _lead_component(doc: AecgDocument, lead: Lead) -> dict[str, Any]:
    mdc, name = LEADS[lead.code]
    if doc.period_ms is None or lead.origin_uv is None or lead.factor_uv is None:
        raise ValueError(f"lead {name} is incomplete: check ecg.violations() before building the Observation")
    return {
        "code": {"coding": [codes.coding(codes.MDC, mdc, lead.code)], "text": f"Lead {name}"},
        "valueSampledData": {
            "origin": {"value": _number(lead.origin_uv), "unit": "µV", "system": codes.UCUM, "code": "uV"},
            "period": _number(doc.period_ms),
            "factor": _number(lead.factor_uv),
            "dimensions": 1,
            "data": lead.data,
        },
    }


def _subject_note(doc: AecgDocument) -> str:
    s = doc.subject
    parts = []
    if s.id_extension or s.id_root:
        parts.append(f"id {s.id_extension or ''}{' (' + s.id_root + ')' if s.id_root else ''}".strip())
    if s.name:
        parts.append(f"name {s.name}")
    if s.gender:
        parts.append(f"sex {s.gender}")
    if s.birth_time:
        parts.append(f"born {fhir_datetime(s.birth_time, '') or s.birth_time}")
    return "Subject as recorded in the aECG: " + "; ".join(parts)
