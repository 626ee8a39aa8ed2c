"""Profiles: committed snapshots are current, the validator agrees with the base specification
on its examples, and our profiles accept their examples and reject broken variants."""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib
from typing import Any

import pytest

from fhir_server.validation.definitions import base_definition
from fhir_server.validation.profiles import Validator
from fhir_server.validation.snapshot import SnapshotError, generate
from tests.conftest import shared_data

ROOT = pathlib.Path(__file__).resolve().parents[2]
CN = "http://fhir.telefhir.cn/StructureDefinition/"


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_profiles", ROOT / "scripts" / "gen_profile_snapshots.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


@pytest.fixture(scope="module")
def validator() -> Validator:
    gen = _gen()
    resolve = gen.local_resolver(gen.profile_files())
    return Validator(resolve, lambda url, system, code: None)


def _example(name: str) -> dict[str, Any]:
    return json.loads((ROOT / "profiles" / "examples" / name).read_text())


def _errors(validator: Validator, resource: dict[str, Any], url: str) -> list[Any]:
    return [i for i in validator.validate(resource, url) if i.severity == "error"]


def test_committed_snapshots_are_current() -> None:
    gen = _gen()
    stale = [p.name for p, text in gen.regenerate().items() if p.read_text() != text]
    assert not stale, f"run: .venv/bin/python scripts/gen_profile_snapshots.py ({stale})"


def test_the_r4_examples_agree_with_the_base_specification(validator: Validator) -> None:
    folder = shared_data("fhir", "r4-examples")
    invalid = {}
    for path in sorted(folder.glob("*.json")):
        resource = json.loads(path.read_text())
        errors = _errors(validator, resource, f"http://hl7.org/fhir/StructureDefinition/{resource['resourceType']}")
        if errors:
            invalid[path.name] = [e.diagnostics for e in errors]
    # The one R4 example that breaks its own definition: DeviceMetric.parent may only refer to a
    # Device (the Java validator reports it too).
    assert list(invalid) == ["devicemetric-example.json"], invalid
    assert "Reference to DeviceDefinition is not allowed" in invalid["devicemetric-example.json"][0]


def test_cn_patient_example_is_valid(validator: Validator) -> None:
    assert _errors(validator, _example("cn-patient-example.json"), CN + "cn-patient") == []


@pytest.mark.parametrize(
    ("change", "expected", "where"),
    [
        (lambda p: p["identifier"][0].update(value="110105194912310021"), "cn-pat-1", "Patient.identifier[0]"),
        (lambda p: p["identifier"][0].update(value="11010519491231002"), "cn-pat-1", "Patient.identifier[0]"),
        (lambda p: p.update(gender="male"), "cn-pat-2", "Patient"),
        (lambda p: p.pop("name"), "minimum required = 1", "Patient.name"),
        (lambda p: p.pop("identifier"), "minimum required = 1", "Patient.identifier"),
        (lambda p: p["identifier"].append(dict(p["identifier"][0])), "allows at most 1", "Patient.identifier"),
        (
            lambda p: p["identifier"][0]["type"]["coding"][0].update(code="03"),
            "does not match the pattern",
            "Patient.identifier[0].type",
        ),
        (lambda p: p["extension"].append(copy.deepcopy(p["extension"][0])), "allows at most 1", "Patient.extension"),
        (
            lambda p: (
                p["extension"][1].update(valueString="浙江", valueAddress=None) or p["extension"][1].pop("valueAddress")
            ),
            "type String is not allowed",
            "Patient.extension[1].valueString",
        ),
    ],
)
def test_broken_cn_patients_are_rejected_with_their_location(
    validator: Validator, change: Any, expected: str, where: str
) -> None:
    patient = _example("cn-patient-example.json")
    change(patient)
    errors = _errors(validator, patient, CN + "cn-patient")
    assert any(expected in e.diagnostics and where in e.expression for e in errors), [
        (e.diagnostics, e.expression) for e in errors
    ]


def _profile(*elements: dict[str, Any], base: str = "Patient") -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/StructureDefinition/p",
        "type": base,
        "baseDefinition": f"http://hl7.org/fhir/StructureDefinition/{base}",
        "derivation": "constraint",
        "differential": {"element": [{"id": base, "path": base}, *elements]},
    }


@pytest.mark.parametrize(
    ("element", "message"),
    [
        ({"id": "Patient.gender", "path": "Patient.gender", "max": "2"}, "above the base"),
        ({"id": "Observation.status", "path": "Observation.status", "min": 0}, "must start with Patient"),
        ({"id": "Patient.colour", "path": "Patient.colour", "min": 1}, "not an element"),
        (
            {"id": "Patient.deceased[x]", "path": "Patient.deceased[x]", "type": [{"code": "string"}]},
            "type string is not allowed",
        ),
        ({"id": "Patient.name:x", "path": "Patient.name", "sliceName": "x"}, "is not sliced"),
    ],
)
def test_differentials_that_loosen_or_miss_their_base_are_refused(element: dict[str, Any], message: str) -> None:
    with pytest.raises(SnapshotError, match=message):
        generate(_profile(element), base_definition)


def test_type_specific_paths_narrow_a_choice() -> None:
    sd = _profile(
        {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity", "min": 1}, base="Observation"
    )
    value = next(e for e in generate(sd, base_definition) if e["id"] == "Observation.value[x]")
    assert value["min"] == 1 and [t["code"] for t in value["type"]] == ["Quantity"]


def test_a_slice_of_a_backbone_element_starts_with_the_sliced_elements_children() -> None:
    """Observation.component has no type definition to unroll children from: a slice copies them
    (with the constraints the sliced element's children already carry)."""
    sd = _profile(
        {
            "id": "Observation.component",
            "path": "Observation.component",
            "slicing": {"discriminator": [{"type": "value", "path": "code"}], "rules": "open"},
        },
        {"id": "Observation.component.value[x]", "path": "Observation.component.value[x]", "min": 1},
        {"id": "Observation.component:a", "path": "Observation.component", "sliceName": "a", "max": "1"},
        {
            "id": "Observation.component:a.code",
            "path": "Observation.component.code",
            "patternCodeableConcept": {"coding": [{"system": "http://example.org", "code": "a"}]},
        },
        base="Observation",
    )
    elements = {e["id"]: e for e in generate(sd, base_definition)}
    assert elements["Observation.component:a.code"]["patternCodeableConcept"]["coding"][0]["code"] == "a"
    assert elements["Observation.component:a.value[x]"]["min"] == 1  # inherited from the sliced element
    assert "patternCodeableConcept" not in elements["Observation.component.code"]


def test_invariants_on_elements_the_snapshot_does_not_unroll_are_checked() -> None:
    """A profile's constraint on a complex element without constrained children (a CodeableConcept)
    or on a primitive is evaluated on each value, not only constraints on unrolled elements."""
    sd = _profile(
        {
            "id": "Patient.maritalStatus",
            "path": "Patient.maritalStatus",
            "constraint": [{"key": "t-1", "severity": "error", "human": "coded", "expression": "coding.exists()"}],
        },
        {
            "id": "Patient.birthDate",
            "path": "Patient.birthDate",
            "constraint": [{"key": "t-2", "severity": "error", "human": "1900+", "expression": "$this >= @1900-01-01"}],
        },
    )
    sd["snapshot"] = {"element": generate(sd, base_definition)}
    validator = Validator(lambda url: sd if url == sd["url"] else base_definition(url), lambda *_: True)
    good = {"resourceType": "Patient", "maritalStatus": {"coding": [{"code": "M"}]}, "birthDate": "1950-01-01"}
    assert _errors(validator, good, sd["url"]) == []
    bad = {"resourceType": "Patient", "maritalStatus": {"text": "married"}, "birthDate": "1850-01-01"}
    found = {(e.diagnostics.split(" failed")[0], e.expression[0]) for e in _errors(validator, bad, sd["url"])}
    assert found == {("Invariant t-1", "Patient.maritalStatus"), ("Invariant t-2", "Patient.birthDate")}


def test_min_max_values_and_max_length_are_enforced() -> None:
    sd = _profile(
        {"id": "Observation.valueQuantity", "path": "Observation.valueQuantity", "min": 1},
        {
            "id": "Observation.value[x].value",
            "path": "Observation.value[x].value",
            "minValueDecimal": 0,
            "maxValueDecimal": 300,
        },
        {"id": "Observation.effective[x]", "path": "Observation.effective[x]", "minValueDateTime": "2000-01-01"},
        {"id": "Observation.code.text", "path": "Observation.code.text", "maxLength": 8},
        base="Observation",
    )
    sd["snapshot"] = {"element": generate(sd, base_definition)}
    v = Validator(lambda url: sd if url == sd["url"] else base_definition(url), lambda url, system, code: None)

    def errors(**changes: Any) -> list[str]:
        obs = {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "体重"},
            "valueQuantity": {"value": 70, "unit": "kg"},
            "effectiveDateTime": "2026-11-22",
            **changes,
        }
        return [i.diagnostics for i in v.validate(obs, sd["url"]) if i.severity == "error"]

    assert errors() == []
    assert any("above maxValue" in e for e in errors(valueQuantity={"value": 301, "unit": "kg"}))
    assert any("below minValue" in e for e in errors(valueQuantity={"value": -1, "unit": "kg"}))
    assert any("below minValue" in e for e in errors(effectiveDateTime="1999-12-31T23:00:00Z"))
    assert any("more than maxLength 8" in e for e in errors(code={"text": "a much longer code text"}))
