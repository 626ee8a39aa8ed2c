"""``$deidentify`` over HTTP (rest/operations/deidentify.py): the stored resource or a posted one,
pseudonyms stable within a scope and different across scopes, nothing identifying left."""

from __future__ import annotations

import json
import pathlib

EXAMPLES = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "examples"
JSON = "application/fhir+json"


def _patient() -> dict:
    patient = json.loads((EXAMPLES / "cn-patient-example.json").read_text("utf-8"))
    patient.pop("id", None)
    return patient


def _secrets(patient: dict) -> list[str]:
    values = [i["value"] for i in patient.get("identifier", [])]
    values += [t["value"] for t in patient.get("telecom", [])]
    values += [n.get("text") or "".join(n.get("family", "")) for n in patient.get("name", [])]
    return [v for v in values if v]


def test_instance_level_deidentifies_the_stored_resource(client) -> None:  # type: ignore[no-untyped-def]
    patient = _patient()
    pid = client.post("/fhir/Patient", json=patient, content_type=JSON).get_json()["id"]
    first = client.get(f"/fhir/Patient/{pid}/$deidentify", query_string={"scope": "ServiceRequest/c1"})
    assert first.status_code == 200, first.get_json()
    out = first.get_json()
    text = json.dumps(out, ensure_ascii=False)
    assert pid not in text and not any(secret in text for secret in _secrets(patient))
    assert any(s.get("code") == "PSEUDED" for s in out["meta"]["security"])
    again = client.get(f"/fhir/Patient/{pid}/$deidentify", query_string={"scope": "ServiceRequest/c1"}).get_json()
    other = client.get(f"/fhir/Patient/{pid}/$deidentify", query_string={"scope": "ServiceRequest/c2"}).get_json()
    assert again["id"] == out["id"] != other["id"]  # stable within a consultation, unlinkable across


def test_system_level_deidentifies_a_posted_bundle(client) -> None:  # type: ignore[no-untyped-def]
    patient = {**_patient(), "id": "p1"}
    observation = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "血压"},
                   "subject": {"reference": "Patient/p1"}}  # fmt: skip
    bundle = {"resourceType": "Bundle", "type": "collection", "entry": [
        {"fullUrl": "http://x/fhir/Patient/p1", "resource": patient},
        {"fullUrl": "http://x/fhir/Observation/o1", "resource": observation}]}  # fmt: skip
    body = {"resourceType": "Parameters", "parameter": [{"name": "scope", "valueString": "ServiceRequest/c1"},
                                                         {"name": "resource", "resource": bundle}]}  # fmt: skip
    resp = client.post("/fhir/$deidentify", json=body, content_type=JSON)
    assert resp.status_code == 200, resp.get_json()
    entries = [e["resource"] for e in resp.get_json()["entry"]]
    new_patient = entries[0]["id"]
    assert new_patient != "p1" and entries[1]["subject"]["reference"] == f"Patient/{new_patient}"


def test_errors(client) -> None:  # type: ignore[no-untyped-def]
    pid = client.post("/fhir/Patient", json=_patient(), content_type=JSON).get_json()["id"]
    assert client.get(f"/fhir/Patient/{pid}/$deidentify").status_code == 400  # no scope
    assert client.get("/fhir/Patient/nope/$deidentify", query_string={"scope": "s"}).status_code == 404
    no_resource = {"resourceType": "Parameters", "parameter": [{"name": "scope", "valueString": "s"}]}
    assert client.post("/fhir/$deidentify", json=no_resource, content_type=JSON).status_code == 400


def test_statistics_exports_carry_the_same_irreversible_identifier_hash_in_every_scope(client, services) -> None:  # type: ignore[no-untyped-def]
    from fhir_server.security.crypto import statistics_hash

    patient = _patient()
    pid = client.post("/fhir/Patient", json=patient, content_type=JSON).get_json()["id"]
    outs = [
        client.get(f"/fhir/Patient/{pid}/$deidentify", query_string={"scope": scope, "statistics": "true"}).get_json()
        for scope in ("export/2026-01", "export/2026-02")
    ]
    first, second = ([i["value"] for i in out["identifier"]] for out in outs)
    assert first == second  # the same patient counts as one across exports
    ident = patient["identifier"][0]
    assert first[0] == statistics_hash(services.repo.fields.ring, ident.get("system", ""), ident["value"])
    assert ident["value"] not in json.dumps(outs, ensure_ascii=False)
    assert outs[0]["id"] != outs[1]["id"]  # ids stay pseudonyms of their scope
