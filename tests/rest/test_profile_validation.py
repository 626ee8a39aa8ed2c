"""Profile validation over HTTP on SQLite and PostgreSQL: validation on write for resources that
claim a profile (422 with FHIRPath locations, nothing stored), ``$validate``, and profiles POSTed
with only a differential (snapshot generated on write)."""

from __future__ import annotations

import json
import pathlib
import uuid
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]
JSON = "application/fhir+json"
CN_PATIENT = "http://fhir.telefhir.cn/StructureDefinition/cn-patient"


def _post(client, resource: dict[str, Any], path: str | None = None):  # type: ignore[no-untyped-def]
    return client.post(path or f"/fhir/{resource['resourceType']}", data=json.dumps(resource), content_type=JSON)


def _patient(card: str) -> dict[str, Any]:
    patient = json.loads((ROOT / "profiles" / "examples" / "cn-patient-example.json").read_text())
    patient.pop("id")
    patient["identifier"][0]["value"] = card
    patient["identifier"][1]["value"] = uuid.uuid4().hex  # findable by the test that made it
    return patient


def _stored(client, patient: dict[str, Any]) -> int:  # type: ignore[no-untyped-def]
    value = patient["identifier"][1]["value"]
    return client.get(f"/fhir/Patient?identifier={value}&_summary=count").get_json()["total"]


def test_a_patient_claiming_cn_patient_is_stored_when_valid(client) -> None:  # type: ignore[no-untyped-def]
    patient = _patient("11010519491231002X")
    resp = _post(client, patient)
    assert resp.status_code == 201, resp.get_json()
    assert _stored(client, patient) == 1


def test_a_wrong_check_digit_is_422_with_the_location_and_nothing_is_stored(client) -> None:  # type: ignore[no-untyped-def]
    patient = _patient("110105194912310021")
    resp = _post(client, patient)
    assert resp.status_code == 422
    issues = resp.get_json()["issue"]
    assert any("cn-pat-1" in i["diagnostics"] and i["expression"] == ["Patient.identifier[0]"] for i in issues), issues
    assert _stored(client, patient) == 0


def test_a_transaction_with_one_invalid_profiled_patient_stores_nothing(client) -> None:  # type: ignore[no-untyped-def]
    good, bad = _patient("11010519491231002X"), _patient("110105194912310021")
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": r, "request": {"method": "POST", "url": "Patient"}} for r in (good, bad)],
    }
    resp = _post(client, bundle, "/fhir")
    assert resp.status_code == 422, resp.get_json()
    assert _stored(client, good) == 0 and _stored(client, bad) == 0


def test_validate_reports_without_storing(client) -> None:  # type: ignore[no-untyped-def]
    patient = _patient("110105194912310021")
    resp = _post(client, patient, "/fhir/Patient/$validate")
    assert resp.status_code == 200
    issues = resp.get_json()["issue"]
    assert any(i["severity"] == "error" and "cn-pat-1" in i["diagnostics"] for i in issues)
    assert _stored(client, patient) == 0

    plain = {"resourceType": "Patient", "name": [{"text": "李雷"}]}
    resp = _post(client, plain, f"/fhir/Patient/$validate?profile={CN_PATIENT}")
    errors = [i for i in resp.get_json()["issue"] if i["severity"] == "error"]
    assert any("Patient.identifier: minimum required = 1" in i["diagnostics"] for i in errors), errors
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "resource", "resource": plain}, {"name": "mode", "valueCode": "create"}],
    }
    resp = _post(client, params, "/fhir/Patient/$validate")
    assert resp.status_code == 200
    assert [i for i in resp.get_json()["issue"] if i["severity"] == "error"] == []  # dom-6 (no narrative) warns

    assert _post(client, plain, "/fhir/Patient/$validate?profile=http://example.org/none").status_code == 404
    assert _post(client, plain, "/fhir/Patient/$validate?mode=frobnicate").status_code == 400


def test_validate_a_stored_instance(client) -> None:  # type: ignore[no-untyped-def]
    created = _post(client, {"resourceType": "Patient", "name": [{"text": "韩梅梅"}]}).get_json()
    resp = client.get(f"/fhir/Patient/{created['id']}/$validate?profile={CN_PATIENT}")
    assert resp.status_code == 200
    assert any(i["severity"] == "error" for i in resp.get_json()["issue"])


def test_a_differential_only_profile_gets_a_snapshot_and_is_enforced(client) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/StructureDefinition/obs-{uuid.uuid4().hex[:8]}"
    sd = {
        "resourceType": "StructureDefinition",
        "url": url,
        "name": "ObsWithSubject",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {
            "element": [
                {"id": "Observation", "path": "Observation"},
                {"id": "Observation.subject", "path": "Observation.subject", "min": 1},
            ]
        },
    }
    resp = _post(client, sd)
    assert resp.status_code == 201, resp.get_json()
    stored = client.get(resp.headers["Location"]).get_json()
    subject = next(e for e in stored["snapshot"]["element"] if e["id"] == "Observation.subject")
    assert subject["min"] == 1
    obs = {"resourceType": "Observation", "meta": {"profile": [url]}, "status": "final", "code": {"text": "体重"}}
    resp = _post(client, obs)
    assert resp.status_code == 422
    assert any(i.get("expression") == ["Observation.subject"] for i in resp.get_json()["issue"])
    obs["subject"] = {"reference": "Patient/x"}
    assert _post(client, obs).status_code == 201

    broken = json.loads(json.dumps(sd))
    broken["url"] += "-broken"
    broken["differential"]["element"][1]["constraint"] = [
        {"key": "x-1", "severity": "error", "human": "never parses", "expression": "subject.exists( and"}
    ]
    resp = _post(client, broken)
    assert resp.status_code == 422 and "x-1" in resp.get_json()["issue"][0]["diagnostics"]

    sd["url"] += "-loose"
    sd["differential"]["element"][1] = {"id": "Observation.status", "path": "Observation.status", "min": 0}
    resp = _post(client, sd)
    assert resp.status_code == 422 and "below the base" in resp.get_json()["issue"][0]["diagnostics"]


def test_implementation_guide_globals_require_profiles_of_matching_resources(client) -> None:  # type: ignore[no-untyped-def]
    tag = uuid.uuid4().hex[:8]
    profile = {
        "resourceType": "StructureDefinition",
        "url": f"http://example.org/StructureDefinition/rule-{tag}",
        "name": "RuleObs",
        "status": "active",
        "kind": "resource",
        "abstract": False,
        "type": "Observation",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/Observation",
        "derivation": "constraint",
        "differential": {"element": [{"id": "Observation.subject", "path": "Observation.subject", "min": 1}]},
    }
    assert _post(client, profile).status_code == 201
    criteria = {"url": "http://fhir.telefhir.cn/StructureDefinition/global-criteria"}
    guide = {
        "resourceType": "ImplementationGuide",
        "url": f"http://example.org/ImplementationGuide/{tag}",
        "name": "RuleGuide",
        "status": "active",
        "packageId": f"example.rules.{tag}",
        "fhirVersion": ["4.0.1"],
        "global": [
            {
                "extension": [{**criteria, "valueString": f"code.text = 'rule {tag}'"}],
                "type": "Observation",
                "profile": profile["url"],
            }
        ],
    }
    broken = json.loads(json.dumps(guide))
    broken["global"][0]["extension"][0]["valueString"] = "code.text = ("
    assert _post(client, broken).status_code == 422
    created = _post(client, guide)
    assert created.status_code == 201, created.get_json()

    covered = {"resourceType": "Observation", "status": "final", "code": {"text": f"rule {tag}"}}
    resp = _post(client, covered)
    assert resp.status_code == 422 and "Observation.subject" in json.dumps(resp.get_json())
    assert _post(client, {**covered, "subject": {"reference": "Patient/x"}}).status_code == 201
    assert _post(client, {**covered, "code": {"text": "another code"}}).status_code == 201

    guide["status"] = "retired"
    location = created.headers["Location"].split("/_history")[0]
    assert (
        client.put(
            location, data=json.dumps({**guide, "id": location.rsplit("/", 1)[1]}), content_type=JSON
        ).status_code
        == 200
    )
    assert _post(client, covered).status_code == 201  # the rule is gone with its guide
