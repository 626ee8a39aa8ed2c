"""``_summary`` / ``_elements`` shaping (fhir_server/rest/shaping.py) and the model's summary flags.

Spec: http://hl7.org/fhir/R4/search.html#summary and #elements; the summary marks (Σ) are those of
the R4 resource pages, e.g. http://hl7.org/fhir/R4/patient.html.
"""

from __future__ import annotations

import copy
import json

import pytest

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.model import get_model
from fhir_server.rest.shaping import SUBSETTED, check_params, parse_params, shape, shape_content
from tests.conftest import shared_data

TEXT = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'}


def _example(name: str) -> dict:
    resource = json.loads((shared_data("fhir", "r4-examples") / name).read_text())
    resource["text"] = TEXT  # the shared copies carry no narrative
    return resource


def _subsetted(resource: dict) -> list[dict]:
    return [t for t in resource["meta"].get("tag", []) if t.get("code") == "SUBSETTED"]


# -- the model's flags -------------------------------------------------------------------------
def test_model_summary_flags_of_patient_match_r4() -> None:
    elements = get_model().elements("Patient")
    summary = {name for name, e in elements.items() if e.summary}
    assert summary == {
        "id",
        "meta",
        "implicitRules",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "deceasedBoolean",
        "deceasedDateTime",
        "address",
        "managingOrganization",
        "link",
    }


def test_model_summary_flags_nested_and_types() -> None:
    model = get_model()
    assert model.element_at("Patient.link.other").summary
    assert model.element_at("Patient.contact.modifierExtension").summary
    assert not model.element_at("Patient.contact.name").summary
    assert not model.element_at("Patient.communication.language").summary  # mandatory, but not Σ
    assert model.element_at("Observation.component.valueQuantity").summary  # choice inside a backbone
    assert not model.element_at("Observation.referenceRange").summary
    assert model.element_at("Quantity.value").summary and model.element_at("SimpleQuantity.code").summary
    assert not model.element_at("HumanName.id").summary
    # restored by the generator (Medplum's copy has EvidenceVariable.characteristic in its R5 shape)
    assert model.element_at("EvidenceVariable.characteristic.definitionReference").summary
    assert not model.element_at("EvidenceVariable.characteristic.usageContext").summary


# -- shape(): each mode ------------------------------------------------------------------------
def test_summary_true_patient() -> None:
    patient = _example("patient-example.json")
    out = shape(patient, "true")
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "active",
        "name",
        "telecom",
        "gender",
        "birthDate",
        "_birthDate",  # the primitive's extension goes with it
        "deceasedBoolean",
        "address",
        "managingOrganization",
    }  # dropped: text, contact
    assert out["name"] == patient["name"] and out["address"] is patient["address"]
    assert _subsetted(out) == [SUBSETTED]
    assert out["meta"]["tag"][0]["code"] == "HTEST"  # existing tags kept


def test_summary_true_observation_keeps_mandatory_and_choice() -> None:
    obs = _example("observation-example-f001-glucose.json")
    out = shape(obs, "true")
    assert set(out) == {
        "resourceType",
        "id",
        "meta",
        "identifier",
        "status",
        "code",
        "subject",
        "effectivePeriod",
        "issued",
        "performer",
        "valueQuantity",
    }  # dropped: text, interpretation, referenceRange


def test_summary_true_keeps_complex_elements_whole() -> None:
    patient = {
        "resourceType": "Patient",
        "id": "x",
        "link": [
            {"other": {"reference": "Patient/y"}, "type": "seealso", "extension": [{"url": "u", "valueCode": "c"}]}
        ],
    }
    out = shape(patient, "true")
    assert out["link"] == patient["link"]  # Patient.link.extension is not Σ but stays: no nested trimming


def test_summary_text() -> None:
    assert set(shape(_example("patient-example.json"), "text")) == {"resourceType", "id", "meta", "text"}
    obs = shape(_example("observation-example-f001-glucose.json"), "text")
    assert set(obs) == {"resourceType", "id", "meta", "text", "status", "code"}  # status, code are 1..1
    assert _subsetted(obs) == [SUBSETTED]


def test_summary_data() -> None:
    patient = _example("patient-example.json")
    out = shape(patient, "data")
    assert set(out) == set(patient) - {"text"}
    assert "contact" in out
    assert _subsetted(out) == [SUBSETTED]


@pytest.mark.parametrize("summary", [None, "false"])
def test_no_shaping_returns_resource_unchanged(summary: str | None) -> None:
    patient = _example("patient-example.json")
    before = copy.deepcopy(patient)
    assert shape(patient, summary, None) == before
    assert not _subsetted(shape(patient, summary))


def test_elements() -> None:
    patient = _example("patient-example.json")
    out = shape(patient, None, ["birthDate", "gender"])
    assert set(out) == {"resourceType", "id", "meta", "birthDate", "_birthDate", "gender"}
    assert _subsetted(out) == [SUBSETTED]


def test_elements_choice_mandatory_qualified_and_unknown() -> None:
    obs = _example("observation-example-f001-glucose.json")
    assert set(shape(obs, None, ["value"])) == {"resourceType", "id", "meta", "status", "code", "valueQuantity"}
    assert set(shape(obs, None, ["valueQuantity", "nonsense", "name.given", "Patient.gender"])) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "valueQuantity",
    }
    assert set(shape(obs, None, ["Observation.issued", "value[x]"])) == {
        "resourceType",
        "id",
        "meta",
        "status",
        "code",
        "issued",
        "valueQuantity",
    }
    assert set(shape(obs, None, [])) == {"resourceType", "id", "meta", "status", "code"}


def test_input_is_not_mutated() -> None:
    patient = _example("patient-example.json")
    before = copy.deepcopy(patient)
    for summary, elements in [("true", None), ("text", None), ("data", None), (None, ["gender"])]:
        out = shape(patient, summary, elements)
        assert out is not patient and out["meta"] is not patient["meta"]
    assert patient == before


def test_tag_not_duplicated_and_meta_added_when_missing() -> None:
    once = shape(_example("patient-example.json"), "true")
    twice = shape(once, "true")
    assert len(_subsetted(twice)) == 1
    bare = shape({"resourceType": "Patient", "id": "a", "gender": "male", "contact": []}, "true")
    assert list(bare) == ["resourceType", "id", "meta", "gender"]
    assert bare["meta"] == {"tag": [SUBSETTED]}


def test_shape_content_parses_bytes_keeping_decimals() -> None:
    raw = b'{"resourceType":"Observation","id":"o","status":"final","code":{"text":"t"},"valueQuantity":{"value":1.50}}'
    out = shape_content(raw, None, ["value"])
    assert b'"value":1.50' in fjson.dumps(out)


def test_summary_true_on_every_r4_example_keeps_exactly_summary_and_mandatory() -> None:
    folder = shared_data("fhir", "r4-examples")
    model = get_model()
    checked = 0
    for path in sorted(folder.glob("*.json")):
        resource = json.loads(path.read_text())
        rtype = resource.get("resourceType")
        if rtype not in model.resource_types:
            continue
        elements = model.elements(rtype)
        wanted = {"meta"}  # always there: it carries the SUBSETTED tag
        for key in resource:
            if key in ("resourceType", "id", "_id"):
                wanted.add(key)
            elem = elements.get(key.removeprefix("_"))
            if elem is not None and (elem.summary or elem.min >= 1):
                wanted.add(key)
        out = shape(resource, "true")
        assert set(out) == wanted, path.name
        checked += 1
    assert checked > 500


# -- parameters --------------------------------------------------------------------------------
def test_parse_params() -> None:
    assert parse_params([]) == (None, None)
    assert parse_params([("_summary", "false")]) == (None, None)
    assert parse_params([("_summary", "true"), ("_format", "json")]) == ("true", None)
    assert parse_params([("_elements", "gender, birthDate"), ("_elements", "name,")]) == (
        None,
        ["gender", "birthDate", "name"],
    )
    assert parse_params([("_elements", "")]) == (None, None)
    assert parse_params([("_summary", "false"), ("_elements", "gender")]) == (None, ["gender"])
    assert parse_params([("_summary", "count")], allow_count=True) == ("count", None)


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ([("_summary", "yes")], "_summary must be one of"),
        ([("_summary", "count")], "searches only"),
        ([("_summary", "true"), ("_elements", "gender")], "cannot be used together"),
        ([("_elements", "gender"), ("_summary", "data")], "cannot be used together"),
        ([("_summary", "true"), ("_summary", "text")], "more than once"),
    ],
)
def test_parse_params_rejects(params: list[tuple[str, str]], message: str) -> None:
    with pytest.raises(FhirError) as info:
        parse_params(params)
    assert info.value.kind == "invalid-param" and info.value.status == 400
    assert message in info.value.diagnostics


def test_check_params() -> None:
    check_params("text", None)
    check_params(None, ["gender"])
    check_params("count", None, allow_count=True)
    with pytest.raises(FhirError):
        check_params("TRUE", None)
    with pytest.raises(ValueError):
        shape({"resourceType": "Patient"}, "count")
