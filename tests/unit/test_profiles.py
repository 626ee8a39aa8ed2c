"""Profiles: committed snapshots are current, the validator agrees with the base specification
on its examples, and our profiles accept their examples and reject broken variants."""

from __future__ import annotations

import copy
import importlib.util
import json
import pathlib
from typing import Any

import pytest
from conftest import shared_data

from fhir_server.validation.definitions import base_definition
from fhir_server.validation.profiles import Validator
from fhir_server.validation.snapshot import SnapshotError, generate

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
