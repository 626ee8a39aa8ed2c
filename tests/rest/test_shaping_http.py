"""``_summary`` and ``_elements`` on read and vread, through the app, on SQLite and PostgreSQL.

Spec: http://hl7.org/fhir/R4/search.html#summary, #elements; read/vread: http.html#read.
"""

from __future__ import annotations

import json

import pytest

JSON = "application/fhir+json"
SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "Resource encoded in summary mode",
}
PATIENT = {
    "resourceType": "Patient",
    "text": {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">Ann Lee</div>'},
    "identifier": [{"system": "urn:oid:1.2.3", "value": "42"}],
    "name": [{"family": "Lee", "given": ["Ann"]}],
    "gender": "female",
    "birthDate": "1980-02-03",
    "maritalStatus": {"text": "married"},
    "contact": [{"name": {"family": "Lee", "given": ["Bo"]}}],
    "communication": [{"language": {"text": "English"}}],
}


@pytest.fixture()
def patient(client) -> dict:  # type: ignore[no-untyped-def]
    resp = client.post("/fhir/Patient", data=json.dumps(PATIENT), content_type=JSON)
    assert resp.status_code == 201
    return resp.get_json()


def _tags(body: dict) -> list[dict]:
    return body["meta"].get("tag", [])


def test_read_without_parameters_is_the_stored_resource(client, patient) -> None:
    body = client.get(f"/fhir/Patient/{patient['id']}").get_json()
    assert body == patient
    assert SUBSETTED not in _tags(body)


def test_read_summary_true(client, patient) -> None:
    resp = client.get(f"/fhir/Patient/{patient['id']}?_summary=true")
    assert resp.status_code == 200
    assert resp.headers["ETag"] == 'W/"1"'
    body = resp.get_json()
    assert set(body) == {"resourceType", "id", "meta", "identifier", "name", "gender", "birthDate"}
    assert body["name"] == PATIENT["name"]
    assert _tags(body) == [SUBSETTED]
    assert body["meta"]["versionId"] == "1" and body["meta"]["lastUpdated"] == patient["meta"]["lastUpdated"]


def test_read_summary_text(client, patient) -> None:
    body = client.get(f"/fhir/Patient/{patient['id']}?_summary=text").get_json()
    assert set(body) == {"resourceType", "id", "meta", "text"}
    assert body["text"] == PATIENT["text"]
    assert _tags(body) == [SUBSETTED]


def test_read_summary_data(client, patient) -> None:
    body = client.get(f"/fhir/Patient/{patient['id']}?_summary=data").get_json()
    assert set(body) == set(patient) - {"text"}
    assert body["contact"] == PATIENT["contact"]
    assert _tags(body) == [SUBSETTED]


def test_read_summary_false_is_unchanged(client, patient) -> None:
    assert client.get(f"/fhir/Patient/{patient['id']}?_summary=false").get_json() == patient


def test_read_elements(client, patient) -> None:
    body = client.get(f"/fhir/Patient/{patient['id']}?_elements=birthDate,gender").get_json()
    assert set(body) == {"resourceType", "id", "meta", "birthDate", "gender"}
    assert body["birthDate"] == "1980-02-03" and body["gender"] == "female"
    assert _tags(body) == [SUBSETTED]


def test_read_elements_keeps_mandatory_elements(client) -> None:
    obs = (
        '{"resourceType": "Observation", "status": "final", "code": {"text": "weight"},'
        ' "valueQuantity": {"value": 70.50, "unit": "kg"}, "note": [{"text": "after lunch"}]}'
    )
    created = client.post("/fhir/Observation", data=obs, content_type=JSON).get_json()
    resp = client.get(f"/fhir/Observation/{created['id']}?_elements=value")
    body = resp.get_json()
    assert set(body) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}
    assert b'"value":70.50' in resp.data  # decimal precision survives the parse and re-serialisation


def test_read_summary_as_xml(client, patient) -> None:
    resp = client.get(f"/fhir/Patient/{patient['id']}?_summary=true&_format=xml")
    assert resp.status_code == 200
    text = resp.get_data(as_text=True)
    assert '<birthDate value="1980-02-03"/>' in text
    assert "SUBSETTED" in text
    assert "<contact>" not in text and "<text>" not in text


def test_vread_shaping(client, patient) -> None:
    pid = patient["id"]
    updated = dict(PATIENT, id=pid, gender="other")
    assert client.put(f"/fhir/Patient/{pid}", data=json.dumps(updated), content_type=JSON).status_code == 200
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1?_elements=gender").get_json()
    assert set(v1) == {"resourceType", "id", "meta", "gender"}
    assert v1["gender"] == "female" and v1["meta"]["versionId"] == "1"
    assert _tags(v1) == [SUBSETTED]
    v2 = client.get(f"/fhir/Patient/{pid}/_history/2?_summary=text").get_json()
    assert set(v2) == {"resourceType", "id", "meta", "text"} and v2["meta"]["versionId"] == "2"
    assert client.get(f"/fhir/Patient/{pid}/_history/2").get_json()["maritalStatus"] == {"text": "married"}


@pytest.mark.parametrize(
    ("query", "message"),
    [
        ("_summary=maybe", "_summary must be one of"),
        ("_summary=count", "searches only"),
        ("_summary=true&_elements=gender", "cannot be used together"),
    ],
)
def test_bad_parameters_are_400(client, patient, query: str, message: str) -> None:
    for url in (f"/fhir/Patient/{patient['id']}?{query}", f"/fhir/Patient/{patient['id']}/_history/1?{query}"):
        resp = client.get(url)
        assert resp.status_code == 400, url
        outcome = resp.get_json()
        assert outcome["resourceType"] == "OperationOutcome"
        assert outcome["issue"][0]["code"] == "invalid"
        assert message in outcome["issue"][0]["diagnostics"]


def test_bad_parameters_on_unknown_resource_are_400(client) -> None:
    assert client.get("/fhir/Patient/does-not-exist?_summary=maybe").status_code == 400


def test_not_modified_ignores_shaping(client, patient) -> None:
    resp = client.get(f"/fhir/Patient/{patient['id']}?_summary=true", headers={"If-None-Match": 'W/"1"'})
    assert resp.status_code == 304
    assert resp.data == b""


def test_batch_get_entry_is_shaped(client, patient) -> None:
    bundle = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [{"request": {"method": "GET", "url": f"Patient/{patient['id']}?_elements=gender"}}],
    }
    resp = client.post("/fhir", data=json.dumps(bundle), content_type=JSON)
    assert resp.status_code == 200
    entry = resp.get_json()["entry"][0]
    assert entry["response"]["status"].startswith("200")
    assert set(entry["resource"]) == {"resourceType", "id", "meta", "gender"}
