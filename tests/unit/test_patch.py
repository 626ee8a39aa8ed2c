"""Tests for ``fhir_server.patching``: HL7's official patch test cases plus our own error cases.

The official cases live in fhir-test-cases (r4/patch): ``json-patch-tests.json`` (RFC 6902)
and ``fhir-patch-tests.xml`` (FHIRPath Patch, resources in FHIR XML, converted with
``fhir_server.formats.xml.xml_to_json``). ``xml-patch-tests.xml`` (RFC 5261 XML Patch) is not
applicable: the server does not offer XML Patch (it answers 415, tested below).
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
from typing import Any

import pytest
from lxml import etree

from fhir_server.errors import FhirError
from fhir_server.patching import apply_fhirpath_patch, apply_json_patch, apply_patch

FHIR_DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir"
PATCH_CASES = FHIR_DATA / "fhir-test-cases" / "r4" / "patch"


def _require(path: pathlib.Path) -> pathlib.Path:
    if not path.exists():
        pytest.skip(f"official test data not found at {path}")
    return path


# --------------------------------------------------------------------------- official: JSON Patch


def _json_cases() -> list[Any]:
    path = PATCH_CASES / "json-patch-tests.json"
    if not path.exists():
        return [pytest.param(None, id="json-patch-tests-missing")]
    cases = json.loads(path.read_text(encoding="utf-8"))
    return [pytest.param(case, id=case["comment"]) for case in cases]


@pytest.mark.parametrize("case", _json_cases())
def test_official_json_patch(case: dict | None) -> None:
    if case is None:
        _require(PATCH_CASES / "json-patch-tests.json")
    doc = copy.deepcopy(case["doc"])
    if "error" in case:
        with pytest.raises(FhirError) as info:
            apply_json_patch(doc, case["patch"])
        assert info.value.status in (400, 422)
    else:
        assert apply_json_patch(doc, case["patch"]) == case["expected"]
    assert doc == case["doc"], "input must not be mutated"


# --------------------------------------------------------------------------- official: FHIRPath Patch


def _xml_resource(holder: etree._Element) -> dict:
    from fhir_server.formats.xml import xml_to_json

    (element,) = [child for child in holder if isinstance(child.tag, str)]
    return xml_to_json(etree.tostring(element))


def _fhirpath_cases() -> list[Any]:
    path = PATCH_CASES / "fhir-patch-tests.xml"
    if not path.exists():
        return [pytest.param(None, id="fhir-patch-tests-missing")]
    root = etree.parse(str(path)).getroot()
    return [pytest.param(case, id=case.get("name")) for case in root.iter("case")]


def _normalise_div(resource: Any) -> Any:
    """Compare narrative XHTML by canonical form, ignoring whitespace between tags."""
    if isinstance(resource, dict):
        out = {k: _normalise_div(v) for k, v in resource.items()}
        if isinstance(out.get("div"), str):
            canonical = etree.tostring(etree.fromstring(out["div"]), method="c14n").decode()
            out["div"] = re.sub(r">\s+<", "><", " ".join(canonical.split()))
        return out
    if isinstance(resource, list):
        return [_normalise_div(v) for v in resource]
    return resource


@pytest.mark.parametrize("case", _fhirpath_cases())
def test_official_fhirpath_patch(case: etree._Element | None) -> None:
    if case is None:
        _require(PATCH_CASES / "fhir-patch-tests.xml")
    source = _xml_resource(case.find("input"))
    parameters = _xml_resource(case.find("diff"))
    original = copy.deepcopy(source)
    error = case.find("error")
    if error is not None:
        with pytest.raises(FhirError) as info:
            apply_fhirpath_patch(source, parameters)
        assert info.value.kind == "processing"
        assert "No content found" in error.get("msg") and "no content found" in info.value.diagnostics
    else:
        result = apply_fhirpath_patch(source, parameters)
        assert _normalise_div(result) == _normalise_div(_xml_resource(case.find("output")))
    assert source == original, "input must not be mutated"


# --------------------------------------------------------------------------- helpers for own cases


def _op(op_type: str, path: str, **parts: Any) -> dict:
    """One ``operation`` parameter; ``value`` may be a (key, content) pair or a list of parts."""
    out = [{"name": "type", "valueCode": op_type}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "value" and isinstance(value, tuple):
            out.append({"name": "value", value[0]: value[1]})
        elif name == "value" and isinstance(value, list):
            out.append({"name": "value", "part": value})
        elif name == "name":
            out.append({"name": "name", "valueString": value})
        else:
            out.append({"name": name, "valueInteger": value})
    return {"name": "operation", "part": out}


def _params(*ops: dict) -> dict:
    return {"resourceType": "Parameters", "parameter": list(ops)}


PATIENT = {
    "resourceType": "Patient",
    "id": "p1",
    "name": [
        {"use": "official", "family": "Chalmers", "given": ["Peter", "James"]},
        {"use": "usual", "given": ["Jim"]},
    ],
    "birthDate": "1974-12-25",
    "_birthDate": {
        "extension": [
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                "valueDateTime": "1974-12-25T14:35:45-05:00",
            }
        ]
    },
    "deceasedBoolean": False,
}


def _patch(resource: dict, *ops: dict) -> dict:
    before = copy.deepcopy(resource)
    result = apply_fhirpath_patch(resource, _params(*ops))
    assert resource == before, "input must not be mutated"
    return result


def _fails(kind: str, resource: dict, *ops: dict) -> FhirError:
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(resource, _params(*ops))
    assert info.value.kind == kind, info.value.diagnostics
    return info.value


# --------------------------------------------------------------------------- own: FHIRPath Patch


def test_where_first_and_primitive_list_items() -> None:
    result = _patch(
        PATIENT,
        _op("replace", "Patient.name.where(use = 'official').given[1]", value=("valueString", "Jamie")),
        _op("delete", "Patient.name.first().given.first()"),
        _op("add", "Patient.name[1]", name="given", value=("valueString", "Jimmy")),
    )
    assert result["name"][0]["given"] == ["Jamie"]
    assert result["name"][1]["given"] == ["Jim", "Jimmy"]


def test_path_without_type_prefix() -> None:
    assert (
        _patch(PATIENT, _op("replace", "name[1].use", value=("valueCode", "nickname")))["name"][1]["use"] == "nickname"
    )


def test_primitive_extension_companion_follows_list_edits() -> None:
    resource = {"resourceType": "Patient", "name": [{"given": ["a", "b", "c"], "_given": [None, {"id": "x"}, None]}]}
    moved = _patch(resource, _op("move", "Patient.name[0].given", source=1, destination=0))
    assert moved["name"][0] == {"given": ["b", "a", "c"], "_given": [{"id": "x"}, None, None]}
    deleted = _patch(resource, _op("delete", "Patient.name[0].given[1]"))
    assert deleted["name"][0] == {"given": ["a", "c"]}
    inserted = _patch(resource, _op("insert", "Patient.name[0].given", index=0, value=("valueString", "z")))
    assert inserted["name"][0] == {"given": ["z", "a", "b", "c"], "_given": [None, None, {"id": "x"}, None]}


def test_delete_primitive_removes_its_extensions_and_replace_drops_them() -> None:
    assert "_birthDate" not in _patch(PATIENT, _op("delete", "Patient.birthDate"))
    replaced = _patch(PATIENT, _op("replace", "Patient.birthDate", value=("valueDate", "1975-01-01")))
    assert replaced["birthDate"] == "1975-01-01" and "_birthDate" not in replaced


def test_extension_of_primitive_is_addressable() -> None:
    result = _patch(PATIENT, _op("delete", "Patient.birthDate.extension[0]"))
    assert result["birthDate"] == "1974-12-25" and "_birthDate" not in result
    added = _patch(
        PATIENT,
        _op(
            "add",
            "Patient.name[0].family",
            name="extension",
            value=[{"name": "url", "valueUri": "http://example.org/x"}, {"name": "valueString", "valueString": "y"}],
        ),
    )
    assert added["name"][0]["_family"] == {"extension": [{"url": "http://example.org/x", "valueString": "y"}]}


def test_choice_elements() -> None:
    replaced = _patch(PATIENT, _op("replace", "Patient.deceased", value=("valueDateTime", "2020-01-01")))
    assert replaced["deceasedDateTime"] == "2020-01-01" and "deceasedBoolean" not in replaced
    added = _patch({"resourceType": "Patient"}, _op("add", "Patient", name="deceased", value=("valueBoolean", True)))
    assert added == {"resourceType": "Patient", "deceasedBoolean": True}
    obs = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueQuantity": {"value": 1}}
    assert _patch(obs, _op("replace", "Observation.value.value", value=("valueDecimal", 2)))["valueQuantity"] == {
        "value": 2
    }


def test_anonymous_type_with_repeating_children_and_contained_resource() -> None:
    result = _patch(
        {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        _op(
            "add",
            "Observation",
            name="component",
            value=[
                {"name": "code", "valueCodeableConcept": {"text": "c"}},
                {"name": "interpretation", "valueCodeableConcept": {"text": "i1"}},
                {"name": "interpretation", "valueCodeableConcept": {"text": "i2"}},
                {"name": "value", "valueQuantity": {"value": 3}},
            ],
        ),
        {
            "name": "operation",
            "part": [
                {"name": "type", "valueCode": "add"},
                {"name": "path", "valueString": "Observation"},
                {"name": "name", "valueString": "contained"},
                {"name": "value", "resource": {"resourceType": "Patient", "id": "c1"}},
            ],
        },
    )
    assert result["component"] == [
        {"code": {"text": "c"}, "interpretation": [{"text": "i1"}, {"text": "i2"}], "valueQuantity": {"value": 3}}
    ]
    assert result["contained"] == [{"resourceType": "Patient", "id": "c1"}]
    patched = _patch(result, _op("replace", "Observation.contained.ofType(Patient).id", value=("valueId", "c2")))
    assert patched["contained"][0]["id"] == "c2"


def test_insert_into_absent_list() -> None:
    result = _patch(
        {"resourceType": "Patient"},
        _op("insert", "Patient.identifier", index=0, value=("valueIdentifier", {"value": "1"})),
    )
    assert result["identifier"] == [{"value": "1"}]
    _fails(
        "processing",
        {"resourceType": "Patient"},
        _op("insert", "Patient.identifier", index=1, value=("valueIdentifier", {"value": "1"})),
    )


def test_delete_of_missing_element_is_a_no_op() -> None:
    assert _patch(PATIENT, _op("delete", "Patient.maritalStatus")) == PATIENT


def test_multiple_matches_are_rejected_with_operation_number() -> None:
    error = _fails("processing", PATIENT, _op("delete", "Patient.birthDate"), _op("delete", "Patient.name.given"))
    assert "operation 2" in error.diagnostics and "Patient.name.given" in error.diagnostics
    assert error.issues[0].expression == ["Parameters.parameter[1]"]
    _fails("processing", PATIENT, _op("replace", "Patient.name", value=("valueHumanName", {"text": "x"})))
    _fails("processing", PATIENT, _op("add", "Patient.name", name="text", value=("valueString", "x")))


def test_missing_targets_and_bad_indexes() -> None:
    _fails("processing", PATIENT, _op("replace", "Patient.gender", value=("valueCode", "male")))
    _fails("processing", PATIENT, _op("add", "Patient.contact[0]", name="gender", value=("valueCode", "male")))
    _fails("processing", PATIENT, _op("move", "Patient.name", source=0, destination=2))
    _fails("processing", PATIENT, _op("insert", "Patient.name", index=3, value=("valueHumanName", {"text": "x"})))
    _fails("processing", PATIENT, _op("insert", "Patient.birthDate", index=0, value=("valueDate", "2000")))


def test_type_and_element_checks() -> None:
    _fails("processing", PATIENT, _op("add", "Patient", name="birthDate", value=("valueDate", "2000-01-01")))
    _fails("processing", PATIENT, _op("add", "Patient", name="nonsense", value=("valueString", "x")))
    _fails("processing", PATIENT, _op("replace", "Patient.birthDate", value=("valueCoding", {"code": "x"})))
    _fails("processing", PATIENT, _op("add", "Patient", name="maritalStatus", value=("valueCoding", {"code": "M"})))
    _fails("processing", PATIENT, _op("delete", "Patient"))
    _fails("processing", PATIENT, _op("replace", "'abc'", value=("valueString", "x")))


@pytest.mark.parametrize(
    "parameters",
    [
        {"resourceType": "Patient"},
        [],
        {"resourceType": "Parameters", "parameter": {}},
        _params({"name": "other", "part": []}),
        _params(_op("frobnicate", "Patient")),
        _params({"name": "operation", "part": [{"name": "path", "valueString": "Patient"}]}),
        _params(_op("add", "Patient", value=("valueDate", "2000"))),  # no name
        _params(_op("insert", "Patient.name", value=("valueHumanName", {}))),  # no index
        _params(_op("move", "Patient.name", source=0)),  # no destination
        _params(_op("replace", "Patient.birthDate")),  # no value
        _params(_op("delete", "Patient.name[")),  # FHIRPath syntax error
        _params(_op("delete", "Patient.name x")),  # trailing text
        _params(_op("delete", "")),
        _params(
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "delete"},
                    {"name": "path", "valueString": "Patient"},
                    {"name": "bogus", "valueString": "x"},
                ],
            }
        ),
        _params(
            {
                "name": "operation",
                "part": [
                    {"name": "type", "valueCode": "move"},
                    {"name": "path", "valueString": "Patient.name"},
                    {"name": "source", "valueString": "0"},
                    {"name": "destination", "valueInteger": 1},
                ],
            }
        ),
    ],
)
def test_malformed_parameters_are_bad_requests(parameters: Any) -> None:
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(copy.deepcopy(PATIENT), parameters)
    assert info.value.kind == "bad-request", info.value.diagnostics
    assert info.value.status == 400


def test_value_part_needs_exactly_one_content() -> None:
    op = _op("replace", "Patient.birthDate", value=("valueDate", "2000"))
    op["part"][-1]["valueString"] = "2000"
    with pytest.raises(FhirError) as info:
        apply_fhirpath_patch(PATIENT, _params(op))
    assert info.value.kind == "bad-request"


def test_result_shares_nothing_with_the_parameters() -> None:
    parameters = _params(_op("add", "Patient", name="maritalStatus", value=("valueCodeableConcept", {"text": "M"})))
    result = apply_fhirpath_patch(PATIENT, parameters)
    result["maritalStatus"]["text"] = "changed"
    assert parameters["parameter"][0]["part"][-1]["valueCodeableConcept"] == {"text": "M"}


# --------------------------------------------------------------------------- own: JSON Patch


def test_json_patch_does_not_mutate_input_or_share_values() -> None:
    ops = [{"op": "add", "path": "/maritalStatus", "value": {"text": "M"}}, {"op": "remove", "path": "/name/1"}]
    before = copy.deepcopy(PATIENT)
    result = apply_json_patch(PATIENT, ops)
    assert PATIENT == before
    assert len(result["name"]) == 1 and result["maritalStatus"] == {"text": "M"}
    result["maritalStatus"]["text"] = "x"
    assert ops[0]["value"] == {"text": "M"}


@pytest.mark.parametrize(
    "ops",
    [
        {"op": "add", "path": "/a", "value": 1},
        ["add"],
        [{"op": "frobnicate", "path": "/a"}],
        [{"path": "/a", "value": 1}],
        [{"op": "add", "value": 1}],
        [{"op": "add", "path": "/a"}],
        [{"op": "move", "path": "/a"}],
        [{"op": "add", "path": "a", "value": 1}],
        [{"op": "replace", "path": 7, "value": 1}],
    ],
)
def test_json_patch_malformed_is_bad_request(ops: Any) -> None:
    with pytest.raises(FhirError) as info:
        apply_json_patch(PATIENT, ops)
    assert info.value.kind == "bad-request", info.value.diagnostics


@pytest.mark.parametrize(
    "ops",
    [
        [{"op": "test", "path": "/birthDate", "value": "1900-01-01"}],
        [{"op": "test", "path": "/deceasedBoolean", "value": 0}],  # false is not 0
        [{"op": "test", "path": "/gender", "value": "male"}],
        [{"op": "remove", "path": "/gender"}],
        [{"op": "replace", "path": "/name/5", "value": {}}],
        [{"op": "add", "path": "/contact/0/gender", "value": "male"}],
        [{"op": "replace", "path": "", "value": []}],
    ],
)
def test_json_patch_not_applicable_is_processing(ops: list) -> None:
    with pytest.raises(FhirError) as info:
        apply_json_patch(PATIENT, ops)
    assert info.value.kind == "processing", info.value.diagnostics
    assert info.value.status == 422


def test_json_patch_test_numbers_compare_numerically() -> None:
    resource = {"resourceType": "Observation", "valueQuantity": {"value": 1.0}}
    assert apply_json_patch(resource, [{"op": "test", "path": "/valueQuantity/value", "value": 1}]) == resource


# --------------------------------------------------------------------------- own: dispatch


def test_apply_patch_dispatches_on_content_type() -> None:
    json_patch = b'[{"op": "replace", "path": "/birthDate", "value": "1980-01-01"}]'
    assert apply_patch(PATIENT, "application/json-patch+json", json_patch)["birthDate"] == "1980-01-01"
    assert apply_patch(PATIENT, "application/json", json_patch)["birthDate"] == "1980-01-01"
    body = json.dumps(_params(_op("replace", "Patient.birthDate", value=("valueDate", "1981-01-01")))).encode()
    for content_type in ("application/fhir+json", "application/fhir+json; charset=utf-8", "application/json"):
        assert apply_patch(PATIENT, content_type, body)["birthDate"] == "1981-01-01"


def test_apply_patch_fhir_xml() -> None:
    pytest.importorskip("fhir_server.formats.xml")
    body = b"""<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="operation"/>
      <part><name value="type"/><valueCode value="replace"/></part>
      <part><name value="path"/><valueString value="Patient.birthDate"/></part>
      <part><name value="value"/><valueDate value="1982-01-01"/></part></parameter></Parameters>"""
    assert apply_patch(PATIENT, "application/fhir+xml", body)["birthDate"] == "1982-01-01"
    assert apply_patch(PATIENT, "application/xml", body)["birthDate"] == "1982-01-01"


@pytest.mark.parametrize(
    ("content_type", "body", "kind"),
    [
        ("application/xml-patch+xml", b"<diff/>", "unsupported-media"),
        ("text/plain", b"x", "unsupported-media"),
        ("", b"[]", "unsupported-media"),
        ("application/fhir+json", b'{"resourceType": "Patient"}', "bad-request"),
        ("application/fhir+json", b"[]", "bad-request"),
        ("application/fhir+json", b"{not json", "malformed"),
        ("application/json-patch+json", b"{}", "bad-request"),
    ],
)
def test_apply_patch_rejects(content_type: str, body: bytes, kind: str) -> None:
    with pytest.raises(FhirError) as info:
        apply_patch(PATIENT, content_type, body)
    assert info.value.kind == kind
