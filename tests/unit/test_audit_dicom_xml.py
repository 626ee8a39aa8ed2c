"""FHIR R4 AuditEvent (IHE BALP) -> DICOM PS3.15 A.5.1 AuditMessage (ITI-20 payload)."""

from __future__ import annotations

import base64
import copy
from typing import Any

import pytest
from lxml import etree

from fhir_server.audit.dicom_xml import audit_message_xml

DCM = "http://dicom.nema.org/resources/ontology/DCM"
ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RAW_QUERY = "GET https://fhir.example.cn/fhir/Observation?patient=Patient/p1&category=vital-signs&_count=10"


def _choice(values: list[str]) -> str:
    return "<choice>" + "".join(f"<value>{v}</value>" for v in values) + "</choice>"


def _optional_attribute(name: str, body: str) -> str:
    return f'<optional><attribute name="{name}">{body}</attribute></optional>'


# DICOM PS3.15 A.5.1 audit message schema, transcribed from its RELAX NG compact form into the
# XML form lxml reads, as amended by CP-1638 (coded AuditSourceTypeCode) and with
# EventIdentification/PurposeOfUse and the optional ParticipantObjectName|Query choice of the
# current edition.
DICOM_AUDIT_SCHEMA = f"""
<grammar xmlns="http://relaxng.org/ns/structure/1.0"
         datatypeLibrary="http://www.w3.org/2001/XMLSchema-datatypes">
  <start>
    <element name="AuditMessage">
      <element name="EventIdentification"><ref name="EventIdentificationContents"/></element>
      <oneOrMore><element name="ActiveParticipant"><ref name="ActiveParticipantContents"/></element></oneOrMore>
      <element name="AuditSourceIdentification"><ref name="AuditSourceContents"/></element>
      <zeroOrMore>
        <element name="ParticipantObjectIdentification"><ref name="ParticipantObjectContents"/></element>
      </zeroOrMore>
    </element>
  </start>
  <define name="CodedValueType">
    <attribute name="csd-code"><data type="token"/></attribute>
    <attribute name="codeSystemName"><data type="token"/></attribute>
    {_optional_attribute("displayName", '<data type="token"/>')}
    <attribute name="originalText"><data type="token"/></attribute>
  </define>
  <define name="EventIdentificationContents">
    <element name="EventID"><ref name="CodedValueType"/></element>
    <zeroOrMore><element name="EventTypeCode"><ref name="CodedValueType"/></element></zeroOrMore>
    {_optional_attribute("EventActionCode", _choice(list("CRUDE")))}
    <attribute name="EventDateTime"><data type="dateTime"/></attribute>
    <attribute name="EventOutcomeIndicator">{_choice(["0", "4", "8", "12"])}</attribute>
    <optional><element name="EventOutcomeDescription"><text/></element></optional>
    <zeroOrMore><element name="PurposeOfUse"><ref name="CodedValueType"/></element></zeroOrMore>
  </define>
  <define name="ActiveParticipantContents">
    <zeroOrMore><element name="RoleIDCode"><ref name="CodedValueType"/></element></zeroOrMore>
    <attribute name="UserID"><text/></attribute>
    {_optional_attribute("AlternativeUserID", "<text/>")}
    {_optional_attribute("UserName", "<text/>")}
    <attribute name="UserIsRequestor"><data type="boolean"/></attribute>
    {_optional_attribute("NetworkAccessPointID", '<data type="token"/>')}
    {_optional_attribute("NetworkAccessPointTypeCode", _choice(["1", "2", "3", "4", "5"]))}
  </define>
  <define name="AuditSourceContents">
    {_optional_attribute("AuditEnterpriseSiteID", '<data type="token"/>')}
    <attribute name="AuditSourceID"><data type="token"/></attribute>
    <zeroOrMore><element name="AuditSourceTypeCode"><ref name="CodedValueType"/></element></zeroOrMore>
  </define>
  <define name="ParticipantObjectContents">
    <element name="ParticipantObjectIDTypeCode"><ref name="CodedValueType"/></element>
    <optional>
      <choice>
        <element name="ParticipantObjectName"><data type="token"/></element>
        <element name="ParticipantObjectQuery"><data type="base64Binary"/></element>
      </choice>
    </optional>
    <zeroOrMore>
      <element name="ParticipantObjectDetail">
        <attribute name="type"><data type="token"/></attribute>
        <attribute name="value"><data type="base64Binary"/></attribute>
      </element>
    </zeroOrMore>
    <attribute name="ParticipantObjectID"><data type="token"/></attribute>
    {_optional_attribute("ParticipantObjectTypeCode", _choice(["1", "2", "3", "4"]))}
    {_optional_attribute("ParticipantObjectTypeCodeRole", _choice([str(n) for n in range(1, 27)]))}
    {_optional_attribute("ParticipantObjectDataLifeCycle", _choice([str(n) for n in range(1, 16)]))}
    {_optional_attribute("ParticipantObjectSensitivity", '<data type="token"/>')}
  </define>
</grammar>
"""
SCHEMA = etree.RelaxNG(etree.fromstring(DICOM_AUDIT_SCHEMA.encode()))


def _role(code: str, display: str) -> dict[str, Any]:
    return {"coding": [{"system": DCM, "code": code, "display": display}]}


def read_event() -> dict[str, Any]:
    """A BALP PatientRead as the server records it: client is Destination, server is Source."""
    return {
        "resourceType": "AuditEvent",
        "type": {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        },
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read", "display": "read"}],
        "action": "R",
        "recorded": "2025-03-01T08:30:15.123+08:00",
        "outcome": "0",
        "agent": [
            {
                "type": _role("110152", "Destination Role ID"),
                "who": {"display": "client-app.example.cn"},
                "requestor": False,
                "network": {"address": "192.0.2.10", "type": "2"},
            },
            {
                "type": _role("110153", "Source Role ID"),
                "who": {"reference": "Device/telefhir"},
                "requestor": False,
                "network": {"address": "fhir.example.cn", "type": "1"},
            },
            {
                "type": {
                    "coding": [
                        {
                            "system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType",
                            "code": "IRCP",
                            "display": "information recipient",
                        }
                    ]
                },
                "role": [{"coding": [{"system": "urn:oid:1.2.156.1", "code": "expert", "display": "会诊专家"}]}],
                "who": {"identifier": {"system": "urn:oid:1.2.156.2", "value": "dr-zhang"}},
                "altId": "…9f2c1a",
                "name": "张医生",
                "requestor": True,
                "purposeOfUse": [
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
                ],
            },
            {"type": _role("110150", "Application"), "requestor": False},  # no who: left out
        ],
        "source": {
            "site": "hospital-a",
            "observer": {"reference": "Device/telefhir"},
            "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
        },
        "entity": [
            {
                "what": {"reference": "Observation/o1/_history/2"},
                "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
                "lifecycle": {
                    "system": "http://terminology.hl7.org/CodeSystem/dicom-audit-lifecycle",
                    "code": "6",
                },
                "securityLabel": [{"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}],
                "description": "free text DICOM cannot carry",
                "detail": [
                    {"type": "version", "valueString": "2"},
                    {"type": "raw", "valueBase64Binary": base64.b64encode(b"\x00\x01<x/>").decode()},
                ],
            },
            {
                "what": {"reference": "Patient/p1"},
                "type": {"system": ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            },
            {
                "what": {"identifier": {"value": "0f6c1a2e-request"}},
                "type": {
                    "system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType",
                    "code": "XrequestId",
                },
            },
        ],
    }


def query_event() -> dict[str, Any]:
    """A BALP PatientQuery: client is Source, server is Destination, query entity role 24."""
    event = read_event()
    event["subtype"] = [{"system": "http://hl7.org/fhir/restful-interaction", "code": "search-type"}]
    event["action"] = "E"
    event["agent"][0]["type"] = _role("110153", "Source Role ID")
    event["agent"][1]["type"] = _role("110152", "Destination Role ID")
    event["entity"] = [
        {
            "type": {"system": ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            "query": base64.b64encode(RAW_QUERY.encode()).decode(),
            "name": "dropped: Name and Query are a choice",
        },
        {
            "what": {"reference": "Patient/p1"},
            "type": {"system": ENTITY_TYPE, "code": "1"},
            "role": {"system": OBJECT_ROLE, "code": "1"},
        },
    ]
    return event


def _parse(event: dict[str, Any]) -> etree._Element:
    xml = audit_message_xml(event)
    assert xml.startswith(b"<?xml version='1.0' encoding='UTF-8'?>")
    root = etree.fromstring(xml)
    SCHEMA.assertValid(root)
    return root


def _roles(participant: etree._Element) -> list[str]:
    return [code.get("csd-code") for code in participant.findall("RoleIDCode")]


def test_read_event_maps_to_dicom_elements() -> None:
    root = _parse(read_event())
    assert [child.tag for child in root] == [
        "EventIdentification",
        "ActiveParticipant",
        "ActiveParticipant",
        "ActiveParticipant",
        "AuditSourceIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
        "ParticipantObjectIdentification",
    ]
    event = root.find("EventIdentification")
    assert event.attrib == {
        "EventActionCode": "R",
        "EventDateTime": "2025-03-01T08:30:15.123+08:00",
        "EventOutcomeIndicator": "0",
    }
    assert [child.tag for child in event] == ["EventID", "EventTypeCode", "PurposeOfUse"]
    assert event.find("EventID").attrib == {
        "csd-code": "rest",
        "codeSystemName": "http://terminology.hl7.org/CodeSystem/audit-event-type",
        "originalText": "Restful Operation",
    }
    assert event.find("EventTypeCode").get("csd-code") == "read"
    assert event.find("PurposeOfUse").get("csd-code") == "TREAT"
    assert event.find("PurposeOfUse").get("originalText") == "TREAT"  # no display: the code is the text

    client, server, user = root.findall("ActiveParticipant")
    # BALP read: the roles are swapped relative to create/search, and carried over as given
    assert _roles(client) == ["110152"] and _roles(server) == ["110153"]
    assert client.find("RoleIDCode").attrib == {
        "csd-code": "110152",
        "codeSystemName": "DCM",
        "originalText": "Destination Role ID",
    }
    assert client.attrib == {
        "UserID": "client-app.example.cn",
        "UserIsRequestor": "false",
        "NetworkAccessPointID": "192.0.2.10",
        "NetworkAccessPointTypeCode": "2",
    }
    assert server.get("UserID") == "Device/telefhir"
    assert server.get("NetworkAccessPointTypeCode") == "1"
    assert user.attrib == {
        "UserID": "dr-zhang",
        "AlternativeUserID": "…9f2c1a",
        "UserName": "张医生",
        "UserIsRequestor": "true",
    }
    assert _roles(user) == ["IRCP", "expert"]
    assert user.findall("RoleIDCode")[1].get("codeSystemName") == "1.2.156.1"  # urn:oid: -> bare OID
    assert user.findall("RoleIDCode")[1].get("originalText") == "会诊专家"

    source = root.find("AuditSourceIdentification")
    assert source.attrib == {"AuditEnterpriseSiteID": "hospital-a", "AuditSourceID": "Device/telefhir"}
    assert source.find("AuditSourceTypeCode").attrib == {
        "csd-code": "4",
        "codeSystemName": "DCM",
        "originalText": "Application server process tier in a multi-tier system",
    }

    data, patient, request = root.findall("ParticipantObjectIdentification")
    assert data.attrib == {
        "ParticipantObjectID": "Observation/o1/_history/2",
        "ParticipantObjectTypeCode": "2",
        "ParticipantObjectTypeCodeRole": "4",
        "ParticipantObjectDataLifeCycle": "6",
        "ParticipantObjectSensitivity": "R",
    }
    assert data.find("ParticipantObjectIDTypeCode").get("csd-code") == "Observation"
    assert data.find("ParticipantObjectDescription") is None
    details = {d.get("type"): base64.b64decode(d.get("value")) for d in data.findall("ParticipantObjectDetail")}
    assert details == {"version": b"2", "raw": b"\x00\x01<x/>"}

    assert patient.attrib == {
        "ParticipantObjectID": "Patient/p1",
        "ParticipantObjectTypeCode": "1",
        "ParticipantObjectTypeCodeRole": "1",
    }
    assert patient.find("ParticipantObjectIDTypeCode").attrib == {
        "csd-code": "Patient",
        "codeSystemName": "http://hl7.org/fhir/resource-types",
        "originalText": "Patient",
    }
    assert request.attrib == {"ParticipantObjectID": "0f6c1a2e-request"}
    assert request.find("ParticipantObjectIDTypeCode").get("csd-code") == "XrequestId"


def test_query_event_carries_base64_query_and_search_roles() -> None:
    root = _parse(query_event())
    event = root.find("EventIdentification")
    assert event.get("EventActionCode") == "E"
    assert event.find("EventTypeCode").get("csd-code") == "search-type"
    client, server, user = root.findall("ActiveParticipant")
    assert (_roles(client), client.get("UserIsRequestor")) == (["110153"], "false")
    assert (_roles(server), server.get("UserIsRequestor")) == (["110152"], "false")
    assert user.get("UserIsRequestor") == "true"

    query, patient = root.findall("ParticipantObjectIdentification")
    assert query.get("ParticipantObjectTypeCode") == "2"
    assert query.get("ParticipantObjectTypeCodeRole") == "24"
    assert query.get("ParticipantObjectID") == ""
    assert base64.b64decode(query.findtext("ParticipantObjectQuery")).decode() == RAW_QUERY
    assert query.find("ParticipantObjectName") is None
    # no what: the query is identified by the interaction that issued it
    assert query.find("ParticipantObjectIDTypeCode").get("csd-code") == "search-type"
    assert (patient.get("ParticipantObjectTypeCode"), patient.get("ParticipantObjectTypeCodeRole")) == ("1", "1")


def test_identifier_type_and_outcome_description_are_used() -> None:
    event = read_event()
    event["outcome"] = "8"
    event["outcomeDesc"] = "患者未授权共享 <refused>"
    event["entity"] = [
        {
            "what": {
                "identifier": {
                    "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    "value": "MRN-001",
                }
            },
            "type": {"system": ENTITY_TYPE, "code": "1"},
            "role": {"system": OBJECT_ROLE, "code": "1"},
            "name": "李四",
            "lifecycle": {"system": "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle", "code": "access"},
        }
    ]
    root = _parse(event)
    assert root.find("EventIdentification").get("EventOutcomeIndicator") == "8"
    assert root.findtext("EventIdentification/EventOutcomeDescription") == "患者未授权共享 <refused>"
    entity = root.find("ParticipantObjectIdentification")
    assert entity.get("ParticipantObjectID") == "MRN-001"
    assert entity.find("ParticipantObjectIDTypeCode").get("csd-code") == "MR"
    assert entity.findtext("ParticipantObjectName") == "李四"
    assert entity.get("ParticipantObjectDataLifeCycle") is None  # ISO 21089 code: no DICOM value


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda e: e.pop("recorded"), "recorded"),
        (lambda e: e.__setitem__("recorded", "2025-03-01"), "instant"),
        (lambda e: e.__setitem__("recorded", "2025-13-01T00:00:00Z"), "valid date"),
        (lambda e: e.pop("type"), "EventID"),
        (lambda e: e.__setitem__("type", {"code": "rest"}), "EventID"),
        (lambda e: e.pop("outcome"), "EventOutcomeIndicator"),
        (lambda e: e.__setitem__("outcome", "1"), "outcome"),
        (lambda e: e.__setitem__("action", "X"), "action"),
        (lambda e: e["agent"][0].pop("requestor"), "requestor"),
        (lambda e: e["agent"][0]["network"].__setitem__("type", "9"), "network.type"),
        (lambda e: e["agent"][2].__setitem__("name", "bad\x00name"), "XML"),
        (lambda e: e.__setitem__("agent", [{"requestor": True}]), "ActiveParticipant"),
        (lambda e: e["source"].pop("observer"), "AuditSourceID"),
        (lambda e: e.pop("source"), "AuditSourceIdentification"),
        (lambda e: e["entity"][0]["detail"].append({"type": "x"}), "valueString"),
        (lambda e: e["entity"][0]["detail"].append({"valueString": "x"}), "type"),
        (lambda e: e["entity"][0]["detail"].append({"type": "x", "valueBase64Binary": "%%%"}), "base64"),
        (lambda e: e.__setitem__("resourceType", "Provenance"), "AuditEvent"),
    ],
)
def test_invalid_or_incomplete_events_raise(change: Any, message: str) -> None:
    event = read_event()
    change(event)
    with pytest.raises(ValueError, match=message):
        audit_message_xml(event)


def test_invalid_query_base64_raises() -> None:
    event = query_event()
    event["entity"][0]["query"] = "not base64!"
    with pytest.raises(ValueError, match=r"entity\[0\]\.query is not valid base64"):
        audit_message_xml(event)


def test_entities_that_identify_nothing_are_left_out() -> None:
    event = read_event()
    event["entity"].append({"type": {"system": ENTITY_TYPE, "code": "2"}, "description": "only text"})
    root = _parse(event)
    assert len(root.findall("ParticipantObjectIdentification")) == 3


def test_input_event_is_not_modified() -> None:
    event = read_event()
    before = copy.deepcopy(event)
    audit_message_xml(event)
    assert event == before
