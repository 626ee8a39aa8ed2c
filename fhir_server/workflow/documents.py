"""The consultation report: drafted from the template, published as a signed document.

Why a Composition, a document Bundle and a DocumentReference: the report is a document (FHIR
documents.html) — a Composition the experts edit while it is ``preliminary``, then attest; its
publication freezes it as a ``document`` Bundle holding the Composition and everything it
references, signed (security/document_signature.py), stored, and indexed by a DocumentReference
(the entry an EHR or an XDS/MHD consumer searches for). Amending the report and publishing again
makes a new Bundle whose DocumentReference ``replaces`` the previous one, which becomes
``superseded``: every published version stays, none changes.

The publication is one transaction: the Bundle, its DocumentReference, the superseded one and a
Provenance (the Composition version it came from, who published it for which institution, the
signature) are stored together or not at all.

Who: the report is written by the institution performing the consultation (the ServiceRequest's
performer) — it sees the request and the patient through the request's grant, and the requester
sees the published report back through the same grant (security/grants.py: consultation data
from the performers). A signed document is never rewritten on its way to another institution
(storage/repository.py ``_signed_document``): what was signed is what arrives.
"""

from __future__ import annotations

import base64
import hashlib
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.security.document_signature import sign
from fhir_server.security.keys import SigningKeys
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import machine as m
from fhir_server.workflow.multicentre import workflow_code
from fhir_server.workflow.shared_records import as_stored

CN = "http://fhir.telefhir.cn"
REPORT_PROFILE = f"{CN}/StructureDefinition/consultation-report"
OPINION_PROFILE = f"{CN}/StructureDefinition/consultation-opinion"
SERVICE_SYSTEM = f"{CN}/CodeSystem/telemedicine-service-type"
LOINC = "http://loinc.org"
#: the report's sections: slice name, title, LOINC code and display (the consultation-report profile)
SECTIONS = (
    ("summary", "病例摘要", "55112-7", "Document summary"),
    ("opinions", "专家意见", "51848-0", "Evaluation note"),
    ("conclusion", "会诊结论", "55110-1", "Conclusions [Interpretation] Document"),
    ("advice", "诊疗建议", "18776-5", "Plan of care note"),
)
TO_BE_WRITTEN = "（待填写 to be written）"
#: a Composition published as it stands: final, or amended after a first publication
PUBLISHABLE = frozenset({"final", "amended"})

#: finds resources for the report: (resource type, search parameters) → current versions
Finder = Callable[[str, list[tuple[str, str]]], list[StoredVersion]]


# -- the draft ----------------------------------------------------------------------------------
def draft_report(
    request: dict[str, Any], opinions: list[StoredVersion], author: dict[str, Any], custodian: str | None
) -> dict[str, Any]:
    """A preliminary consultation report of ``request`` (a ServiceRequest as stored): the case
    summary from the request, the experts' opinions as entries, conclusion and advice to write."""
    if not opinions:
        raise FhirError(
            "conflict",
            f"ServiceRequest/{request['id']} has no expert opinion yet (Observations of the consultation-opinion "
            "profile basedOn it): a report is drafted from the opinions",
        )
    services = m.service_codings(request)
    if not services:
        raise FhirError(
            "processing",
            f"ServiceRequest/{request['id']} has no {SERVICE_SYSTEM} code: it is not a consultation request",
        )
    summary = _summary_lines(request)
    sections = []
    for name, title, code, display in SECTIONS:
        coding = {"system": LOINC, "code": code, "display": display}
        section: dict[str, Any] = {"title": title, "code": {"coding": [coding]}}
        if name == "summary":
            section["text"] = _narrative(summary or [TO_BE_WRITTEN])
            entries = [s for s in request.get("supportingInfo") or () if isinstance(s, dict) and s.get("reference")]
            if entries:
                section["entry"] = entries
        elif name == "opinions":
            section["entry"] = [{"reference": f"Observation/{o.res_id}"} for o in opinions]
        else:
            section["text"] = _narrative([TO_BE_WRITTEN])
        sections.append(section)
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "meta": {"profile": [REPORT_PROFILE]},
        "status": "preliminary",
        "type": {"coding": [{"system": LOINC, "code": "11488-4", "display": "Consult note"}]},
        "category": [{"coding": services}],
        "subject": request["subject"],
        "date": instant(now_us()),
        "author": [author],
        "title": "远程会诊报告",
        "text": _narrative(["远程会诊报告 (consultation report)", *summary]),
        "event": [{"detail": [{"reference": f"ServiceRequest/{request['id']}"}]}],
        "section": sections,
    }
    if custodian:
        composition["custodian"] = {"reference": f"Organization/{custodian}"}
    return composition


def _summary_lines(request: dict[str, Any]) -> list[str]:
    lines = []
    for concept in request.get("reasonCode") or ():
        displays = [c.get("display") for c in concept.get("coding", []) if c.get("display")]
        text = concept.get("text") or (displays[0] if displays else None)
        if text:
            lines.append(str(text))
    lines += [str(n["text"]) for n in request.get("note") or () if isinstance(n, dict) and n.get("text")]
    return lines


def _narrative(lines: list[str]) -> dict[str, str]:
    escaped = ["".join({"<": "&lt;", ">": "&gt;", "&": "&amp;"}.get(ch, ch) for ch in line) for line in lines]
    body = "".join(f"<p>{line}</p>" for line in escaped)
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{body}</div>'}


# -- the document ---------------------------------------------------------------------------------
def document(session: Session, composition: StoredVersion, base_url: str) -> dict[str, Any]:
    """The document Bundle of a Composition: it first, then every resource it references (as the
    request may see them). A reference that cannot be resolved is a 422: a document is whole."""
    content = composition.resource()
    entries = [{"fullUrl": f"{base_url}/Composition/{composition.res_id}", "resource": content}]
    missing = []
    seen = {f"Composition/{composition.res_id}"}
    for ref in _references(content):
        if ref in seen:
            continue
        seen.add(ref)
        res_type, _, res_id = ref.partition("/")
        version = session.read_current(res_type, res_id)
        if version is None or version.deleted:
            missing.append(ref)
            continue
        entries.append({"fullUrl": f"{base_url}/{ref}", "resource": version.resource()})
    if missing:
        raise FhirError(
            "processing",
            f"Composition/{composition.res_id} references what this request cannot include in a document: "
            f"{', '.join(missing)}",
        )
    return {
        "resourceType": "Bundle",
        "identifier": {"system": "urn:ietf:rfc:3986", "value": f"urn:uuid:{uuid.uuid4()}"},
        "type": "document",
        "timestamp": instant(now_us()),
        "entry": entries,
    }


def _references(composition: dict[str, Any]) -> Iterator[str]:
    """The relative references of a Composition a document carries, in document order."""
    candidates: list[Any] = [composition.get("subject"), composition.get("encounter")]
    candidates += composition.get("author") or []
    candidates += [a.get("party") for a in composition.get("attester") or () if isinstance(a, dict)]
    candidates.append(composition.get("custodian"))
    for event in composition.get("event") or ():
        candidates += event.get("detail") or [] if isinstance(event, dict) else []
    stack = list(composition.get("section") or ())
    while stack:
        section = stack.pop(0)
        if not isinstance(section, dict):
            continue
        candidates += section.get("author") or []
        candidates += [section.get("focus")]
        candidates += section.get("entry") or []
        stack[0:0] = list(section.get("section") or ())
    for item in candidates:
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and ref.count("/") == 1 and not ref.startswith(("#", "urn:")):
            yield ref


# -- publication ------------------------------------------------------------------------------------
def publish(
    session: Session,
    composition: StoredVersion,
    base_url: str,
    keys: SigningKeys,
    find: Finder,
    agent: dict[str, Any],
) -> StoredVersion:
    """Sign and store the document of ``composition``, index it, supersede the previous
    publication and record the step; returns the stored Bundle."""
    content = composition.resource()
    if content.get("status") not in PUBLISHABLE:
        raise FhirError(
            "processing",
            f"Composition/{composition.res_id} is {content.get('status')!r}: a report is published once final "
            "(or amended after its first publication)",
            "Composition.status",
        )
    if not content.get("attester"):
        raise FhirError(
            "processing",
            f"Composition/{composition.res_id} is not attested: the reviewer attests it first",
            "Composition.attester",
        )
    bundle = document(session, composition, base_url)
    now = instant(now_us())
    signer = content.get("custodian") or agent.get("onBehalfOf") or agent["who"]
    bundle["signature"] = sign(bundle, keys, {"reference": signer["reference"]}, now)
    stored = session.create(bundle)
    raw = stored.content or b""
    previous = [
        v for v in find("DocumentReference", [("related", f"Composition/{composition.res_id}"), ("status", "current")])
    ]
    reference = _document_reference(content, composition.res_id, stored, raw, bundle["identifier"], now)
    if previous:
        reference["relatesTo"] = [
            {"code": "replaces", "target": {"reference": f"DocumentReference/{v.res_id}"}} for v in previous
        ]
    indexed = session.create(reference)
    for old in previous:
        superseded = old.resource()
        superseded["status"] = "superseded"
        session.update(old, superseded)
    provenance = {
        "resourceType": "Provenance",
        "target": [{"reference": stored.location}, {"reference": indexed.location}],
        "recorded": now,
        "activity": {"coding": [{"system": m.SYSTEM, "code": "published"}]},
        "agent": [agent],
        "entity": [{"role": "source", "what": {"reference": composition.location}}],
        "signature": [bundle["signature"]],
    }
    with session.unrestricted():  # the server's record of the step
        session.create(provenance)
    for request in _requests(content):
        for task in find("Task", [("based-on", request)]):
            _mark_published(session, task, indexed)
    return stored


def _requests(composition: dict[str, Any]) -> list[str]:
    """The requests a report answers (its ``event.detail``)."""
    return [
        d["reference"]
        for e in composition.get("event") or ()
        for d in e.get("detail") or ()
        if isinstance(d, dict) and str(d.get("reference", "")).startswith("ServiceRequest/")
    ]


def _mark_published(session: Session, task: StoredVersion, reference: StoredVersion) -> None:
    """A Task of the request that the publisher may move to ``published`` goes there, with the
    report's DocumentReference as its output; any other stays where it is (its own steps first)."""
    content = as_stored(task)  # as stored: the publisher may read another institution's Task de-identified
    source = m.business_status(content)
    if source is None or "published" not in m.transitions(m.kind_of(content), source):
        return
    content["businessStatus"] = {"coding": [{"system": m.SYSTEM, "code": "published"}]}
    content["status"] = m.TASK_STATUS["published"]
    content.setdefault("output", []).append(
        {"type": workflow_code("report"), "valueReference": {"reference": f"DocumentReference/{reference.res_id}"}}
    )
    try:
        session.update(task, content)
    except FhirError as exc:
        if exc.kind != "forbidden":
            raise
        # not a step the publisher may take (the state machine says whose it is): left as it is


def _document_reference(
    composition: dict[str, Any],
    composition_id: str,
    stored: StoredVersion,
    raw: bytes,
    identifier: dict[str, Any],
    when: str,
) -> dict[str, Any]:
    reference: dict[str, Any] = {
        "resourceType": "DocumentReference",
        "masterIdentifier": identifier,
        "status": "current",
        "docStatus": "amended" if composition.get("status") == "amended" else "final",
        "type": composition["type"],
        "category": composition.get("category") or [],
        "subject": composition["subject"],
        "date": when,
        "author": composition.get("author") or [],
        "description": composition.get("title"),
        "content": [
            {
                "attachment": {
                    "contentType": "application/fhir+json",
                    "url": f"Bundle/{stored.res_id}",
                    "size": len(raw),
                    "hash": base64.b64encode(hashlib.sha1(raw).digest()).decode(),  # noqa: S324 - the R4 Attachment.hash is SHA-1
                    "title": composition.get("title"),
                    "creation": when,
                }
            }
        ],
        "context": {
            "related": [{"reference": f"Composition/{composition_id}"}]
            + [d for e in composition.get("event") or () for d in e.get("detail") or () if isinstance(d, dict)]
        },
    }
    attesters = [a["party"] for a in composition.get("attester") or () if isinstance(a, dict) and a.get("party")]
    if attesters:
        reference["authenticator"] = attesters[0]
    if composition.get("custodian"):
        reference["custodian"] = composition["custodian"]
    if not reference["category"]:
        reference.pop("category")
    return reference
