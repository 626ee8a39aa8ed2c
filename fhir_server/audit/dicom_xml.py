"""A FHIR R4 AuditEvent (as IHE BALP builds it) written as a DICOM PS3.15 A.5.1 ``AuditMessage``.

Why: ITI-20 (Record Audit Event, IHE ITI TF-2 3.20.4.1.2) carries DICOM audit message XML, not
FHIR, to the Audit Record Repository over syslog. The mapping follows the DICOM column of
http://hl7.org/fhir/R4/auditevent-mappings.html#dicom:

======================================  ===========================================================
AuditEvent                              AuditMessage
======================================  ===========================================================
type / subtype / action                 EventIdentification/EventID, /EventTypeCode, @EventActionCode
recorded / outcome / outcomeDesc        @EventDateTime, @EventOutcomeIndicator, /EventOutcomeDescription
purposeOfEvent, agent.purposeOfUse      EventIdentification/PurposeOfUse
agent.who / altId / name / requestor    ActiveParticipant@UserID, @AlternativeUserID, @UserName,
                                        @UserIsRequestor
agent.type, agent.role                  ActiveParticipant/RoleIDCode
agent.network.address / type            @NetworkAccessPointID, @NetworkAccessPointTypeCode
source.site / observer / type           AuditSourceIdentification@AuditEnterpriseSiteID,
                                        @AuditSourceID, /AuditSourceTypeCode
entity.what                             ParticipantObjectIdentification@ParticipantObjectID and
                                        /ParticipantObjectIDTypeCode
entity.type / role / lifecycle          @ParticipantObjectTypeCode, @ParticipantObjectTypeCodeRole,
                                        @ParticipantObjectDataLifeCycle
entity.securityLabel                    @ParticipantObjectSensitivity
entity.name / query / detail            /ParticipantObjectName, /ParticipantObjectQuery,
                                        /ParticipantObjectDetail (type, base64 value)
======================================  ===========================================================

Rules, so that nothing is invented:

* Input that is not valid FHIR R4 (a wrong ``action`` or ``outcome`` code, an agent without
  ``requestor``, a detail without ``type`` or value, a ``query`` that is not base64) raises
  ``ValueError``. So does an event without what DICOM cannot do without: ``type`` (EventID),
  ``recorded`` (EventDateTime), ``outcome`` (EventOutcomeIndicator), ``source.observer``
  (AuditSourceID) or any agent that has a ``who`` (ActiveParticipant is 1..*).
* Valid FHIR that DICOM cannot carry is left out: an agent without ``who`` (``UserID`` is
  required), ``agent.policy``, ``agent.location``, ``agent.media`` (MediaIdentifier is not
  produced), ``entity.description`` (DICOM's ParticipantObjectDescription is structured DICOM
  study content, not text), codes outside the enumerations of A.5.1 for the enumerated attributes,
  codings without ``system`` or ``code``. An entity that has neither ``what``, ``query`` nor
  ``name`` identifies nothing and is left out.
* ParticipantObjectName and ParticipantObjectQuery are a choice in A.5.1; when an entity has
  both, the query is kept (it is what a query audit is about) and the name is left out.
* ParticipantObjectIDTypeCode is required by the schema but has no single FHIR source. It is
  taken, first found, from ``what.identifier.type``; from ``entity.type`` when that is not an
  ``audit-entity-type`` code (a resource type, or BALP's ``XrequestId``); from the resource type
  of ``what.reference``; for a query entity (role 24) without ``what``, from the event's first
  ``subtype`` (IHE's DICOM query audits identify the query by its transaction, e.g. ITI-67); and
  last from the ``audit-entity-type`` code itself. ParticipantObjectID is the empty token for an
  entity without ``what`` (a BALP query entity): the schema requires the attribute, xsd:token
  admits the empty value, and FHIR gives no identifier to put there.
* Coded values use the attribute form of A.5.1 (``csd-code``, ``codeSystemName``,
  ``originalText``; CP-1638 for AuditSourceTypeCode). ``codeSystemName`` is ``DCM`` for the DICOM
  ontology and for ``security-source-type`` (FHIR's copy of the A.5.1.2.1 Audit Source Type
  values), ``IHE Transactions`` for ``urn:ihe:event-type-code``, the bare OID for ``urn:oid:``
  systems, and otherwise the system URI. ``originalText`` (DICOM "Code Meaning") is required:
  the coding's ``display``, else its code.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Iterator
from datetime import datetime
from typing import Any

from lxml import etree

DCM_SYSTEM = "http://dicom.nema.org/resources/ontology/DCM"
AUDIT_ENTITY_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/object-role"
DICOM_LIFECYCLE_SYSTEM = "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle"
SECURITY_SOURCE_TYPE_SYSTEM = "http://terminology.hl7.org/CodeSystem/security-source-type"
RESOURCE_TYPES_SYSTEM = "http://hl7.org/fhir/resource-types"
IHE_TRANSACTIONS_SYSTEM = "urn:ihe:event-type-code"

#: FHIR code system URI -> DICOM ``codeSystemName`` (A.5.1 CodedValueType)
CODE_SYSTEM_NAMES: dict[str, str] = {
    DCM_SYSTEM: "DCM",
    SECURITY_SOURCE_TYPE_SYSTEM: "DCM",
    IHE_TRANSACTIONS_SYSTEM: "IHE Transactions",
}

#: A.5.1 enumerations (EventActionCode, EventOutcomeIndicator, NetworkAccessPointTypeCode, ...)
ACTION_CODES = frozenset("CRUDE")
OUTCOME_CODES = frozenset({"0", "4", "8", "12"})
NETWORK_TYPE_CODES = frozenset({"1", "2", "3", "4", "5"})
OBJECT_TYPE_CODES = frozenset({"1", "2", "3", "4"})
OBJECT_ROLE_CODES = frozenset(str(n) for n in range(1, 27))
LIFECYCLE_CODES = frozenset(str(n) for n in range(1, 16))
QUERY_ROLE = "24"

#: A.5.1.2.1 Audit Source Type Code meanings, for an ``originalText`` when the coding has no display
AUDIT_SOURCE_TYPE_MEANINGS: dict[str, str] = {
    "1": "End-user interface",
    "2": "Data acquisition device or instrument",
    "3": "Web server process tier in a multi-tier system",
    "4": "Application server process tier in a multi-tier system",
    "5": "Database server process tier in a multi-tier system",
    "6": "Security server, e.g., a domain controller",
    "7": "ISO level 1-3 network component",
    "8": "ISO level 4-6 operating software",
    "9": "External source, other or unknown type",
}

#: FHIR ``instant`` (what AuditEvent.recorded is), which is also a valid xsd:dateTime
_INSTANT = re.compile(r"^(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})(\.\d+)?(Z|[+-]\d{2}:\d{2})$")
_XML_INVALID = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")
#: the resource type of a relative or absolute literal reference ``[base/]Type/id[/_history/v]``
_REFERENCE_TYPE = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/[A-Za-z0-9\-.]{1,64}(?:/_history/[A-Za-z0-9\-.]{1,64})?$")


def audit_message_xml(event: dict[str, Any]) -> bytes:
    """The DICOM PS3.15 A.5.1 ``AuditMessage`` for ``event``, UTF-8 with an XML declaration.

    Element order follows the A.5.1 schema: EventIdentification, ActiveParticipant+,
    AuditSourceIdentification, ParticipantObjectIdentification*.
    """
    if not isinstance(event, dict) or event.get("resourceType") != "AuditEvent":
        raise ValueError("not a FHIR AuditEvent (resourceType must be 'AuditEvent')")
    root = etree.Element("AuditMessage")
    root.append(_event_identification(event))
    participants = [_active_participant(agent, i) for i, agent in enumerate(_list(event, "agent"))]
    participants = [p for p in participants if p is not None]
    if not participants:
        raise ValueError("AuditEvent has no agent with 'who': DICOM requires at least one ActiveParticipant")
    root.extend(participants)
    root.append(_audit_source(event.get("source")))
    for i, entity in enumerate(_list(event, "entity")):
        element = _participant_object(entity, i, event)
        if element is not None:
            root.append(element)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _event_identification(event: dict[str, Any]) -> etree._Element:
    element = etree.Element("EventIdentification")
    action = event.get("action")
    if action is not None:
        if action not in ACTION_CODES:
            raise ValueError(f"AuditEvent.action {action!r} is not one of C, R, U, D, E")
        element.set("EventActionCode", action)
    element.set("EventDateTime", _recorded(event.get("recorded")))
    outcome = event.get("outcome")
    if outcome is None:
        raise ValueError("AuditEvent has no outcome: DICOM requires EventOutcomeIndicator")
    if outcome not in OUTCOME_CODES:
        raise ValueError(f"AuditEvent.outcome {outcome!r} is not one of 0, 4, 8, 12")
    element.set("EventOutcomeIndicator", outcome)

    event_type = event.get("type")
    if not isinstance(event_type, dict) or _coded("EventID", event_type) is None:
        raise ValueError("AuditEvent has no type with system and code: DICOM requires EventID")
    element.append(_coded("EventID", event_type))
    for subtype in _list(event, "subtype"):
        coded = _coded("EventTypeCode", subtype)
        if coded is not None:
            element.append(coded)
    description = event.get("outcomeDesc")
    if description:
        etree.SubElement(element, "EventOutcomeDescription").text = _string(description, "AuditEvent.outcomeDesc")
    for coding in _unique(_purposes_of_use(event)):
        coded = _coded("PurposeOfUse", coding)
        if coded is not None:
            element.append(coded)
    return element


def _recorded(recorded: Any) -> str:
    """``recorded`` checked as a FHIR instant (always with a zone, as xsd:dateTime allows)."""
    if not recorded:
        raise ValueError("AuditEvent has no recorded time: DICOM requires EventDateTime")
    match = _INSTANT.match(recorded) if isinstance(recorded, str) else None
    if match is None:
        raise ValueError(f"AuditEvent.recorded {recorded!r} is not a FHIR instant")
    seconds, fraction, zone = match.groups()
    try:  # the pattern admits 2024-13-45; fromisoformat does not (fraction cut to microseconds)
        datetime.fromisoformat(seconds + (fraction or "")[:7] + ("+00:00" if zone == "Z" else zone))
    except ValueError as exc:
        raise ValueError(f"AuditEvent.recorded {recorded!r} is not a valid date and time") from exc
    return recorded


def _purposes_of_use(event: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """DICOM has one PurposeOfUse list for the event; FHIR has the event's and each agent's."""
    for concept in _list(event, "purposeOfEvent"):
        yield from _codings(concept)
    for agent in _list(event, "agent"):
        for concept in _list(agent, "purposeOfUse"):
            yield from _codings(concept)


def _active_participant(agent: dict[str, Any], index: int) -> etree._Element | None:
    user_id = _reference_id(agent.get("who"))
    if user_id is None:
        return None
    requestor = agent.get("requestor")
    if not isinstance(requestor, bool):
        raise ValueError(f"AuditEvent.agent[{index}].requestor is required and must be a boolean")
    element = etree.Element("ActiveParticipant")
    element.set("UserID", user_id)
    where = f"AuditEvent.agent[{index}]"
    if agent.get("altId"):
        element.set("AlternativeUserID", _string(agent["altId"], f"{where}.altId"))
    if agent.get("name"):
        element.set("UserName", _string(agent["name"], f"{where}.name"))
    element.set("UserIsRequestor", "true" if requestor else "false")
    network = agent.get("network") or {}
    if network.get("address"):
        element.set("NetworkAccessPointID", _string(network["address"], f"{where}.network.address"))
    network_type = network.get("type")
    if network_type is not None:
        if network_type not in NETWORK_TYPE_CODES:
            raise ValueError(f"AuditEvent.agent[{index}].network.type {network_type!r} is not one of 1-5")
        element.set("NetworkAccessPointTypeCode", network_type)
    concepts = ([agent["type"]] if agent.get("type") else []) + _list(agent, "role")
    for coding in _unique(c for concept in concepts for c in _codings(concept)):
        coded = _coded("RoleIDCode", coding)
        if coded is not None:
            element.append(coded)
    return element


def _audit_source(source: Any) -> etree._Element:
    if not isinstance(source, dict):
        raise ValueError("AuditEvent has no source: DICOM requires AuditSourceIdentification")
    source_id = _reference_id(source.get("observer"))
    if source_id is None:
        raise ValueError("AuditEvent.source has no observer: DICOM requires AuditSourceID")
    element = etree.Element("AuditSourceIdentification")
    if source.get("site"):
        element.set("AuditEnterpriseSiteID", _string(source["site"], "AuditEvent.source.site"))
    element.set("AuditSourceID", source_id)
    for coding in _list(source, "type"):
        if not isinstance(coding, dict):
            raise ValueError("AuditEvent.source.type must be a list of Codings")
        meaning = AUDIT_SOURCE_TYPE_MEANINGS.get(coding.get("code", ""))
        if coding.get("system") == SECURITY_SOURCE_TYPE_SYSTEM and not coding.get("display") and meaning:
            coding = {**coding, "display": meaning}
        coded = _coded("AuditSourceTypeCode", coding)
        if coded is not None:
            element.append(coded)
    return element


def _participant_object(entity: dict[str, Any], index: int, event: dict[str, Any]) -> etree._Element | None:
    what = entity.get("what")
    query = entity.get("query")
    name = entity.get("name")
    role = _enumerated(entity.get("role"), OBJECT_ROLE_SYSTEM, OBJECT_ROLE_CODES)
    object_id = _reference_id(what)
    if object_id is None and not query and not name:
        return None
    id_type = _object_id_type(entity, event, query_entity=role == QUERY_ROLE or bool(query))
    if id_type is None:
        return None

    element = etree.Element("ParticipantObjectIdentification")
    element.set("ParticipantObjectID", object_id or "")
    object_type = _enumerated(entity.get("type"), AUDIT_ENTITY_TYPE_SYSTEM, OBJECT_TYPE_CODES)
    if object_type:
        element.set("ParticipantObjectTypeCode", object_type)
    if role:
        element.set("ParticipantObjectTypeCodeRole", role)
    lifecycle = _enumerated(entity.get("lifecycle"), DICOM_LIFECYCLE_SYSTEM, LIFECYCLE_CODES)
    if lifecycle:
        element.set("ParticipantObjectDataLifeCycle", lifecycle)
    labels = [label["code"] for label in _list(entity, "securityLabel") if label.get("code")]
    if labels:
        element.set("ParticipantObjectSensitivity", " ".join(labels))

    element.append(_coded("ParticipantObjectIDTypeCode", id_type))
    if query:
        etree.SubElement(element, "ParticipantObjectQuery").text = _base64(query, f"AuditEvent.entity[{index}].query")
    elif name:
        etree.SubElement(element, "ParticipantObjectName").text = _string(name, f"AuditEvent.entity[{index}].name")
    for position, detail in enumerate(_list(entity, "detail")):
        element.append(_detail(detail, f"AuditEvent.entity[{index}].detail[{position}]"))
    return element


def _object_id_type(entity: dict[str, Any], event: dict[str, Any], *, query_entity: bool) -> dict[str, Any] | None:
    """The coding for ParticipantObjectIDTypeCode, in the order the module docstring gives."""
    what = entity.get("what") or {}
    identifier_type = (what.get("identifier") or {}).get("type")
    for coding in _codings(identifier_type):
        if _usable(coding):
            return coding
    entity_type = entity.get("type")
    if _usable(entity_type) and entity_type.get("system") != AUDIT_ENTITY_TYPE_SYSTEM:
        return entity_type
    match = _REFERENCE_TYPE.search(what.get("reference") or "")
    if match:
        return {"system": RESOURCE_TYPES_SYSTEM, "code": match.group(1), "display": match.group(1)}
    if query_entity and not what:
        for coding in _list(event, "subtype"):
            if _usable(coding):
                return coding
    if _usable(entity_type):
        return entity_type
    return None


def _detail(detail: dict[str, Any], where: str) -> etree._Element:
    """A.5.1 ValuePair: every value is base64 so binary or XML-like content survives (A.5.1)."""
    detail_type = detail.get("type") if isinstance(detail, dict) else None
    if not detail_type:
        raise ValueError(f"{where}.type is required")
    _string(detail_type, f"{where}.type")
    if "valueString" in detail:
        value = base64.b64encode(str(detail["valueString"]).encode("utf-8")).decode("ascii")
    elif "valueBase64Binary" in detail:
        value = _base64(detail["valueBase64Binary"], f"{where}.valueBase64Binary")
    else:
        raise ValueError(f"{where} has no valueString or valueBase64Binary")
    element = etree.Element("ParticipantObjectDetail")
    element.set("type", detail_type)
    element.set("value", value)
    return element


def _coded(tag: str, coding: dict[str, Any]) -> etree._Element | None:
    """A.5.1 CodedValueType, or None for a coding without system or code (nothing to say)."""
    if not _usable(coding):
        return None
    system, code = coding["system"], coding["code"]
    element = etree.Element(tag)
    element.set("csd-code", code)
    element.set("codeSystemName", _code_system_name(system))
    element.set("originalText", coding.get("display") or code)
    return element


def _code_system_name(system: str) -> str:
    if system in CODE_SYSTEM_NAMES:
        return CODE_SYSTEM_NAMES[system]
    if system.startswith("urn:oid:"):
        return system[len("urn:oid:") :]
    return system


def _enumerated(coding: Any, system: str, allowed: frozenset[str]) -> str | None:
    """The code for an enumerated attribute, when it is from ``system`` (or has none) and allowed."""
    if not isinstance(coding, dict):
        return None
    code = coding.get("code")
    if code in allowed and coding.get("system") in (system, None):
        return code
    return None


def _reference_id(reference: Any) -> str | None:
    """The identifying text of a Reference: identifier value, else literal reference, else display."""
    if not isinstance(reference, dict):
        return None
    identifier = reference.get("identifier") or {}
    for candidate in (identifier.get("value"), reference.get("reference"), reference.get("display")):
        if isinstance(candidate, str) and candidate:
            return candidate
    return None


def _base64(text: Any, where: str) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{where} must be base64 text")
    compact = "".join(text.split())
    try:
        base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"{where} is not valid base64") from exc
    return compact


def _string(value: Any, where: str) -> str:
    """A FHIR string that XML 1.0 can carry (no NUL or C0 controls other than tab, CR, LF)."""
    if not isinstance(value, str):
        raise ValueError(f"{where} must be a string")
    if _XML_INVALID.search(value):
        raise ValueError(f"{where} contains characters XML 1.0 cannot carry")
    return value


def _usable(coding: Any) -> bool:
    if not isinstance(coding, dict):
        return False
    system, code = coding.get("system"), coding.get("code")
    return isinstance(system, str) and bool(system) and isinstance(code, str) and bool(code)


def _codings(concept: Any) -> list[dict[str, Any]]:
    if not isinstance(concept, dict):
        return []
    return [c for c in concept.get("coding") or [] if isinstance(c, dict)]


def _unique(codings: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    seen: set[tuple[Any, Any]] = set()
    for coding in codings:
        key = (coding.get("system"), coding.get("code"))
        if key not in seen:
            seen.add(key)
            yield coding


def _list(container: dict[str, Any], key: str) -> list[Any]:
    value = container.get(key)
    return value if isinstance(value, list) else []
