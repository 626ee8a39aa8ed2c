"""The profiles' examples over HTTP on SQLite and PostgreSQL: each example, claiming its profile,
is stored; a broken variant is a 422 naming the element and stores nothing; ``$validate`` with
``profile`` agrees with validation on write.

The server holds the profiles and the value sets because ``packaged.install`` stores
``profiles/`` and ``terminology/`` at start, so required bindings to our value sets are checked
here against the stored terminology, not the files.
"""

from __future__ import annotations

import copy
import json
import pathlib
import uuid
from collections.abc import Callable
from typing import Any

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "profiles" / "examples"
JSON = "application/fhir+json"
CN = "http://fhir.telefhir.cn"
SD = f"{CN}/StructureDefinition/"
TAG_SYSTEM = "http://fhir.telefhir.cn/test/profile-examples"


def _our_profiles() -> list[str]:
    out = []
    for path in sorted((ROOT / "profiles").glob("structuredefinition-*.json")):
        sd = json.loads(path.read_text())
        if sd["url"].startswith(SD) and sd["kind"] == "resource":
            out.append(sd["id"])
    return out


EXAMPLE_FILES = [
    (profile, path.stem) for profile in _our_profiles() for path in sorted(EXAMPLES.glob(f"{profile}-example*.json"))
]


def _tagged(name: str) -> tuple[dict[str, Any], str]:
    """The example without its id, tagged so this test can count what got stored."""
    resource = json.loads((EXAMPLES / f"{name}.json").read_text())
    resource.pop("id", None)
    tag = uuid.uuid4().hex
    resource["meta"].setdefault("tag", []).append({"system": TAG_SYSTEM, "code": tag})
    return resource, tag


def _post(client, resource: dict[str, Any], path: str | None = None):  # type: ignore[no-untyped-def]
    return client.post(path or f"/fhir/{resource['resourceType']}", data=json.dumps(resource), content_type=JSON)


def _stored(client, resource_type: str, tag: str) -> int:  # type: ignore[no-untyped-def]
    resp = client.get(f"/fhir/{resource_type}?_tag={TAG_SYSTEM}|{tag}&_summary=count")
    assert resp.status_code == 200, resp.get_json()
    return int(resp.get_json()["total"])


def _errors(outcome: dict[str, Any]) -> list[tuple[str, list[str]]]:
    return [
        (i["diagnostics"], i.get("expression", [])) for i in outcome["issue"] if i["severity"] in ("error", "fatal")
    ]


def test_every_profile_has_examples_here() -> None:
    assert {profile for profile, _ in EXAMPLE_FILES} == set(_our_profiles())


@pytest.mark.parametrize(("profile_id", "example"), EXAMPLE_FILES)
def test_each_example_is_stored_and_validate_agrees(client, profile_id: str, example: str) -> None:  # type: ignore[no-untyped-def]
    resource, tag = _tagged(example)
    assert SD + profile_id in resource["meta"]["profile"]
    resp = _post(client, resource, f"/fhir/{resource['resourceType']}/$validate?profile={SD}{profile_id}")
    assert resp.status_code == 200 and _errors(resp.get_json()) == [], resp.get_json()
    resp = _post(client, resource)
    assert resp.status_code == 201, resp.get_json()
    assert _stored(client, resource["resourceType"], tag) == 1
    stored = client.get(resp.headers["Location"]).get_json()
    assert stored["meta"]["profile"] == resource["meta"]["profile"]


Change = Callable[[dict[str, Any]], Any]


def _cc(cs_id: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": f"{CN}/CodeSystem/{cs_id}", "code": code}]}


def _component(i: int, **fields: Any) -> Change:
    return lambda r: r["component"][i].update(fields)


# one broken variant per profile: (profile, example, change, message, FHIRPath location)
BROKEN: list[tuple[str, str, Change, str, str]] = [
    ("cn-organization", "cn-organization-example", lambda r: r["identifier"][0].update(value="12330000MB0012345X"),
     "cn-org-1", "Organization.identifier[0]"),
    ("cn-organization", "cn-organization-example",
     lambda r: r["extension"][0]["valueCoding"].update(code="level-4"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/institution-level",
     "Organization.extension[0].valueCoding"),
    ("cn-practitioner", "cn-practitioner-example",
     lambda r: r["qualification"][0]["code"]["coding"][0].update(code="999"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/professional-title",
     "Practitioner.qualification[0].code"),
    ("cn-practitionerrole", "cn-practitionerrole-example",
     lambda r: r["code"][0]["coding"][0].update(code="requesting-doctor"), "cn-prr-1", "PractitionerRole"),
    ("consultation-request", "consultation-request-example", lambda r: r.update(performer=r["performer"][:1]),
     "cn-cr-2", "ServiceRequest"),
    ("consultation-task", "consultation-task-example",
     lambda r: r["businessStatus"]["coding"][0].update(code="published"), "cn-task-1", "Task"),
    ("consultation-task", "consultation-task-example",
     lambda r: r["businessStatus"]["coding"][0].update(code="approved"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/consultation-task-status",
     "Task.businessStatus"),
    ("consultation-opinion", "consultation-opinion-example", lambda r: r.pop("valueString"),
     "minimum required = 1", "Observation.value"),
    ("consultation-report", "consultation-report-example", lambda r: r["section"].pop(1),
     "Slice Composition.section:opinions: minimum required = 1", "Composition.section"),
    ("referral-request", "referral-request-example",
     lambda r: r.update(code=_cc("telemedicine-service-type", "referral")), "cn-ref-1", "ServiceRequest"),
    ("imaging-diagnosis-request", "imaging-diagnosis-request-example",
     lambda r: r.update(supportingInfo=[{"reference": "DocumentReference/d"}]), "cn-img-1", "ServiceRequest"),
    ("ecg-diagnosis-request", "ecg-diagnosis-request-example",
     lambda r: r.update(supportingInfo=[{"reference": "ImagingStudy/i"}]), "cn-ecgr-1", "ServiceRequest"),
    ("pathology-diagnosis-request", "pathology-diagnosis-request-example", lambda r: r.pop("reasonCode"),
     "cn-sr-1", "ServiceRequest"),
    ("tcm-diagnosis-request", "tcm-diagnosis-request-example",
     lambda r: r.update(code=_cc("telemedicine-service-type", "referral-up")), "cn-tcmr-1", "ServiceRequest"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][0]["interpretation"][0]["coding"][0].update(code="tendency"),
     "cn-con-2", "Observation.component[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][0]["interpretation"][0]["coding"][0].update(code="maybe"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-constitution-result",
     "Observation.component[0].interpretation[0]"),
    ("tcm-tongue", "tcm-tongue-example", _component(0, valueCodeableConcept=_cc("tcm-tongue", "coating-yellow")),
     "cn-tng-1", "Observation.component[0]"),
    ("tcm-pulse", "tcm-pulse-example", _component(0, valueCodeableConcept=_cc("tcm-pulse", "bouncy")),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-pulse",
     "Observation.component[0].valueCodeableConcept"),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example",
     lambda r: r["component"][0]["valueQuantity"].update(value=-3), "cn-mer-1", "Observation.component[0]"),
    ("tcm-inspection", "tcm-inspection-example", lambda r: (r.pop("valueString"), r.pop("component")),
     "cn-insp-1", "Observation"),
    ("tcm-listening-smelling", "tcm-listening-smelling-example",
     _component(0, code=_cc("tcm-observation-code", "inspection-complexion")), "cn-list-2", "Observation"),
    ("tcm-diagnosis", "tcm-diagnosis-example", lambda r: r.pop("extension"), "cn-dx-4", "Condition"),
    ("tcm-diagnosis", "tcm-diagnosis-example",
     lambda r: r["code"]["coding"].append({"system": f"{CN}/CodeSystem/gbt-15657-2021", "code": "A07.06.03"}),
     "Slice Condition.code.coding:disease allows at most 1", "Condition.code.coding"),
    ("ecg-observation", "ecg-observation-example",
     lambda r: r["component"][0]["valueSampledData"].update(period=4), "cn-ecg-2", "Observation.component[0]"),
    ("cn-patient", "cn-patient-example", lambda r: r["identifier"][0].update(value="110105194912310021"),
     "cn-pat-1", "Patient.identifier[0]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("profile_id", "example", "change", "message", "where"), BROKEN, ids=[f"{c[0]}:{c[3][:30]}" for c in BROKEN]
)
def test_a_broken_example_is_422_with_its_location_and_nothing_is_stored(  # type: ignore[no-untyped-def]
    client, profile_id: str, example: str, change: Change, message: str, where: str
) -> None:
    resource, tag = _tagged(example)
    change(resource)
    resp = _post(client, resource)
    assert resp.status_code == 422, resp.get_json()
    errors = _errors(resp.get_json())
    assert any(message in d and e == [where] for d, e in errors), errors
    assert _stored(client, resource["resourceType"], tag) == 0

    # $validate?profile= finds the same error, stores nothing, and answers 200
    unclaimed = copy.deepcopy(resource)
    unclaimed["meta"].pop("profile")
    resp = _post(client, unclaimed, f"/fhir/{resource['resourceType']}/$validate?profile={SD}{profile_id}")
    assert resp.status_code == 200
    assert any(message in d and e == [where] for d, e in _errors(resp.get_json())), resp.get_json()
    assert _stored(client, resource["resourceType"], tag) == 0


def test_required_bindings_are_checked_against_the_stored_value_sets(client) -> None:  # type: ignore[no-untyped-def]
    """The terminology the server installed is what answers: a code the stored ValueSet has is
    accepted even where the example did not use it, one it lacks is refused."""
    resource, _tag = _tagged("tcm-tongue-example")
    resource["component"][0]["valueCodeableConcept"] = _cc("tcm-tongue", "crimson")
    assert _post(client, resource).status_code == 201
    assert client.get(f"/fhir/ValueSet?url={CN}/ValueSet/tcm-tongue&_summary=count").get_json()["total"] == 1
