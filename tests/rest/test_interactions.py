"""REST interactions through the real app (Flask test client), on SQLite and PostgreSQL.

Spec: http://hl7.org/fhir/R4/http.html — read, vread, create, update, patch, delete,
conditional variants, history, headers and error outcomes.
"""

from __future__ import annotations

import gzip
import json
import uuid

import pytest

from fhir_server.validation import check_resource

JSON = "application/fhir+json"


def _patient(family: str = "Zhang", **extra: object) -> dict:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["San"]}], "gender": "male", **extra}


def _post(client, resource: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.post(
        f"/fhir/{resource['resourceType']}", data=json.dumps(resource), content_type=JSON, headers=headers
    )


def _put(client, resource: dict, **headers: str):  # type: ignore[no-untyped-def]
    return client.put(
        f"/fhir/{resource['resourceType']}/{resource['id']}",
        data=json.dumps(resource),
        content_type=JSON,
        headers=headers,
    )


def test_create_then_read(client) -> None:
    resp = _post(client, _patient())
    assert resp.status_code == 201
    body = resp.get_json()
    assert body["meta"]["versionId"] == "1"
    assert resp.headers["ETag"] == 'W/"1"'
    assert resp.headers["Location"] == f"http://testserver/fhir/Patient/{body['id']}/_history/1"
    assert "Last-Modified" in resp.headers
    read = client.get(f"/fhir/Patient/{body['id']}")
    assert read.status_code == 200
    assert read.get_json() == body
    assert read.headers["Content-Type"].startswith(JSON)


def test_create_ignores_body_id(client) -> None:
    resp = _post(client, _patient(id="client-chosen"))
    assert resp.status_code == 201
    assert resp.get_json()["id"] != "client-chosen"


def test_update_as_create_with_client_id_then_versions(client) -> None:
    pid = f"p-{uuid.uuid4().hex[:12]}"
    first = _put(client, _patient(id=pid))
    assert first.status_code == 201
    second = _put(client, _patient("Li", id=pid))
    assert second.status_code == 200
    assert second.get_json()["meta"]["versionId"] == "2"
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1")
    assert v1.status_code == 200 and v1.get_json()["name"][0]["family"] == "Zhang"
    assert client.get(f"/fhir/Patient/{pid}/_history/3").status_code == 404


def test_if_match_conflict_is_412(client) -> None:
    pid = _post(client, _patient()).get_json()["id"]
    ok = _put(client, _patient("Wang", id=pid), **{"If-Match": 'W/"1"'})
    assert ok.status_code == 200
    stale = _put(client, _patient("Zhao", id=pid), **{"If-Match": 'W/"1"'})
    assert stale.status_code == 412
    assert stale.get_json()["resourceType"] == "OperationOutcome"
    assert client.get(f"/fhir/Patient/{pid}").get_json()["name"][0]["family"] == "Wang"


def test_update_id_mismatch_is_400(client) -> None:
    resp = client.put("/fhir/Patient/abc", data=json.dumps(_patient(id="xyz")), content_type=JSON)
    assert resp.status_code == 400
    assert resp.get_json()["issue"][0]["expression"] == ["Patient.id"]


def test_delete_then_read_is_410_and_history_kept(client) -> None:
    pid = _post(client, _patient()).get_json()["id"]
    resp = client.delete(f"/fhir/Patient/{pid}")
    assert resp.status_code == 200
    assert client.get(f"/fhir/Patient/{pid}").status_code == 410
    again = client.delete(f"/fhir/Patient/{pid}")
    assert again.status_code == 200
    history = client.get(f"/fhir/Patient/{pid}/_history").get_json()
    assert [e["request"]["method"] for e in history["entry"]] == ["DELETE", "POST"]
    assert "resource" not in history["entry"][0]
    assert client.get(f"/fhir/Patient/{pid}/_history/1").status_code == 200
    assert client.get(f"/fhir/Patient/{pid}/_history/2").status_code == 410


def test_delete_unknown_is_404(client) -> None:
    assert client.delete("/fhir/Patient/never-existed-here").status_code == 404


def test_prefer_return(client) -> None:
    minimal = _post(client, _patient(), Prefer="return=minimal")
    assert minimal.status_code == 201 and minimal.data == b""
    outcome = _post(client, _patient(), Prefer="return=OperationOutcome")
    assert outcome.get_json()["resourceType"] == "OperationOutcome"


def test_conditional_create(client) -> None:
    ident = f"urn:uuid:{uuid.uuid4()}"
    patient = _patient(identifier=[{"system": "urn:oid:2.16.156.10011.1.3", "value": ident}])
    cond = f"identifier=urn:oid:2.16.156.10011.1.3|{ident}"
    first = _post(client, patient, **{"If-None-Exist": cond})
    assert first.status_code == 201
    second = _post(client, patient, **{"If-None-Exist": cond})
    assert second.status_code == 200
    assert second.get_json()["id"] == first.get_json()["id"]


def test_conditional_update_and_delete_multiple(client) -> None:
    family = f"Fam{uuid.uuid4().hex[:8]}"
    created = client.put(f"/fhir/Patient?family={family}", data=json.dumps(_patient(family)), content_type=JSON)
    assert created.status_code == 201
    updated = client.put(
        f"/fhir/Patient?family={family}", data=json.dumps(_patient(family, gender="female")), content_type=JSON
    )
    assert updated.status_code == 200
    assert updated.get_json()["id"] == created.get_json()["id"]
    _post(client, _patient(family))
    conflict = client.put(f"/fhir/Patient?family={family}", data=json.dumps(_patient(family)), content_type=JSON)
    assert conflict.status_code == 412
    deleted = client.delete(f"/fhir/Patient?family={family}")
    assert deleted.status_code == 200
    assert client.get(f"/fhir/Patient?family={family}").get_json().get("total") == 0


def test_json_patch_and_fhirpath_patch(client) -> None:
    pid = _post(client, _patient()).get_json()["id"]
    resp = client.patch(
        f"/fhir/Patient/{pid}",
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "female"}]),
        content_type="application/json-patch+json",
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["gender"] == "female"
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "add"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "name", "valueString": "birthDate"},
                    {"name": "value", "valueDate": "1970-01-02"},
                ],
            }
        ],
    }
    resp = client.patch(
        f"/fhir/Patient/{pid}", data=json.dumps(params), content_type=JSON, headers={"If-Match": 'W/"2"'}
    )
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["birthDate"] == "1970-01-02"
    assert resp.get_json()["meta"]["versionId"] == "3"
    bad = client.patch(
        f"/fhir/Patient/{pid}",
        data=json.dumps([{"op": "replace", "path": "/gender", "value": "not-a-gender"}]),
        content_type="application/json-patch+json",
    )
    assert bad.status_code == 422


def test_history_paging_and_since(client) -> None:
    pid = f"h-{uuid.uuid4().hex[:10]}"
    for family in ("A", "B", "C", "D", "E"):
        assert _put(client, _patient(family, id=pid)).status_code in (200, 201)
    page = client.get(f"/fhir/Patient/{pid}/_history?_count=2").get_json()
    assert [e["resource"]["meta"]["versionId"] for e in page["entry"]] == ["5", "4"]
    seen = []
    url = f"/fhir/Patient/{pid}/_history?_count=2"
    while url:
        bundle = client.get(url.replace("http://testserver", "")).get_json()
        seen += [e["resource"]["meta"]["versionId"] for e in bundle["entry"]]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
    assert seen == ["5", "4", "3", "2", "1"]
    since = page["entry"][1]["resource"]["meta"]["lastUpdated"]
    recent = client.get(f"/fhir/Patient/{pid}/_history?_since={since}").get_json()
    assert [e["resource"]["meta"]["versionId"] for e in recent["entry"]] == ["5", "4"]
    at = client.get(f"/fhir/Patient/{pid}/_history?_at={since}").get_json()
    assert [e["resource"]["meta"]["versionId"] for e in at["entry"]] == ["4"]
    assert client.get("/fhir/Patient/_history?_count=1").get_json()["type"] == "history"
    assert client.get("/fhir/_history?_count=1").get_json()["type"] == "history"


def test_conditional_read_headers(client) -> None:
    created = _post(client, _patient())
    pid = created.get_json()["id"]
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"1"'}).status_code == 304
    assert client.get(f"/fhir/Patient/{pid}", headers={"If-None-Match": 'W/"9"'}).status_code == 200
    assert (
        client.get(f"/fhir/Patient/{pid}", headers={"If-Modified-Since": created.headers["Last-Modified"]}).status_code
        == 304
    )


@pytest.mark.parametrize(
    ("method", "path", "body", "content_type", "status"),
    [
        ("post", "/fhir/Patient", b"{not json", JSON, 400),
        (
            "post",
            "/fhir/Patient",
            b"<Patient xmlns='http://hl7.org/fhir'><bogus/></Patient>",
            "application/fhir+xml",
            400,
        ),
        ("post", "/fhir/NoSuchType", b'{"resourceType": "NoSuchType"}', JSON, 404),
        ("get", "/fhir/NoSuchType/1", b"", JSON, 404),
        ("post", "/fhir/Patient", b'{"resourceType": "Patient", "gender": "robot"}', JSON, 422),
        ("post", "/fhir/Patient", b'{"resourceType": "Patient", "birthDate": "2020-13-01"}', JSON, 422),
        ("post", "/fhir/Patient", b'{"resourceType": "Observation"}', JSON, 400),
        ("delete", "/fhir/metadata", b"", JSON, 405),
        ("post", "/fhir/Patient", b"plain", "text/plain", 415),
    ],
)
def test_errors_are_operation_outcomes(client, method, path, body, content_type, status) -> None:  # type: ignore[no-untyped-def]
    resp = getattr(client, method)(path, data=body, content_type=content_type)
    assert resp.status_code == status
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["diagnostics"]


def test_invalid_resource_names_the_element(client) -> None:
    resp = _post(client, {"resourceType": "Patient", "gender": "robot", "name": [{"given": [""]}]})
    assert resp.status_code == 422
    expressions = {e for i in resp.get_json()["issue"] for e in i.get("expression", [])}
    assert "Patient.gender" in expressions


def test_xml_round_trip_and_format_negotiation(client) -> None:
    pid = _post(client, _patient()).get_json()["id"]
    xml = client.get(f"/fhir/Patient/{pid}", headers={"Accept": "application/fhir+xml"})
    assert xml.status_code == 200 and xml.headers["Content-Type"].startswith("application/fhir+xml")
    assert b'<Patient xmlns="http://hl7.org/fhir">' in xml.data
    assert client.get(f"/fhir/Patient/{pid}?_format=xml").data == xml.data
    back = client.put(f"/fhir/Patient/{pid}", data=xml.data, content_type="application/fhir+xml")
    assert back.status_code == 200
    v1 = client.get(f"/fhir/Patient/{pid}/_history/1").get_json()
    v2 = back.get_json()
    for v in (v1, v2):
        v.pop("meta")
    assert v1 == v2
    pretty = client.get(f"/fhir/Patient/{pid}?_pretty=true")
    assert b"\n  " in pretty.data
    assert client.get(f"/fhir/Patient/{pid}", headers={"Accept": "text/html"}).status_code == 406


def test_gzip(client) -> None:
    resp = client.get("/fhir/metadata", headers={"Accept-Encoding": "gzip"})
    assert resp.headers["Content-Encoding"] == "gzip"
    assert json.loads(gzip.decompress(resp.data))["resourceType"] == "CapabilityStatement"


def test_capability_statement_matches_routes(client) -> None:
    cs = client.get("/fhir/metadata").get_json()
    assert cs["fhirVersion"] == "4.0.1"
    patient = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Patient")
    codes = {i["code"] for i in patient["interaction"]}
    assert codes == {
        "read",
        "vread",
        "update",
        "patch",
        "delete",
        "history-instance",
        "history-type",
        "create",
        "search-type",
    }
    assert {p["name"] for p in patient["searchParam"]} >= {"_id", "family", "identifier", "birthdate"}
    assert "_content" not in {p["name"] for p in patient["searchParam"]}  # not supported
    assert "_text" in {p["name"] for p in patient["searchParam"]}
    observation = next(r for r in cs["rest"][0]["resource"] if r["type"] == "Observation")
    assert "code-value-quantity" in {p["name"] for p in observation["searchParam"]}
    assert "Observation:subject" in observation["searchInclude"]
    assert "Observation:subject" in patient["searchRevInclude"] and "Encounter:patient" in patient["searchRevInclude"]
    assert cs["rest"][0]["compartment"] == ["http://hl7.org/fhir/CompartmentDefinition/patient"]
    check_resource(cs)  # the statement is itself valid R4
    system = {i["code"] for i in cs["rest"][0]["interaction"]}
    assert system == {"transaction", "batch", "search-system", "history-system"}
