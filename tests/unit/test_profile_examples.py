"""Every profile in ``profiles/`` against its examples: each has one that validates, and broken
variants of it are rejected with the right message at the right FHIRPath location.

Value-set membership is answered from the ``terminology/`` folder (the same files the server
installs), so required bindings to our value sets are really checked here; the R4 core value
sets are left to structural.py, as on the server. The profiles' hard-coded code lists (tongue
dimensions, task statuses, meridian points, constitution types) are cross-checked against the
CodeSystems they mirror, so a terminology change that the profiles miss fails here.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib
import re
from collections.abc import Callable
from typing import Any

import pytest

from fhir_server.errors import Issue
from fhir_server.terminology.codesystem import CodeSystemView
from fhir_server.validation import check_resource, fhirpath
from fhir_server.validation.file_terminology import FileTerminology
from fhir_server.validation.profiles import Validator

ROOT = pathlib.Path(__file__).resolve().parents[2]
PROFILES = ROOT / "profiles"
EXAMPLES = PROFILES / "examples"
TERMINOLOGY = ROOT / "terminology"
CN = "http://fhir.telefhir.cn"
SD = f"{CN}/StructureDefinition/"
BASE = "http://hl7.org/fhir/StructureDefinition/"


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_profiles", ROOT / "scripts" / "gen_profile_snapshots.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


@pytest.fixture(scope="module")
def terminology() -> FileTerminology:
    return FileTerminology(TERMINOLOGY)


@pytest.fixture(scope="module")
def validator(terminology: FileTerminology) -> Validator:
    gen = _gen()
    return Validator(gen.local_resolver(gen.profile_files()), terminology.check)


def _ours() -> list[dict[str, Any]]:
    out = []
    for path in sorted(PROFILES.glob("structuredefinition-*.json")):
        sd = json.loads(path.read_text())
        if sd["url"].startswith(SD):
            out.append(sd)
    return out


RESOURCE_PROFILES = [sd["id"] for sd in _ours() if sd["kind"] == "resource"]
EXTENSIONS = [sd["id"] for sd in _ours() if sd["type"] == "Extension"]


def _examples(profile_id: str) -> list[pathlib.Path]:
    return sorted(EXAMPLES.glob(f"{profile_id}-example*.json"))


def _example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text())


def _errors(validator: Validator, resource: dict[str, Any], profile_id: str) -> list[Issue]:
    return [i for i in validator.validate(resource, SD + profile_id) if i.severity == "error"]


def _unevaluated(issues: list[Issue]) -> list[str]:
    """Our invariants that could not be evaluated (a warning to the validator, a bug to us)."""
    return [i.diagnostics for i in issues if re.match(r"Invariant cn-\S+ could not be evaluated", i.diagnostics)]


def _shown(issues: list[Issue]) -> list[tuple[str, list[str] | None]]:
    return [(i.diagnostics, i.expression) for i in issues]


# -- every profile has a valid example ---------------------------------------------------------
def test_the_profiles_are_all_there() -> None:
    expected = {
        "cn-patient", "cn-organization", "cn-practitioner", "cn-practitionerrole",
        "consultation-request", "consultation-task", "consultation-opinion", "consultation-report",
        "referral-request", "imaging-diagnosis-request", "ecg-diagnosis-request", "pathology-diagnosis-request",
        "tcm-diagnosis-request", "tcm-constitution-assessment", "tcm-tongue", "tcm-pulse",
        "tcm-meridian-measurement", "tcm-inspection", "tcm-listening-smelling", "tcm-diagnosis", "ecg-observation",
    }  # fmt: skip
    assert expected <= set(RESOURCE_PROFILES)
    assert {"cn-ethnicity", "cn-native-place", "cn-sex-gbt2261", "cn-institution-level", "cn-expert",
            "cn-expert-profile"} <= set(EXTENSIONS)  # fmt: skip


@pytest.mark.parametrize("profile_id", RESOURCE_PROFILES)
def test_every_profile_has_an_example_that_validates(validator: Validator, profile_id: str) -> None:
    examples = _examples(profile_id)
    assert examples, f"profiles/examples/{profile_id}-example*.json is missing"
    for path in examples:
        resource = json.loads(path.read_text())
        assert SD + profile_id in resource["meta"]["profile"], path.name
        check_resource(resource, resource["resourceType"])  # the base R4 shape too
        issues = validator.validate(resource, SD + profile_id)
        assert [i for i in issues if i.severity == "error"] == [], path.name
        assert _unevaluated(issues) == [], path.name


@pytest.mark.parametrize("extension_id", EXTENSIONS)
def test_every_extension_is_used_by_a_valid_example(validator: Validator, extension_id: str) -> None:
    users = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        if any(e.get("url") == SD + extension_id for e in resource.get("extension", [])):
            users.append(resource)
    assert users, f"no example uses the extension {extension_id}"
    for resource in users:  # against the profiles it claims, else the base definition of its type
        claimed = resource.get("meta", {}).get("profile") or [BASE + resource["resourceType"]]
        for profile in claimed:
            issues = validator.validate(resource, profile)
            assert [i for i in issues if i.severity == "error"] == [], profile
        for extension in resource["extension"]:  # and the extension itself against its definition
            if extension.get("url") == SD + extension_id:
                issues = validator.validate(extension, SD + extension_id)
                assert [i for i in issues if i.severity == "error"] == [], extension


def test_the_uscc_naming_system_names_the_system_cn_organization_fixes() -> None:
    naming = json.loads((PROFILES / "namingsystem-uscc.json").read_text())
    check_resource(naming, "NamingSystem")
    sd = json.loads((PROFILES / "structuredefinition-cn-organization.json").read_text())
    fixed = next(e["fixedUri"] for e in sd["differential"]["element"] if e["id"].endswith(":uscc.system"))
    assert [u["value"] for u in naming["uniqueId"] if u.get("preferred")] == [fixed]


def test_every_invariant_of_ours_parses() -> None:
    for sd in _ours():
        for element in sd["differential"]["element"]:
            for constraint in element.get("constraint", []):
                fhirpath.compiled(constraint["expression"])  # raises FhirPathError on a syntax error


# -- broken variants ----------------------------------------------------------------------------
Change = Callable[[dict[str, Any]], Any]


def _set(path: str, value: Any) -> Change:
    """Set a dotted path (list indexes as numbers) to ``value``; ``None`` deletes it."""

    def change(resource: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        obj: Any = resource
        for part in parents:
            obj = obj[int(part)] if part.isdigit() else obj[part]
        key: Any = int(last) if last.isdigit() else last
        if value is None:
            del obj[key]
        else:
            obj[key] = copy.deepcopy(value)

    return change


def _all(*changes: Change) -> Change:
    def change(resource: dict[str, Any]) -> None:
        for c in changes:
            c(resource)

    return change


def _append(path: str, value: Any) -> Change:
    def change(resource: dict[str, Any]) -> None:
        obj: Any = resource
        for part in path.split("."):
            obj = obj[int(part)] if part.isdigit() else obj[part]
        obj.append(copy.deepcopy(value) if not callable(value) else value(resource))

    return change


def _component(index: int, **fields: Any) -> Change:
    return lambda r: r["component"][index].update(copy.deepcopy(fields))


def _interpretation(index: int, code: str) -> Change:
    return lambda r: r["component"][index]["interpretation"][0]["coding"][0].update(code=code)


def _cc(system: str, code: str) -> dict[str, Any]:
    return {"coding": [{"system": system, "code": code}]}


TST = f"{CN}/CodeSystem/telemedicine-service-type"
OC = f"{CN}/CodeSystem/tcm-observation-code"
TONGUE = f"{CN}/CodeSystem/tcm-tongue"
PULSE = f"{CN}/CodeSystem/tcm-pulse"
SCT = "http://snomed.info/sct"
LOINC = "http://loinc.org"
GBT = f"{CN}/CodeSystem/gbt-15657-2021"
SR, OBS = "ServiceRequest", "Observation"

# (profile, example, change, message, FHIRPath location)
BROKEN: list[tuple[str, str, Change, str, str]] = [
    # cn-organization
    ("cn-organization", "cn-organization-example", _set("identifier.0.value", "12330000MB0012345X"),
     "cn-org-1", "Organization.identifier[0]"),
    ("cn-organization", "cn-organization-example", _set("identifier.0.value", "12330000MB001234I9"),
     "cn-org-1", "Organization.identifier[0]"),
    ("cn-organization", "cn-organization-example", _set("identifier", None), "cn-org-2", "Organization"),
    ("cn-organization", "cn-organization-example", _set("extension.0.valueCoding.code", "level-4"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/institution-level",
     "Organization.extension[0].valueCoding"),
    ("cn-organization", "cn-organization-example", _append("extension", lambda r: r["extension"][0]),
     "Slice Organization.extension:institutionLevel allows at most 1", "Organization.extension"),
    ("cn-organization", "cn-organization-example", _set("name", None), "minimum required = 1", "Organization.name"),
    # cn-practitioner
    ("cn-practitioner", "cn-practitioner-example", _set("qualification", None),
     "Slice Practitioner.qualification:title: minimum required = 1", "Practitioner.qualification"),
    ("cn-practitioner", "cn-practitioner-example", _set("qualification.0.code.coding.0.code", "999"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/professional-title",
     "Practitioner.qualification[0].code"),
    ("cn-practitioner", "cn-practitioner-example", _set("identifier.0.value", "330106197505120011"),
     "cn-prac-1", "Practitioner.identifier[0]"),
    ("cn-practitioner", "cn-practitioner-example", _set("extension.0.valueCoding.code", "99"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/gbt-3304",
     "Practitioner.extension[0].valueCoding"),
    # cn-practitionerrole
    ("cn-practitionerrole", "cn-practitionerrole-example", _set("code.0.coding.0.code", "requesting-doctor"),
     "cn-prr-1", "PractitionerRole"),
    ("cn-practitionerrole", "cn-practitionerrole-example", _set("specialty", None), "cn-prr-1", "PractitionerRole"),
    ("cn-practitionerrole", "cn-practitionerrole-example", _set("code.0.coding.0.code", "surgeon"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/telemedicine-role",
     "PractitionerRole.code[0]"),
    ("cn-practitionerrole", "cn-practitionerrole-example", _set("organization", {"reference": "Practitioner/x"}),
     "Reference to Practitioner is not allowed", "PractitionerRole.organization"),
    ("cn-practitionerrole", "cn-practitionerrole-example", _set("code", None),
     "minimum required = 1", "PractitionerRole.code"),
    ("cn-practitionerrole", "cn-practitionerrole-example",
     _set("extension.1", {"url": f"{SD}cn-expert-profile", "valueString": "主任医师"}),
     "type String is not allowed", "PractitionerRole.extension[1].valueString"),
    # consultation-request
    ("consultation-request", "consultation-request-example", _set("performer", [{"reference": "Organization/a"}]),
     "cn-cr-2", SR),
    ("consultation-request", "consultation-request-example", _set("identifier", None),
     "minimum required = 1", "ServiceRequest.identifier"),
    ("consultation-request", "consultation-request-example",
     _append("identifier", {"system": f"{CN}/sid/consultation-number", "value": "HZ-2"}),
     "Slice ServiceRequest.identifier:consultationNumber allows at most 1", "ServiceRequest.identifier"),
    ("consultation-request", "consultation-request-example", _set("intent", "plan"),
     "does not match the fixed value 'order'", "ServiceRequest.intent"),
    ("consultation-request", "consultation-request-example", _set("category", [_cc(TST, "imaging-diagnosis")]),
     "Slice ServiceRequest.category:service: minimum required = 1", "ServiceRequest.category"),
    ("consultation-request", "consultation-request-example", _set("performer.0", {"reference": "Patient/p"}),
     "Reference to Patient is not allowed", "ServiceRequest.performer[0]"),
    ("consultation-request", "consultation-request-example", _set("reasonCode", None), "cn-sr-1", SR),
    ("consultation-request", "consultation-request-example", _set("code", _cc(TST, "referral-up")), "cn-cr-1", SR),
    ("consultation-request", "consultation-request-example", _set("code", _cc(TST, "video-call")),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/telemedicine-service-type",
     "ServiceRequest.code"),
    ("consultation-request", "consultation-request-example", _set("occurrencePeriod", None),
     "minimum required = 1", "ServiceRequest.occurrence"),
    # consultation-task
    ("consultation-task", "consultation-task-example", _set("businessStatus.coding.0.code", "published"),
     "cn-task-1", "Task"),
    ("consultation-task", "consultation-task-example", _set("businessStatus.coding.0.code", "approved"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/consultation-task-status",
     "Task.businessStatus"),
    ("consultation-task", "consultation-task-example", _set("owner", None), "minimum required = 1", "Task.owner"),
    ("consultation-task", "consultation-task-example-rejected", _set("statusReason", None), "cn-task-2", "Task"),
    ("consultation-task", "consultation-task-example", _set("basedOn.0", {"reference": "CarePlan/c"}),
     "Reference to CarePlan is not allowed", "Task.basedOn[0]"),
    ("consultation-task", "consultation-task-example", _set("businessStatus", None),
     "minimum required = 1", "Task.businessStatus"),
    # consultation-opinion
    ("consultation-opinion", "consultation-opinion-example", _set("valueString", None),
     "minimum required = 1", "Observation.value"),
    ("consultation-opinion", "consultation-opinion-example",
     _all(_set("valueString", None), _set("valueCodeableConcept", {"text": "心脾两虚"})),
     "type CodeableConcept is not allowed", "Observation.valueCodeableConcept"),
    ("consultation-opinion", "consultation-opinion-example", _set("performer.0", {"reference": "Practitioner/x"}),
     "Reference to Practitioner is not allowed", "Observation.performer[0]"),
    ("consultation-opinion", "consultation-opinion-example",
     _append("performer", {"reference": "PractitionerRole/other"}), "allows at most 1", "Observation.performer"),
    ("consultation-opinion", "consultation-opinion-example", _set("code", _cc(LOINC, "11506-3")),
     "does not match the pattern", "Observation.code"),
    ("consultation-opinion", "consultation-opinion-example", _set("basedOn", None),
     "minimum required = 1", "Observation.basedOn"),
    # consultation-report
    ("consultation-report", "consultation-report-example", lambda r: r["section"].pop(1),
     "Slice Composition.section:opinions: minimum required = 1", "Composition.section"),
    ("consultation-report", "consultation-report-example",
     _set("section.1.entry.0", {"reference": "DocumentReference/d"}),
     "Reference to DocumentReference is not allowed", "Composition.section[1].entry[0]"),
    ("consultation-report", "consultation-report-example", _set("attester", None), "cn-rep-1", "Composition"),
    ("consultation-report", "consultation-report-example", _set("section.2.text", None),
     "minimum required = 1", "Composition.section[2].text"),
    ("consultation-report", "consultation-report-example", _set("type", _cc(LOINC, "34117-2")),
     "does not match the pattern", "Composition.type"),
    ("consultation-report", "consultation-report-example", _set("event", None),
     "minimum required = 1", "Composition.event"),
    # referral-request
    ("referral-request", "referral-request-example", _set("code", _cc(TST, "teleconsultation")), "cn-ref-1", SR),
    ("referral-request", "referral-request-example", _append("performer", {"reference": "Organization/b"}),
     "allows at most 1", "ServiceRequest.performer"),
    ("referral-request", "referral-request-example", _set("performer.0", {"reference": "PractitionerRole/r"}),
     "Reference to PractitionerRole is not allowed", "ServiceRequest.performer[0]"),
    ("referral-request", "referral-request-example", _set("category.0", _cc(TST, "teleconsultation")),
     "Slice ServiceRequest.category:service: minimum required = 1", "ServiceRequest.category"),
    # imaging-diagnosis-request
    ("imaging-diagnosis-request", "imaging-diagnosis-request-example",
     _set("supportingInfo", [{"reference": "DocumentReference/d"}]), "cn-img-1", SR),
    ("imaging-diagnosis-request", "imaging-diagnosis-request-example",
     _set("supportingInfo", [{"reference": "ImagingStudyX/d"}]), "cn-img-1", SR),
    ("imaging-diagnosis-request", "imaging-diagnosis-request-example", _set("reasonCode", None),
     "minimum required = 1", "ServiceRequest.reasonCode"),
    # ecg-diagnosis-request
    ("ecg-diagnosis-request", "ecg-diagnosis-request-example",
     _set("supportingInfo", [{"reference": "ImagingStudy/i"}]), "cn-ecgr-1", SR),
    ("ecg-diagnosis-request", "ecg-diagnosis-request-example", _set("code", _cc(LOINC, "34534-8")),
     "does not match the pattern", "ServiceRequest.code"),
    # pathology-diagnosis-request
    ("pathology-diagnosis-request", "pathology-diagnosis-request-example",
     _set("supportingInfo", [{"reference": "Observation/o"}]), "cn-path-1", SR),
    ("pathology-diagnosis-request", "pathology-diagnosis-request-example", _set("reasonCode", None), "cn-sr-1", SR),
    ("pathology-diagnosis-request", "pathology-diagnosis-request-example", _set("requester", None),
     "minimum required = 1", "ServiceRequest.requester"),
    # tcm-diagnosis-request
    ("tcm-diagnosis-request", "tcm-diagnosis-request-example", _set("code", _cc(TST, "imaging-diagnosis")),
     "cn-tcmr-1", SR),
    ("tcm-diagnosis-request", "tcm-diagnosis-request-example", _set("category", [_cc(TST, "teleconsultation")]),
     "Slice ServiceRequest.category:service: minimum required = 1", "ServiceRequest.category"),
    # tcm-constitution-assessment
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", lambda r: r["component"].pop(),
     "Slice Observation.component:I: minimum required = 1", "Observation.component"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", lambda r: r["component"].pop(),
     "Observation.component: minimum required = 9, but only found 8", "Observation.component"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     _append("component", lambda r: r["component"][1]), "allows at most 9", "Observation.component"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", _interpretation(0, "tendency"),
     "cn-con-2", "Observation.component[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", _interpretation(1, "basically-yes"),
     "cn-con-3", "Observation.component[1]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][0]["valueQuantity"].update(value=120), "cn-con-1", "Observation.component[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][4]["valueQuantity"].update(value=45), "cn-con-5",
     "Observation.component[4]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     _all(lambda r: r["component"][4]["valueQuantity"].update(value=45), _interpretation(4, "yes")),
     "cn-con-4", "Observation.component[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example-qi-deficiency", _interpretation(0, "yes"),
     "cn-con-4", "Observation.component[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][0]["valueQuantity"].update(code="%"),
     "does not match the pattern", "Observation.component[0].valueQuantity"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example",
     lambda r: r["component"][8]["code"]["coding"][0].update(code="J"),
     "matches none of the slices (closed)", "Observation.component[8]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", _interpretation(0, "maybe"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-constitution-result",
     "Observation.component[0].interpretation[0]"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", _set("method", None),
     "minimum required = 1", "Observation.method"),
    ("tcm-constitution-assessment", "tcm-constitution-assessment-example", _set("valueString", "平和质"),
     "is not allowed by the profile", "Observation.value"),
    # tcm-tongue
    ("tcm-tongue", "tcm-tongue-example", _component(0, valueCodeableConcept=_cc(TONGUE, "coating-yellow")),
     "cn-tng-1", "Observation.component[0]"),
    ("tcm-tongue", "tcm-tongue-example", _component(1, valueCodeableConcept=_cc(TONGUE, "trembling")),
     "cn-tng-2", "Observation.component[1]"),
    ("tcm-tongue", "tcm-tongue-example", _append("component", lambda r: r["component"][0]),
     "Slice Observation.component:bodyColour allows at most 1", "Observation.component"),
    ("tcm-tongue", "tcm-tongue-example", _component(0, valueCodeableConcept=_cc(TONGUE, "purple-ish")),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-tongue",
     "Observation.component[0].valueCodeableConcept"),
    ("tcm-tongue", "tcm-tongue-example", _all(_set("component", None), _set("valueString", None)), "cn-tng-0", OBS),
    ("tcm-tongue", "tcm-tongue-example", _set("derivedFrom.0", {"reference": "Patient/p"}),
     "Reference to Patient is not allowed", "Observation.derivedFrom[0]"),
    # tcm-pulse
    ("tcm-pulse", "tcm-pulse-example", _set("bodySite", _cc(SCT, "344001")), "cn-pls-1", "Observation.bodySite"),
    ("tcm-pulse", "tcm-pulse-example", _component(0, valueCodeableConcept=_cc(PULSE, "group-floating")),
     "cn-pls-2", "Observation.component[0]"),
    ("tcm-pulse", "tcm-pulse-example", lambda r: r.update(component=r["component"][-1:]), "cn-pls-3", OBS),
    ("tcm-pulse", "tcm-pulse-example", _component(0, valueCodeableConcept=_cc(PULSE, "bouncy")),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-pulse",
     "Observation.component[0].valueCodeableConcept"),
    ("tcm-pulse", "tcm-pulse-example", lambda r: r["component"][5]["valueQuantity"].update(code="{beats}/min"),
     "does not match the pattern", "Observation.component[5].valueQuantity"),
    ("tcm-pulse", "tcm-pulse-example", _set("bodySite", None), "minimum required = 1", "Observation.bodySite"),
    # tcm-meridian-measurement
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example", lambda r: r["component"].pop(0),
     "Slice Observation.component:LU-L: minimum required = 1", "Observation.component"),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example",
     lambda r: r["component"][0]["valueQuantity"].update(value=-3), "cn-mer-1", "Observation.component[0]"),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example",
     lambda r: r["component"][0]["valueQuantity"].update(code="mA"),
     "does not match the pattern", "Observation.component[0].valueQuantity"),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example", lambda r: r["component"].pop(26),
     "cn-mer-2", OBS),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example", lambda r: r["component"].pop(26),
     "cn-mer-3", OBS),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example",
     lambda r: r["component"][25]["valueQuantity"].update(value=500), "cn-mer-2", OBS),
    ("tcm-meridian-measurement", "tcm-meridian-measurement-example", _interpretation(0, "high"),
     "is not in the required value set http://fhir.telefhir.cn/ValueSet/tcm-meridian-interpretation",
     "Observation.component[0].interpretation[0]"),
    # tcm-inspection, tcm-listening-smelling
    ("tcm-inspection", "tcm-inspection-example", _all(_set("valueString", None), _set("component", None)),
     "cn-insp-1", OBS),
    ("tcm-inspection", "tcm-inspection-example", _component(0, code=_cc(OC, "listening-voice")), "cn-insp-2", OBS),
    ("tcm-inspection", "tcm-inspection-example", _set("derivedFrom.0", {"reference": "Encounter/e"}),
     "Reference to Encounter is not allowed", "Observation.derivedFrom[0]"),
    ("tcm-listening-smelling", "tcm-listening-smelling-example", _all(_set("note", None), _set("component", None)),
     "cn-list-1", OBS),
    ("tcm-listening-smelling", "tcm-listening-smelling-example",
     _component(0, code=_cc(OC, "inspection-complexion")), "cn-list-2", OBS),
    ("tcm-listening-smelling", "tcm-listening-smelling-example",
     _set("valueQuantity", {"value": 1}), "type Quantity is not allowed", "Observation.valueQuantity"),
    # tcm-diagnosis
    ("tcm-diagnosis", "tcm-diagnosis-example", _set("extension", None), "cn-dx-4", "Condition"),
    ("tcm-diagnosis", "tcm-diagnosis-example",
     _append("code.coding", {"system": GBT, "code": "A07.06.03", "display": "尪痹"}), "cn-dx-2", "Condition"),
    ("tcm-diagnosis", "tcm-diagnosis-example",
     _append("code.coding", {"system": GBT, "code": "A07.06.03", "display": "尪痹"}),
     "Slice Condition.code.coding:disease allows at most 1", "Condition.code.coding"),
    ("tcm-diagnosis", "tcm-diagnosis-example", _set("code.coding.0.code", "A1.2"), "cn-dx-2", "Condition"),
    ("tcm-diagnosis", "tcm-diagnosis-example",
     _set("code", {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10", "code": "J00"}]}), "cn-dx-1", "Condition"),
    ("tcm-diagnosis", "tcm-diagnosis-example",
     _set("category", [_cc("http://terminology.hl7.org/CodeSystem/condition-category", "problem-list-item")]),
     "Slice Condition.category:encounterDiagnosis: minimum required = 1", "Condition.category"),
    ("tcm-diagnosis", "tcm-diagnosis-example", _set("subject", {"reference": "Group/g"}),
     "Reference to Group is not allowed", "Condition.subject"),
    # ecg-observation
    ("ecg-observation", "ecg-observation-example", lambda r: r["component"][0]["valueSampledData"].update(period=4),
     "cn-ecg-2", "Observation.component[0]"),
    ("ecg-observation", "ecg-observation-example",
     lambda r: r["component"][0]["valueSampledData"].update(
         data=" ".join(r["component"][0]["valueSampledData"]["data"].split()[:4999])
     ),
     "cn-ecg-3", "Observation.component[0]"),
    ("ecg-observation", "ecg-observation-example",
     lambda r: r["component"][0]["valueSampledData"].update(dimensions=2), "cn-ecg-1", "Observation.component[0]"),
    ("ecg-observation", "ecg-observation-example",
     lambda r: [r["component"][13]["valueQuantity"].pop(k) for k in ("system", "code")],
     "cn-ecg-4", "Observation.component[13]"),
    ("ecg-observation", "ecg-observation-example", lambda r: r["component"].pop(11),
     "Slice Observation.component:V6: minimum required = 1", "Observation.component"),
    ("ecg-observation", "ecg-observation-example",
     _all(lambda r: r["component"][1].pop("valueSampledData"), _component(1, valueString="artefact")),
     "type String is not allowed", "Observation.component[1].valueString"),
    ("ecg-observation", "ecg-observation-example", _set("code", _cc(LOINC, "34534-8")),
     "does not match the pattern", "Observation.code"),
]  # fmt: skip


def _case_id(case: tuple[str, str, Change, str, str]) -> str:
    return f"{case[0]}:{case[3][:40]}"


@pytest.mark.parametrize(("profile_id", "example", "change", "message", "where"), BROKEN, ids=map(_case_id, BROKEN))
def test_broken_examples_are_rejected_with_their_location(
    validator: Validator, profile_id: str, example: str, change: Change, message: str, where: str
) -> None:
    resource = _example(example)
    assert _errors(validator, resource, profile_id) == []  # the change is what breaks it
    change(resource)
    issues = validator.validate(resource, SD + profile_id)
    errors = [i for i in issues if i.severity == "error"]
    assert any(message in e.diagnostics and e.expression == [where] for e in errors), _shown(errors)
    assert _unevaluated(issues) == []


def test_every_profile_has_at_least_two_broken_variants() -> None:
    counted = {profile for profile, *_ in BROKEN}
    short = [p for p in RESOURCE_PROFILES if p != "cn-patient" and sum(c[0] == p for c in BROKEN) < 2]
    assert not short and counted <= set(RESOURCE_PROFILES), short  # cn-patient's are in test_profiles.py


# -- variants that must stay valid --------------------------------------------------------------
@pytest.mark.parametrize(
    ("profile_id", "example", "change"),
    [
        # a urn:uuid reference (in a transaction) names its target by Reference.type
        ("imaging-diagnosis-request", "imaging-diagnosis-request-example",
         _set("supportingInfo", [{"reference": "urn:uuid:9d1c6c4e-0f55-4bd1-9a5c-1f0f3c2b8f10",
                                  "type": "ImagingStudy"}])),
        ("imaging-diagnosis-request", "imaging-diagnosis-request-example",
         _set("supportingInfo", [{"reference": "http://pacs.example.org/fhir/ImagingStudy/1.2.840.1/_history/2"}])),
        # the conventional code may be in the same CodeableConcept instead of a related Condition
        ("tcm-diagnosis", "tcm-diagnosis-example",
         _all(_set("extension", None),
              _append("code.coding", {"system": "http://hl7.org/fhir/sid/icd-10", "code": "J00"}))),
        # a syndrome alone is a diagnosis; without ICD-11 codes nothing needs pairing
        ("tcm-diagnosis", "tcm-diagnosis-example",
         _all(_set("extension", None), _set("code", {"coding": [{"system": GBT, "code": "B04.06.01.03.02"}]}))),
        # a raw meridian measurement, before $interpret-meridian
        ("tcm-meridian-measurement", "tcm-meridian-measurement-example",
         lambda r: r.update(component=[{k: v for k, v in c.items() if k != "interpretation"}
                                       for c in r["component"][:24]])),
        # a department without its own social credit code
        ("cn-organization", "cn-organization-example-department", lambda r: None),
        # a non-expert role needs neither specialty nor profile
        ("cn-practitionerrole", "cn-practitionerrole-example",
         _all(_set("extension", None), _set("specialty", None),
              _set("code.0.coding.0.code", "scheduler"))),
        # 1000 Hz for 10 s
        ("ecg-observation", "ecg-observation-example",
         lambda r: [c["valueSampledData"].update(period=1, data=c["valueSampledData"]["data"] + " "
                                                  + c["valueSampledData"]["data"])
                    for c in r["component"] if "valueSampledData" in c]),
    ],
)  # fmt: skip
def test_variants_within_the_profile_stay_valid(
    validator: Validator, profile_id: str, example: str, change: Change
) -> None:
    resource = _example(example)
    change(resource)
    assert _errors(validator, resource, profile_id) == []


def test_an_expert_without_a_published_profile_is_warned_not_refused(validator: Validator) -> None:
    role = _example("cn-practitionerrole-example")
    role["extension"] = role["extension"][:1]
    issues = validator.validate(role, SD + "cn-practitionerrole")
    assert [i.expression for i in issues if "cn-prr-2" in i.diagnostics and i.severity == "warning"] == [
        ["PractitionerRole"]
    ]
    assert [i for i in issues if i.severity == "error"] == []


# -- the GB 32100-2015 check character ------------------------------------------------------------
@pytest.mark.parametrize(
    ("code", "valid"),
    [
        # published codes of real organisations (the national enterprise credit publicity system)
        ("91110108551385082Q", True),  # 小米科技有限责任公司
        ("91370000728611939A", True),  # 山东步长制药股份有限公司
        ("52410000663412719U", True),  # 河南省嵩山少林寺文化院
        ("531000005000160090", True),  # 中国红十字基金会 (check value 0)
        ("91110108551385082F", False),
        ("9111010855138508Q", False),  # 17 characters
        ("91110108551385082q", False),  # lower case is not in the character set
        ("9111O108551385082Q", False),  # letter O is not in the character set
    ],
)
def test_the_uscc_invariant_is_gb_32100(validator: Validator, code: str, valid: bool) -> None:
    org = _example("cn-organization-example")
    org["identifier"][0]["value"] = code
    failed = [e for e in _errors(validator, org, "cn-organization") if "cn-org-1" in e.diagnostics]
    assert (not failed) is valid


# -- the profiles' code lists against the CodeSystems they mirror --------------------------------
def _profile(profile_id: str) -> dict[str, Any]:
    return json.loads((PROFILES / f"structuredefinition-{profile_id}.json").read_text())


def _differential(profile_id: str) -> dict[str, dict[str, Any]]:
    return {e["id"]: e for e in _profile(profile_id)["differential"]["element"]}


def _codes(terminology: FileTerminology, cs_id: str) -> list[dict[str, Any]]:
    out = []
    todo = list(terminology.codesystems[f"{CN}/CodeSystem/{cs_id}"]["concept"])
    while todo:
        concept = todo.pop(0)
        out.append(concept)
        todo += concept.get("concept", [])
    return out


def test_the_tongue_dimensions_are_tcm_tongues_hierarchy(terminology: FileTerminology) -> None:
    view = CodeSystemView.from_resource(terminology.codesystems[f"{CN}/CodeSystem/tcm-tongue"])
    dimensions = {
        "bodyColour": "body-colour", "shape": "body-shape", "motility": "body-motility",
        "coatingColour": "coating-colour", "coatingTexture": "coating-texture",
        "sublingualVessels": "sublingual-vessels",
    }  # fmt: skip
    diff = _differential("tcm-tongue")
    for slice_name, group in dimensions.items():
        expression = diff[f"Observation.component:{slice_name}"]["constraint"][0]["expression"]
        listed = set(re.findall(r"'([a-z-]+)'", expression.split(" in ", 1)[1]))
        assert listed == set(view.closure(group, "below")) - {group}, slice_name


def test_task_status_invariant_follows_the_codesystem(validator: Validator, terminology: FileTerminology) -> None:
    statuses = ["draft", "requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress",
                "on-hold", "failed", "completed"]  # fmt: skip
    concepts = _codes(terminology, "consultation-task-status")
    assert concepts
    for concept in concepts:
        expected = next(p["valueCode"] for p in concept["property"] if p["code"] == "task-status")
        for status in statuses:
            task = _example("consultation-task-example-rejected")
            task["status"] = status
            task["businessStatus"]["coding"][0]["code"] = concept["code"]
            failed = any("cn-task-1" in e.diagnostics for e in _errors(validator, task, "consultation-task"))
            assert failed == (status != expected), (concept["code"], status)


def test_sliced_codes_are_the_codesystems(terminology: FileTerminology) -> None:
    def sliced(profile_id: str, system: str) -> set[str]:
        return {
            c["code"]
            for e in _profile(profile_id)["differential"]["element"]
            for c in e.get("patternCodeableConcept", {}).get("coding", [])
            if c.get("system") == system and "code" in c
        }

    points = {c["code"] for c in _codes(terminology, "tcm-meridian-point")}
    assert sliced("tcm-meridian-measurement", f"{CN}/CodeSystem/tcm-meridian-point") == points and len(points) == 24
    types = {c["code"] for c in _codes(terminology, "tcm-constitution")}
    assert sliced("tcm-constitution-assessment", f"{CN}/CodeSystem/tcm-constitution") == types == set("ABCDEFGHI")
    positions = {c["code"] for c in _codes(terminology, "tcm-pulse-position")}
    assert sliced("tcm-pulse", f"{CN}/CodeSystem/tcm-pulse-position") == positions
    observation_codes = {c["code"] for c in _codes(terminology, "tcm-observation-code")}
    for profile_id in ("tcm-tongue", "tcm-pulse", "tcm-meridian-measurement", "tcm-constitution-assessment"):
        assert sliced(profile_id, OC) <= observation_codes, profile_id
    # research §7: MDC lead codes = 131328 + lead number
    leads = sliced("ecg-observation", "urn:oid:2.16.840.1.113883.6.24")
    assert leads == {str(131328 + n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 61, 62, 63, 64)}


def test_inspection_and_listening_aspects_are_their_panels(terminology: FileTerminology) -> None:
    panels: dict[str, set[str]] = {}
    for concept in _codes(terminology, "tcm-observation-code"):
        props = {p["code"]: p.get("valueCode", p.get("valueString")) for p in concept.get("property", [])}
        if props.get("kind") == "component" and concept["code"].startswith(("inspection-", "listening-", "smelling-")):
            panels.setdefault(str(props.get("panel")), set()).add(concept["code"])
    for profile_id, panel, key in [
        ("tcm-inspection", "inspection", "cn-insp-2"),
        ("tcm-listening-smelling", "listening-smelling", "cn-list-2"),
    ]:
        constraint = next(c for c in _differential(profile_id)["Observation"]["constraint"] if c["key"] == key)
        assert set(re.findall(r"'([a-z-]+)'", constraint["expression"].split(" in ", 1)[1])) == panels[panel]


@pytest.mark.parametrize(
    ("code", "profile_id"),
    [
        ((OC, "constitution-assessment"), "tcm-constitution-assessment"),
        ((OC, "meridian-measurement"), "tcm-meridian-measurement"),
        ((LOINC, "11524-6"), "ecg-observation"),
    ],
)
def test_every_example_observation_of_the_kind_conforms(
    validator: Validator, code: tuple[str, str], profile_id: str
) -> None:
    """Including what the computations write ($assess-constitution, $interpret-meridian, aECG import),
    whose examples do not claim the profile: their output must meet it."""
    found = []
    for path in sorted(EXAMPLES.glob("*.json")):
        resource = json.loads(path.read_text())
        if resource.get("resourceType") != "Observation":
            continue
        if any((c.get("system"), c.get("code")) == code for c in resource["code"].get("coding", [])):
            found.append(path.name)
            assert _errors(validator, resource, profile_id) == [], path.name
    assert found
