"""IHE BALP AuditEvent builders (fhir_server/audit/balp.py).

Each built event is checked three ways: against the project's R4 structural validation, against
the BALP 1.1.4 differential of every profile it claims (the patterns re-stated here from the
published StructureDefinitions, so a claim the event does not meet fails), and for the specific
content of its interaction kind.
"""

from __future__ import annotations

import base64
import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest

from fhir_server.audit.balp import (
    KINDS,
    PROFILE_BASE,
    Interaction,
    Requester,
    Server,
    build_events,
    opaque_token,
    outcome_code,
)
from fhir_server.errors import FhirError
from fhir_server.validation import check_resource

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
ROLE = "http://fhir.telefhir.cn/CodeSystem/security-role"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
RESTFUL = "http://hl7.org/fhir/restful-interaction"
WHEN = datetime(2025, 3, 1, 8, 30, 15, 123456, tzinfo=UTC)
#: a JWT-shaped token: header.payload.signature
TOKEN = (
    "eyJhbGciOiJSUzI1NiIsImtpZCI6InJvdC0yMDI1LTAzIn0."
    "eyJzdWIiOiJQcmFjdGl0aW9uZXIvMTIiLCJzY29wZSI6InVzZXIvKi5yZWFkIn0."
    "Qm9ndXNTaWduYXR1cmVCeXRlc0Zvckp1c3RBVGVzdF9aWlpaWlpaWlpaWlpaWlpa"
)
SERVER = Server(name="telefhir", base_url="https://fhir.example.cn/fhir", address="10.1.2.3", site="Org-Lead")
USER = Requester(
    client_id="consult-app",
    user="Practitioner/12",
    user_display="张医生",
    roles=("expert",),
    organization="Organization/5",
    purpose_of_use=("TREAT",),
    network_address="192.0.2.44",
    token=TOKEN,
)

#: Every kind with the parts its route provides.
EXAMPLES: dict[str, Interaction] = {
    "create": Interaction("create", 201, WHEN, "Observation", "o1", "1"),
    "read": Interaction("read", 200, WHEN, "Observation", "o1"),
    "vread": Interaction("vread", 200, WHEN, "Observation", "o1", "2"),
    "update": Interaction("update", 200, WHEN, "Observation", "o1", "3"),
    "patch": Interaction("patch", 200, WHEN, "Observation", "o1", "4"),
    "delete": Interaction("delete", 204, WHEN, "Observation", "o1"),
    "search-type": Interaction("search-type", 200, WHEN, "Observation", query="patient=Patient/1&code=8867-4"),
    "search-system": Interaction("search-system", 200, WHEN, query="_lastUpdated=gt2025-01-01"),
    "search": Interaction("search", 200, WHEN, "Observation", query="status=final", http_method="POST"),
    "history-instance": Interaction("history-instance", 200, WHEN, "Observation", "o1", query="_count=5"),
    "history-type": Interaction("history-type", 200, WHEN, "Observation"),
    "history-system": Interaction("history-system", 200, WHEN, query="_since=2025-01-01"),
    "capabilities": Interaction("capabilities", 200, WHEN),
    "operation": Interaction("operation", 200, WHEN, "Patient", "1", operation="$everything", query="_count=50"),
    "batch": Interaction("batch", 200, WHEN, http_method="POST"),
    "transaction": Interaction("transaction", 200, WHEN, http_method="POST"),
    "notification": Interaction("notification", 200, WHEN, "Subscription", "s1"),
    "login": Interaction("login", 200, WHEN),
    "logout": Interaction("logout", 200, WHEN),
}

#: BALP 1.1.4 differentials: profile → (action, subtypes, client type, server type, user types, entity needed)
BALP = {
    "Create": ("C", {"create"}, "110153", "110152", {"AUT", "INF", "CST"}, "data"),
    "Read": ("R", {"read", "vread"}, "110152", "110153", {"IRCP"}, "data"),
    "Update": ("U", {"update", "patch"}, "110153", "110152", {"AUT", "INF", "CST"}, "data"),
    "Delete": ("D", {"delete"}, "110150", "custodian", {"AUT", "INF", "CST"}, "data"),
    "Query": ("E", {"search", "search-type", "search-system"}, "110153", "110152", {"IRCP"}, "query"),
}


def codes(concept: dict[str, Any]) -> set[str]:
    return {c["code"] for c in concept.get("coding", [concept])}


def agent(event: dict[str, Any], slice_name: str) -> dict[str, Any]:
    """The client, server or user agent (requestor true), as the test knows their order."""
    agents = event["agent"]
    if slice_name == "user":
        (user,) = [a for a in agents if a["requestor"]]
        return user
    return agents[0] if slice_name == "client" else agents[1]


def entities(event: dict[str, Any], role: str) -> list[dict[str, Any]]:
    return [e for e in event.get("entity", []) if e.get("role", {}).get("code") == role]


def assert_meets_claims(event: dict[str, Any]) -> None:
    """Every claimed BALP profile's differential holds (StructureDefinition-IHE.BasicAudit.*)."""
    for url in event.get("meta", {}).get("profile", []):
        assert url.startswith(PROFILE_BASE), url
        name = url[len(PROFILE_BASE) :]
        if name == "OAUTHaccessTokenUse.Opaque":
            user = agent(event, "user")
            assert "UserOauthAgent" in codes(user["type"]) and user["requestor"] is True
            assert len(user["policy"]) == 1 and len(user["policy"][0]) <= 32
            continue
        patient_profile = name.startswith("Patient")
        action, subtypes, client_type, server_type, user_types, needed = BALP[name.removeprefix("Patient")]
        assert event["type"] == {
            "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
            "code": "rest",
            "display": "Restful Operation",
        }
        assert {s["code"] for s in event["subtype"] if s["system"] == RESTFUL} & subtypes
        assert event["action"] == action and event["outcome"] == "0"
        client, server = agent(event, "client"), agent(event, "server")
        assert client_type in codes(client["type"]) and server_type in codes(server["type"])
        for a in (client, server):
            assert a["who"] and a["network"]["address"] and "media" not in a
        users = [a for a in event["agent"] if a["requestor"]]
        assert len(users) <= 1
        for user in users:
            assert codes(user["type"]) & user_types and user["who"] and "network" not in user
        if needed == "data":
            (data,) = entities(event, "4")
            assert data["what"]["reference"] and data["type"]["code"] == "2"
        else:
            (query,) = entities(event, "24")
            assert query["query"] and "what" not in query and query["type"]["code"] == "2"
        patients = entities(event, "1")
        if patient_profile:
            assert len(patients) == 1 and patients[0]["type"]["code"] == "1"
            assert patients[0]["what"]["reference"].startswith("Patient/")
        else:
            assert patients == []


def built(interaction: Interaction, requester: Requester = USER, server: Server = SERVER) -> list[dict[str, Any]]:
    events = build_events(interaction, requester, server)
    for event in events:
        check_resource(event, "AuditEvent")
        assert "id" not in event and event["resourceType"] == "AuditEvent"
        assert_meets_claims(event)
    return events


# --------------------------------------------------------------------------- every kind


def test_examples_cover_every_kind() -> None:
    assert set(EXAMPLES) == KINDS


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_builds_a_valid_event(kind: str) -> None:
    (event,) = built(EXAMPLES[kind])
    assert event["recorded"] == "2025-03-01T08:30:15.123456Z"
    assert event["outcome"] == "0" and "outcomeDesc" not in event
    assert event["source"] == {
        "site": "Org-Lead",
        "observer": {"display": "telefhir"},
        "type": [
            {
                "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                "code": "4",
                "display": "Application Server",
            }
        ],
    }
    client, server, user = agent(event, "client"), agent(event, "server"), agent(event, "user")
    assert client["who"] == {"identifier": {"system": "urn:telefhir:client", "value": "consult-app"}}
    assert client["network"] == {"address": "192.0.2.44", "type": "2"}
    assert client["requestor"] is False
    assert server["who"] == {"display": "telefhir"} and server["network"] == {"address": "10.1.2.3", "type": "2"}
    assert user["who"] == {"reference": "Practitioner/12", "display": "张医生"} and user["name"] == "张医生"
    assert user["role"] == [
        {"coding": [{"system": "http://fhir.telefhir.cn/CodeSystem/security-role", "code": "expert"}]}
    ]
    assert user["purposeOfUse"] == [
        {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}]}
    ]
    (userorg,) = [a for a in event["agent"] if a["who"].get("reference") == "Organization/5"]
    assert userorg["requestor"] is False and "PROV" in codes(userorg["type"])


EXPECTED = {
    # kind: (type code, subtype code, action, profile claimed without patients)
    "create": ("rest", "create", "C", "Create"),
    "read": ("rest", "read", "R", "Read"),
    "vread": ("rest", "vread", "R", "Read"),
    "update": ("rest", "update", "U", "Update"),
    "patch": ("rest", "patch", "U", "Update"),
    "delete": ("rest", "delete", "D", "Delete"),
    "search-type": ("rest", "search-type", "E", "Query"),
    "search-system": ("rest", "search-system", "E", "Query"),
    "search": ("rest", "search", "E", "Query"),
    "history-instance": ("rest", "history-instance", "E", None),
    "history-type": ("rest", "history-type", "E", None),
    "history-system": ("rest", "history-system", "E", None),
    "capabilities": ("rest", "capabilities", "E", None),
    "operation": ("rest", "operation", "E", None),
    "batch": ("rest", "batch", "E", None),
    "transaction": ("rest", "transaction", "E", None),
    "login": ("110114", "110122", "E", None),
    "logout": ("110114", "110123", "E", None),
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_type_subtype_action_and_profile(kind: str) -> None:
    (event,) = built(EXAMPLES[kind])
    type_code, subtype_code, action, profile = EXPECTED[kind]
    assert event["type"]["code"] == type_code
    assert event["subtype"][0]["code"] == subtype_code
    assert event["subtype"][0]["system"] == (DCM if type_code == "110114" else RESTFUL)
    assert event["action"] == action
    claimed = set(event["meta"]["profile"])
    expected = {PROFILE_BASE + "OAUTHaccessTokenUse.Opaque"} | ({PROFILE_BASE + profile} if profile else set())
    assert claimed == expected


def test_operation_subtype_names_the_operation() -> None:
    (event,) = built(EXAMPLES["operation"])
    assert event["subtype"] == [
        {"system": RESTFUL, "code": "operation", "display": "operation"},
        {"system": "urn:telefhir:operation", "code": "everything", "display": "$everything"},
    ]
    (data,) = entities(event, "4")
    assert data["what"] == {"reference": "Patient/1"}
    (query,) = entities(event, "24")
    assert query["description"] == "GET https://fhir.example.cn/fhir/Patient/1/$everything"
    assert base64.b64decode(query["query"]).decode() == "_count=50"


def test_login_and_logout_are_dicom_user_authentication() -> None:
    for kind, code, display in (("login", "110122", "Login"), ("logout", "110123", "Logout")):
        (event,) = built(EXAMPLES[kind], Requester(user="zhang.wei", network_address="198.51.100.7"))
        assert event["type"] == {"system": DCM, "code": "110114", "display": "User Authentication"}
        assert event["subtype"] == [{"system": DCM, "code": code, "display": display}]
        user = agent(event, "user")
        assert user["who"] == {"identifier": {"system": "urn:telefhir:user", "value": "zhang.wei"}}
        assert "humanuser" in codes(user["type"]) and "policy" not in user
        assert agent(event, "client")["who"] == {"display": "198.51.100.7"}
        assert "meta" not in event


def test_failed_login_records_the_failure_and_the_account_tried() -> None:
    failed = Interaction("login", 401, WHEN, detail="invalid password (attempt 3 of 5)", request_id="r-77")
    (event,) = built(failed, Requester(user="zhang.wei", network_address="198.51.100.7"))
    assert event["outcome"] == "4"
    assert event["outcomeDesc"] == "invalid password (attempt 3 of 5)"
    assert agent(event, "user")["who"]["identifier"]["value"] == "zhang.wei"
    (tx,) = event["entity"]
    assert tx == {
        "what": {"identifier": {"value": "r-77"}},
        "type": {"system": "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType", "code": "XrequestId"},
    }


# --------------------------------------------------------------------------- agent roles


@pytest.mark.parametrize("kind", sorted(k for k in EXAMPLES if not k.startswith("log")))
def test_client_server_roles_swap_when_data_leaves_the_server(kind: str) -> None:
    (event,) = built(EXAMPLES[kind])
    client, server = codes(agent(event, "client")["type"]), codes(agent(event, "server")["type"])
    if kind in ("read", "vread", "notification"):
        assert (client, server) == ({"110152"}, {"110153"})  # the client (the subscriber) receives the data
    elif kind == "delete":
        assert (client, server) == ({"110150"}, {"custodian"})  # BALP Delete: Application / custodian
    else:
        assert (client, server) == ({"110153"}, {"110152"})


def test_user_agent_type_follows_the_direction_of_the_data() -> None:
    user_types = {kind: codes(agent(built(EXAMPLES[kind])[0], "user")["type"]) for kind in EXAMPLES}
    for kind in ("create", "update", "patch"):
        assert user_types[kind] == {"AUT", "UserOauthAgent"}
    assert user_types["delete"] == {"CST", "UserOauthAgent"}
    for kind in ("read", "vread", "search", "search-type", "history-type", "operation"):
        assert user_types[kind] == {"IRCP", "UserOauthAgent"}


def test_no_user_agent_without_user_or_token() -> None:
    anonymous = Requester(network_address="203.0.113.9")
    (event,) = built(replace(EXAMPLES["read"], status=401), anonymous)
    assert [a["requestor"] for a in event["agent"]] == [False, False]
    assert agent(event, "client")["who"] == {"display": "203.0.113.9"}
    assert "meta" not in event


def test_backend_services_token_makes_the_client_the_user_agent() -> None:
    system = Requester(client_id="lab-feed", network_address="2001:db8::7", token=TOKEN)
    (event,) = built(EXAMPLES["create"], system)
    user = agent(event, "user")
    assert user["who"] == {"identifier": {"system": "urn:telefhir:client", "value": "lab-feed"}}
    assert user["policy"] == [TOKEN[-32:]] and "name" not in user
    assert agent(event, "client")["network"] == {"address": "2001:db8::7", "type": "2"}


def test_machine_name_addresses_are_type_1() -> None:
    named = Server(name="telefhir", base_url="https://fhir.example.cn/fhir", address="fhir.example.cn")
    (event,) = built(EXAMPLES["read"], replace(USER, network_address="gateway.hospital.cn"), named)
    assert agent(event, "client")["network"] == {"address": "gateway.hospital.cn", "type": "1"}
    assert agent(event, "server")["network"] == {"address": "fhir.example.cn", "type": "1"}
    assert "site" not in event["source"]


# --------------------------------------------------------------------------- patients


def test_one_event_per_patient_each_naming_its_patient() -> None:
    patients = ("Patient/1", "Patient/2", "Patient/3", "Patient/2")
    search = replace(EXAMPLES["search-type"], patients=patients)
    events = built(search)
    assert [entities(e, "1")[0]["what"]["reference"] for e in events] == ["Patient/1", "Patient/2", "Patient/3"]
    for event in events:
        assert len(entities(event, "1")) == 1
        assert PROFILE_BASE + "PatientQuery" in event["meta"]["profile"]
        assert PROFILE_BASE + "Query" not in event["meta"]["profile"]
        (query,) = entities(event, "24")
        assert base64.b64decode(query["query"]).decode() == "patient=Patient/1&code=8867-4"


@pytest.mark.parametrize(
    ("kind", "profile"),
    [("create", "PatientCreate"), ("read", "PatientRead"), ("vread", "PatientRead"), ("update", "PatientUpdate"),
     ("patch", "PatientUpdate"), ("delete", "PatientDelete")],
)  # fmt: skip
def test_patient_variants_of_every_profile(kind: str, profile: str) -> None:
    (event,) = built(replace(EXAMPLES[kind], patients=("Patient/9",)))
    assert PROFILE_BASE + profile in event["meta"]["profile"]
    (patient,) = entities(event, "1")
    assert patient == {
        "what": {"reference": "Patient/9"},
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "1", "display": "Person"},
        "role": {"system": "http://terminology.hl7.org/CodeSystem/object-role", "code": "1", "display": "Patient"},
    }


def test_reading_a_patient_names_it_as_data_and_as_patient() -> None:
    read = Interaction("vread", 200, WHEN, "Patient", "9", "4", patients=("Patient/9",), request_id="abc-1")
    (event,) = built(read)
    (data,) = entities(event, "4")
    assert data["what"] == {"reference": "Patient/9/_history/4"}
    assert data["type"]["code"] == "2"
    assert entities(event, "1")[0]["what"] == {"reference": "Patient/9"}
    assert event["entity"][-1]["what"] == {"identifier": {"value": "abc-1"}}


# --------------------------------------------------------------------------- query entity


@pytest.mark.parametrize(
    "raw",
    [
        "name=王&birthdate=ge1950-01-01",
        "identifier=http://x|1&_include=Observation:subject",
        "name='; DROP TABLE x;--%00",
    ],
)
def test_query_entity_round_trips_the_raw_query(raw: str) -> None:
    (event,) = built(replace(EXAMPLES["search-type"], query=raw))
    (query,) = entities(event, "24")
    assert base64.b64decode(query["query"], validate=True).decode("utf-8") == raw
    assert query["role"] == {
        "system": "http://terminology.hl7.org/CodeSystem/object-role",
        "code": "24",
        "display": "Query",
    }
    assert query["type"]["code"] == "2" and "what" not in query
    assert query["description"] == "GET https://fhir.example.cn/fhir/Observation"
    assert raw not in json.dumps(event, ensure_ascii=False)  # the parameters appear only base64-encoded


def test_query_descriptions_name_the_endpoint() -> None:
    described = {k: entities(built(EXAMPLES[k])[0], "24") for k in EXAMPLES}
    assert described["search-system"][0]["description"] == "GET https://fhir.example.cn/fhir"
    assert described["search"][0]["description"] == "POST https://fhir.example.cn/fhir/Observation/_search"
    assert described["history-instance"][0]["description"] == "GET https://fhir.example.cn/fhir/Observation/o1/_history"
    # history without parameters has nothing to record; kinds without a query never get a query entity
    assert described["history-type"] == [] and described["read"] == [] and described["create"] == []


def test_search_without_parameters_claims_no_query_profile() -> None:
    (event,) = built(replace(EXAMPLES["search-type"], query=None))
    (query,) = entities(event, "24")
    assert "query" not in query
    assert event["meta"]["profile"] == [PROFILE_BASE + "OAUTHaccessTokenUse.Opaque"]


def test_query_of_a_read_is_not_recorded() -> None:
    (event,) = built(replace(EXAMPLES["read"], query="_format=json"))
    assert entities(event, "24") == []


# --------------------------------------------------------------------------- tokens


def test_token_never_appears_whole() -> None:
    for kind, interaction in EXAMPLES.items():
        for event in built(replace(interaction, patients=("Patient/1", "Patient/2"))):
            text = json.dumps(event)
            assert TOKEN not in text, kind
            assert TOKEN[:-32] not in text and TOKEN[-33:] not in text
            assert agent(event, "user")["policy"] == [TOKEN[-32:]]


def test_opaque_token_keeps_the_last_32_characters() -> None:
    assert opaque_token(TOKEN) == TOKEN[-32:] and len(opaque_token(TOKEN)) == 32
    assert opaque_token("a" * 64 + "Z") == "a" * 31 + "Z"


def test_short_tokens_are_never_kept_whole() -> None:
    assert opaque_token("0123456789") == "56789"
    assert opaque_token("x" * 40 + "0123456789abcdef0123") == ("x" * 40 + "0123456789abcdef0123")[-30:]
    short = replace(USER, token="k3y-abc123")
    (event,) = built(EXAMPLES["read"], short)
    assert "k3y-abc123" not in json.dumps(event) and agent(event, "user")["policy"] == ["abc123"[-5:]]


@pytest.mark.parametrize("bad", ["", "x", "abc def", "tab\there", None, 42])
def test_opaque_token_rejects_what_is_not_a_token(bad: Any) -> None:
    with pytest.raises(ValueError, match="token"):
        opaque_token(bad)


# --------------------------------------------------------------------------- outcomes


@pytest.mark.parametrize(
    ("status", "code"), [(200, "0"), (201, "0"), (204, "0"), (304, "0"), (400, "4"), (401, "4"), (403, "4"),
                         (404, "4"), (412, "4"), (422, "4"), (429, "4"), (500, "8"), (503, "8"), (599, "8")],
)  # fmt: skip
def test_outcome_code(status: int, code: str) -> None:
    assert outcome_code(status) == code


@pytest.mark.parametrize("status", [100, 199, 600, 0, -1, True, "200", 200.0])
def test_outcome_code_rejects_what_is_not_a_final_status(status: Any) -> None:
    with pytest.raises(ValueError, match="status"):
        outcome_code(status)


def test_failures_carry_a_description_and_claim_no_rest_profile() -> None:
    denied = replace(EXAMPLES["read"], status=403, patients=("Patient/1",))
    (event,) = built(denied)
    assert event["outcome"] == "4" and event["outcomeDesc"] == "HTTP 403 Forbidden"
    assert event["meta"]["profile"] == [PROFILE_BASE + "OAUTHaccessTokenUse.Opaque"]
    crashed = replace(EXAMPLES["update"], status=500, detail="database unavailable")
    (event,) = built(crashed)
    assert event["outcome"] == "8" and event["outcomeDesc"] == "database unavailable"
    unknown = replace(EXAMPLES["search-type"], status=599)
    assert built(unknown)[0]["outcomeDesc"] == "HTTP 599"


def test_failed_create_has_no_data_entity_and_claims_no_create_profile() -> None:
    invalid = Interaction("create", 422, WHEN, "Observation", detail="Observation.status: missing")
    (event,) = built(invalid, replace(USER, token=None))
    assert entities(event, "4") == [] and "entity" not in event and "meta" not in event
    assert event["outcomeDesc"] == "Observation.status: missing"


def test_success_without_client_address_claims_no_rest_profile() -> None:
    (event,) = built(EXAMPLES["read"], replace(USER, network_address=None, token=None))
    assert "network" not in agent(event, "client") and "meta" not in event


# --------------------------------------------------------------------------- times


def test_recorded_is_converted_to_utc() -> None:
    beijing = timezone(timedelta(hours=8))
    (event,) = built(replace(EXAMPLES["read"], recorded=datetime(2025, 3, 1, 16, 30, 15, tzinfo=beijing)))
    assert event["recorded"] == "2025-03-01T08:30:15.000000Z"


# --------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("interaction", "message"),
    [
        (Interaction("erase", 200, WHEN), "unknown interaction kind"),
        (Interaction("read", 200, datetime(2025, 3, 1, 8, 30)), "timezone-aware"),
        (Interaction("read", 200, WHEN, "Observation"), "needs resource_id"),
        (Interaction("vread", 200, WHEN, "Observation", "o1"), "needs version"),
        (Interaction("create", 201, WHEN), "needs resource_type"),
        (Interaction("operation", 200, WHEN, "Patient", "1"), "needs operation"),
        (Interaction("operation", 200, WHEN, operation="$ bad"), "operation"),
        (Interaction("read", 200, WHEN, "observation", "o1"), "resource_type"),
        (Interaction("read", 200, WHEN, "Observation", "o 1"), "resource_id"),
        (Interaction("read", 200, WHEN, "Observation", "o1", patients=("Patient/1", "Group/2")), "Patient/<id>"),
        (Interaction("read", 200, WHEN, "Observation", "o1", patients=["Patient/1"]), "tuple"),  # type: ignore[arg-type]
        (Interaction("capabilities", 200, WHEN, resource_id="x"), "without resource_type"),
        (Interaction("read", 200, WHEN, "Observation", "o1", request_id=" "), "request_id"),
        (Interaction("read", 200, WHEN, "Observation", "o1", http_method="get"), "http_method"),
        (Interaction("read", 102, WHEN, "Observation", "o1"), "status"),
    ],
)
def test_bad_interactions_raise(interaction: Interaction, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_events(interaction, USER, SERVER)


@pytest.mark.parametrize(
    ("requester", "message"),
    [
        (replace(USER, user="Person/4"), "can reference only"),
        (replace(USER, organization="5"), "Organization/<id>"),
        (replace(USER, roles=("expert", " admin")), "roles"),
        (replace(USER, purpose_of_use=["TREAT"]), "tuple"),  # type: ignore[arg-type]
        (replace(USER, token="two words"), "token"),
        (replace(USER, client_id=""), "client_id"),
    ],
)
def test_bad_requesters_raise(requester: Requester, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build_events(EXAMPLES["read"], requester, SERVER)


def test_bad_server_raises() -> None:
    with pytest.raises(ValueError, match="server address"):
        build_events(EXAMPLES["read"], USER, replace(SERVER, address=""))


def test_the_validator_would_catch_a_broken_event() -> None:
    """The structural check used above is not vacuous for AuditEvents."""
    (event,) = build_events(EXAMPLES["read"], USER, SERVER)
    event["outcome"] = "2"  # not in audit-event-outcome (required binding)
    with pytest.raises(FhirError):
        check_resource(event, "AuditEvent")
