"""Batch and transaction Bundles (http://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

import bz2
import json
import uuid

from tests.conftest import shared_data

JSON = "application/fhir+json"


def _tx(client, entries: list[dict], kind: str = "transaction", **headers: str):  # type: ignore[no-untyped-def]
    bundle = {"resourceType": "Bundle", "type": kind, "entry": entries}
    return client.post("/fhir", data=json.dumps(bundle), content_type=JSON, headers=headers)


def test_transaction_resolves_urn_uuid_everywhere(client) -> None:
    p_url, e_url = f"urn:uuid:{uuid.uuid4()}", f"urn:uuid:{uuid.uuid4()}"
    entries = [
        {
            "fullUrl": e_url,
            "resource": {
                "resourceType": "Encounter",
                "status": "finished",
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "VR"},
                "subject": {"reference": p_url},
                "extension": [{"url": "http://example.org/ext", "valueReference": {"reference": p_url}}],
            },
            "request": {"method": "POST", "url": "Encounter"},
        },
        {
            "fullUrl": p_url,
            "resource": {
                "resourceType": "Patient",
                "text": {
                    "status": "generated",
                    "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{e_url}">visit</a></div>',
                },
            },
            "request": {"method": "POST", "url": "Patient"},
        },
    ]
    resp = _tx(client, entries, Prefer="return=representation")
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()
    assert out["type"] == "transaction-response"
    enc, pat = out["entry"][0], out["entry"][1]
    assert enc["response"]["status"].startswith("201")
    pid = pat["resource"]["id"]
    assert enc["resource"]["subject"]["reference"] == f"Patient/{pid}"
    assert enc["resource"]["extension"][0]["valueReference"]["reference"] == f"Patient/{pid}"
    assert f'href="Encounter/{enc["resource"]["id"]}"' in pat["resource"]["text"]["div"]
    assert enc["response"]["location"].endswith("/_history/1")
    assert enc["response"]["etag"] == 'W/"1"'


def test_transaction_is_all_or_nothing(client) -> None:
    family = f"Tx{uuid.uuid4().hex[:8]}"
    entries = [
        {
            "resource": {"resourceType": "Patient", "name": [{"family": family}]},
            "request": {"method": "POST", "url": "Patient"},
        },
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
    ]
    resp = _tx(client, entries)
    assert resp.status_code == 422
    issue = resp.get_json()["issue"][0]
    assert "Bundle.entry[1]" in issue["diagnostics"]
    assert client.get(f"/fhir/Patient?family={family}").get_json()["total"] == 0


def test_transaction_order_and_conditional_create(client) -> None:
    ident = uuid.uuid4().hex
    org = {"resourceType": "Organization", "identifier": [{"system": "urn:test", "value": ident}], "name": "Clinic"}
    first = client.post("/fhir/Organization", data=json.dumps(org), content_type=JSON).get_json()
    victim = client.post("/fhir/Patient", data=json.dumps({"resourceType": "Patient"}), content_type=JSON).get_json()
    entries = [
        {"request": {"method": "GET", "url": f"Organization?identifier=urn:test|{ident}"}},
        {
            "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
            "resource": org,
            "request": {"method": "POST", "url": "Organization", "ifNoneExist": f"identifier=urn:test|{ident}"},
        },
        {
            "resource": {
                "resourceType": "Patient",
                "managingOrganization": {"reference": f"Organization?identifier=urn:test|{ident}"},
            },
            "request": {"method": "POST", "url": "Patient"},
        },
        {"request": {"method": "DELETE", "url": f"Patient/{victim['id']}"}},
    ]
    resp = _tx(client, entries, Prefer="return=representation")
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()["entry"]
    # the response keeps request order; GET ran last and sees the one organisation
    assert out[0]["resource"]["total"] == 1
    assert out[1]["response"]["status"].startswith("200")
    assert out[2]["resource"]["managingOrganization"]["reference"] == f"Organization/{first['id']}"
    assert out[3]["response"]["status"].startswith("200")
    assert client.get(f"/fhir/Patient/{victim['id']}").status_code == 410


def test_batch_entries_are_independent(client) -> None:
    entries = [
        {"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}},
        {"resource": {"resourceType": "Patient", "gender": "robot"}, "request": {"method": "POST", "url": "Patient"}},
        {"request": {"method": "GET", "url": "Patient/does-not-exist"}},
    ]
    resp = _tx(client, entries, kind="batch")
    assert resp.status_code == 200
    statuses = [e["response"]["status"] for e in resp.get_json()["entry"]]
    assert statuses[0].startswith("201") and statuses[1].startswith("422") and statuses[2].startswith("404")
    assert resp.get_json()["entry"][1]["response"]["outcome"]["resourceType"] == "OperationOutcome"


def test_synthea_bundles_load(client) -> None:
    folder = shared_data("fhir", "synthea")
    files = sorted(folder.glob("*.json.bz2"))
    first = [f for f in files if f.name.startswith(("0-hospital", "0-practitioner"))]
    patients = [f for f in files if not f.name.startswith("0-")][:2]
    for path in first + patients:
        bundle = json.loads(bz2.decompress(path.read_bytes()))
        resp = client.post("/fhir", data=json.dumps(bundle), content_type=JSON)
        assert resp.status_code == 200, (path.name, resp.get_json())
        statuses = {e["response"]["status"].split()[0] for e in resp.get_json()["entry"]}
        assert statuses <= {"200", "201"}, (path.name, statuses)
    bundle = json.loads(bz2.decompress(patients[0].read_bytes()))
    patient = next(e["resource"] for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient")
    ident = next(i for i in patient["identifier"] if i.get("system") == "https://github.com/synthetichealth/synthea")
    found = client.get(f"/fhir/Patient?identifier={ident['system']}|{ident['value']}").get_json()
    assert found["total"] == 1
    pid = found["entry"][0]["resource"]["id"]
    obs = client.get(f"/fhir/Observation?subject=Patient/{pid}&_count=5").get_json()
    assert len(obs["entry"]) >= 1


def test_same_conditional_create_twice_in_one_transaction(client) -> None:
    ident = uuid.uuid4().hex
    org = {"resourceType": "Organization", "identifier": [{"system": "urn:test", "value": ident}]}
    entry = {
        "resource": org,
        "request": {"method": "POST", "url": "Organization", "ifNoneExist": f"identifier=urn:test|{ident}"},
    }
    resp = _tx(client, [entry, entry])
    assert resp.status_code == 200, resp.get_json()
    out = resp.get_json()["entry"]
    assert out[0]["response"]["status"].startswith("201") and out[1]["response"]["status"].startswith("200")
    assert out[0]["fullUrl"] == out[1]["fullUrl"]
    assert client.get(f"/fhir/Organization?identifier=urn:test|{ident}").get_json()["total"] == 1


def test_transaction_with_unknown_urn_uuid_reference_fails(client) -> None:
    entry = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "subject": {"reference": "urn:uuid:0b0c2f0e-0000-4000-8000-000000000000"},
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    resp = _tx(client, [entry])
    assert resp.status_code == 422
    assert resp.get_json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.subject.reference"]


def test_unresolved_reference_inside_a_list_is_located(client) -> None:
    entry = {
        "resource": {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "performer": [{"display": "a"}, {"reference": "urn:uuid:0b0c2f0e-0000-4000-8000-000000000001"}],
        },
        "request": {"method": "POST", "url": "Observation"},
    }
    resp = _tx(client, [entry])
    assert resp.status_code == 422
    assert resp.get_json()["issue"][0]["expression"] == ["Bundle.entry[0].resource.performer[1].reference"]
