"""Search parameter definitions, FHIRPath extraction and index-row normalisation.

Covers ``scripts/gen_r4_search_parameters.py`` output (against the official R4 file when present),
``fhir_server.search.hashing``, ``.expression`` (compared with fhirpathpy on the R4 examples and
Synthea bundles), ``.registry`` and ``.index``.
"""

from __future__ import annotations

import bz2
import glob
import gzip
import json
import pathlib
import re
import time
from datetime import UTC
from decimal import Decimal
from hashlib import blake2b
from typing import Any

import orjson
import pytest

from fhir_server.formats.json import FhirDecimal, loads
from fhir_server.search import hashing
from fhir_server.search.expression import (
    compile_expression,
    expression_for_type,
    fhirpathpy_compile,
    reference_type,
)
from fhir_server.search.index import (
    DATE_MAX,
    DATE_MIN,
    NUM_MAX,
    NUM_MIN,
    ROW_TYPES,
    RefTarget,
    date_range,
    index_rows,
    normalize_string,
    number_range,
    parse_reference,
)
from fhir_server.search.registry import DEFINITIONS_FILE, Registry, get_registry
from fhir_server.storage.schema import INDEX_TABLES
from tests.conftest import SHARED_DATA

DATA = SHARED_DATA / "fhir"
OFFICIAL = DATA / "r4-definitions"
EXAMPLES = DATA / "r4-examples"
SYNTHEA = DATA / "synthea"

needs_examples = pytest.mark.skipif(not EXAMPLES.is_dir(), reason=f"{EXAMPLES} not present")
needs_synthea = pytest.mark.skipif(not SYNTHEA.is_dir(), reason=f"{SYNTHEA} not present")


def us(text: str) -> int:
    """µs since epoch of a full UTC timestamp like 2020-01-01T00:00:00.000000Z (test helper)."""
    from datetime import datetime, timedelta

    dt = datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    return (dt - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.fixture(scope="module")
def reg() -> Registry:
    return get_registry()


def rows_for(resource: dict, reg: Registry, code: str, table: str) -> list[dict]:
    sp = reg.get(resource["resourceType"], code)
    assert sp is not None, code
    return [r for r in index_rows(resource, registry=reg)[table] if r.sp == sp.sp]


# ----------------------------------------------------------------------------- definitions


def _generated() -> dict:
    with gzip.open(DEFINITIONS_FILE, "rt", encoding="utf-8") as fh:
        return json.load(fh)


def test_generated_file_shape() -> None:
    doc = _generated()
    params = doc["searchParameters"]
    assert doc["fhirVersion"] == "4.0.1"
    assert len(params) == 1375
    assert all({"url", "code", "base", "type"} <= p.keys() for p in params)
    assert not any(p["url"].endswith(("DetectedIssue-status", "DeviceDefinition-classification")) for p in params)
    patient = doc["compartments"][0]
    assert patient["code"] == "Patient"
    assert patient["resource"]["Observation"] == ["subject", "performer"]


@pytest.mark.skipif(not OFFICIAL.is_dir(), reason=f"{OFFICIAL} not present")
def test_generated_matches_official_definitions() -> None:
    official = json.loads((OFFICIAL / "search-parameters.json").read_text())
    ours = {p["url"]: p for p in _generated()["searchParameters"]}
    theirs = {e["resource"]["url"]: e["resource"] for e in official["entry"]}
    assert ours.keys() == theirs.keys()
    for url, o in theirs.items():
        mine = ours[url]
        for key in ("code", "type", "expression", "base", "target", "multipleOr", "comparator"):
            assert mine.get(key) == o.get(key), (url, key)
        assert [c["expression"] for c in mine.get("component", [])] == [c["expression"] for c in o.get("component", [])]

    cd = json.loads((OFFICIAL / "compartmentdefinition-patient.json").read_text())
    members = {r["code"]: r["param"] for r in cd["resource"] if r.get("param")}
    assert _generated()["compartments"][0]["resource"] == members


# ----------------------------------------------------------------------------- hashing


def test_hash64_is_signed_blake2b() -> None:
    digest = blake2b(b"Patient.name", digest_size=8).digest()
    assert hashing.sp_hash("Patient", "name") == int.from_bytes(digest, "big", signed=True)
    values = [hashing.hash64(str(i)) for i in range(200)]
    assert all(-(2**63) <= v < 2**63 for v in values)
    assert any(v < 0 for v in values)


def test_token_hashes_distinguish_no_system_from_empty() -> None:
    sp = hashing.sp_hash("Observation", "code")
    h_code, h_sys_code, h_sys = hashing.token_hashes(sp, "http://loinc.org", "1234-5")
    assert h_code == hashing.hash64(f"{sp}|1234-5") == hashing.h_code(sp, "1234-5")
    assert h_sys_code == hashing.hash64(f"{sp}|http://loinc.org|1234-5")
    assert h_sys == hashing.hash64(f"{sp}|http://loinc.org|")
    assert hashing.token_hashes(sp, None, "x")[1] != hashing.token_hashes(sp, "", "x")[1]
    assert hashing.token_hashes(sp, None, "x")[0] == hashing.token_hashes(sp, "a", "x")[0]
    assert hashing.h_sys_code(sp, None, "x") == hashing.token_hashes(sp, None, "x")[1]
    assert hashing.h_sys(sp, "s") == hashing.token_hashes(sp, "s", None)[2]


# ----------------------------------------------------------------------------- expression compiler


def values(expr: str, resource: dict) -> list[tuple[Any, str]]:
    compiled = compile_expression(expr, resource["resourceType"])
    assert compiled.compiled, compiled.error
    return compiled.extract(resource)


def test_choice_types_and_as() -> None:
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {"value": 5, "unit": "mg"},
        "effectivePeriod": {"start": "2020"},
        "component": [{"valueCodeableConcept": {"text": "x"}}, {"valueQuantity": {"value": 1}}],
    }
    assert values("Observation.value", obs) == [({"value": 5, "unit": "mg"}, "Quantity")]
    assert values("Observation.effective", obs) == [({"start": "2020"}, "Period")]
    assert values("(Observation.value as CodeableConcept)", obs) == []
    got = values("(Observation.value as Quantity) | (Observation.component.value as Quantity)", obs)
    assert sorted(v["value"] for v, _ in got) == [1, 5]
    assert values("Observation.component.value.ofType(CodeableConcept).text", obs) == [("x", "string")]
    assert values("Observation.component.value.as(CodeableConcept)", obs) == [({"text": "x"}, "CodeableConcept")]
    cond = {"resourceType": "Condition", "onsetAge": {"value": 3}}
    assert values("Condition.onset.as(Age) | Condition.onset.as(Range)", cond) == [({"value": 3}, "Age")]
    assert compile_expression("Condition.onset as Quantity", "Condition").value_types == {"Age"}


def test_primitive_arrays_and_extension_only_primitives() -> None:
    pat = {
        "resourceType": "Patient",
        "name": [{"given": ["A", None, "C"], "_given": [None, {"extension": []}, None]}],
        "_birthDate": {"extension": [{"url": "x", "valueCode": "unknown"}]},
    }
    assert values("Patient.name.given", pat) == [("A", "string"), ("C", "string")]
    assert values("Patient.birthDate", pat) == []


def test_where_resolve_and_equality_filters() -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/1"},
        "performer": [
            {"reference": "Practitioner/2"},
            {"reference": "http://x.org/fhir/Patient/3/_history/1"},
            {"reference": "urn:uuid:abc", "type": "Patient"},
            {"reference": "urn:uuid:def"},
            {"reference": "#contained"},
        ],
    }
    got = values("Observation.performer.where(resolve() is Patient)", obs)
    assert [v["reference"] for v, _ in got] == ["http://x.org/fhir/Patient/3/_history/1", "urn:uuid:abc"]
    assert reference_type({"reference": "Group/1/_history/2"}) == "Group"
    assert reference_type({"reference": "#x"}) is None
    pat = {
        "resourceType": "Patient",
        "telecom": [{"system": "phone", "value": "1"}, {"system": "email", "value": "a@b"}],
    }
    assert values("Patient.telecom.where(system='email')", pat) == [
        ({"system": "email", "value": "a@b"}, "ContactPoint")
    ]


def test_boolean_expression_patient_deceased() -> None:
    expr = "Patient.deceased.exists() and Patient.deceased != false"
    assert values(expr, {"resourceType": "Patient"}) == [(False, "boolean")]
    assert values(expr, {"resourceType": "Patient", "deceasedBoolean": False}) == [(False, "boolean")]
    assert values(expr, {"resourceType": "Patient", "deceasedBoolean": True}) == [(True, "boolean")]
    assert values(expr, {"resourceType": "Patient", "deceasedDateTime": "2020"}) == [(True, "boolean")]


def test_extension_index_and_resource_paths() -> None:
    pat = {
        "resourceType": "Patient",
        "extension": [
            {"url": "http://e/race", "valueCoding": {"code": "x"}},
            {"url": "http://e/other", "valueString": "no"},
        ],
    }
    assert values("Patient.extension('http://e/race').value", pat) == [({"code": "x"}, "Coding")]
    assert values("Patient.extension.where(url='http://e/other').value", pat) == [("no", "string")]
    bundle = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Composition", "id": "c"}}, {}]}
    assert values("Bundle.entry[0].resource", bundle) == [({"resourceType": "Composition", "id": "c"}, "Resource")]
    assert values("Bundle.entry.resource.ofType(Composition).id", bundle) == [("c", "id")]
    assert values("Resource.meta.tag", {"resourceType": "Patient", "meta": {"tag": [{"code": "t"}]}}) == [
        ({"code": "t"}, "Coding")
    ]


def test_fallback_to_fhirpathpy() -> None:
    compiled = compile_expression("Patient.name.given.first().substring(0, 1)", "Patient")
    assert not compiled.compiled and compiled.error
    assert compiled.extract({"resourceType": "Patient", "name": [{"given": ["Zed"]}]}) == [("Z", "string")]


def test_expression_for_type() -> None:
    expr = "AllergyIntolerance.code | (MedicationDispense.medication as CodeableConcept) | Condition.code"
    assert expression_for_type(expr, "Condition") == "Condition.code"
    assert expression_for_type(expr, "MedicationDispense") == "(MedicationDispense.medication as CodeableConcept)"
    assert expression_for_type(expr, "Patient") is None
    assert expression_for_type("Resource.meta.tag", "Patient") == "Resource.meta.tag"


# ----------------------------------------------------------------------------- registry


def test_registry_lookup(reg: Registry) -> None:
    name = reg.get("Patient", "name")
    assert name is not None and name.type == "string" and name.indexed
    assert name.sp == hashing.sp_hash("Patient", "name")
    tag = reg.get("Patient", "_tag")
    assert tag is not None and tag.type == "token" and tag.indexed and tag.sp == hashing.sp_hash("Patient", "_tag")
    assert reg.get("Patient", "_id") is not None and not reg.get("Patient", "_id").indexed  # type: ignore[union-attr]
    assert not reg.get("Patient", "_lastUpdated").indexed  # type: ignore[union-attr]
    assert reg.get("Bundle", "_text") is None and reg.get("Bundle", "_tag") is not None
    combo = reg.get("Observation", "code-value-quantity")
    assert combo is not None and combo.type == "composite" and combo.indexed and len(combo.components) == 2
    subject = reg.get("Observation", "subject")
    assert subject is not None and "Patient" in subject.targets
    assert reg.get("Observation", "patient").expression == "Observation.subject.where(resolve() is Patient)"  # type: ignore[union-attr]
    assert reg.get("Nope", "x") is None and reg.params_for("Nope") == []
    assert {p.code for p in reg.params_for("Patient")} >= {"name", "birthdate", "_profile", "_security", "_source"}
    assert reg.compartment_params("Patient", "Encounter") == ("patient",)
    common = reg.common("_tag")
    assert len(common) == len(reg.resource_types) and all(p.code == "_tag" for _t, p in common)
    assert reg.common("name") == []
    assert reg.compartment_params("Patient", "Observation") == ("subject", "performer")


def test_all_r4_expressions_compile_without_fallback(reg: Registry) -> None:
    stats = reg.stats()
    assert stats["fallback"] == 0, stats
    assert stats["indexed"] > 2000


def test_registry_add_custom_parameter() -> None:
    reg = Registry()
    added = reg.add(
        {
            "resourceType": "SearchParameter",
            "url": "http://example.org/SearchParameter/patient-race",
            "code": "race",
            "base": ["Patient"],
            "type": "token",
            "expression": "Patient.extension('http://e/race').value.coding",
        }
    )
    assert [p.code for p in added] == ["race"] and added[0].custom and added[0].compiled
    pat = {
        "resourceType": "Patient",
        "extension": [{"url": "http://e/race", "valueCodeableConcept": {"coding": [{"system": "s", "code": "c"}]}}],
    }
    rows = rows_for(pat, reg, "race", "idx_token")
    assert [(r.system, r.code) for r in rows] == [("s", "c")]

    everywhere = reg.add(
        {"code": "ver", "base": ["Resource"], "type": "token", "expression": "Resource.meta.versionId"}
    )
    assert len(everywhere) == len(reg.resource_types)
    with pytest.raises(ValueError):
        reg.add({"code": "x", "base": ["NotAType"], "type": "token"})
    with pytest.raises(ValueError):
        reg.add({"code": "x", "base": ["Patient"], "type": "bogus"})


# ----------------------------------------------------------------------------- normalisation


def test_normalize_string() -> None:
    assert normalize_string("  Élodie   MÜLLER\tStraße ") == "elodie muller strasse"
    assert normalize_string("Chalmers") == "chalmers"
    assert normalize_string("x" * 300) == "x" * 255
    assert normalize_string("张无忌") == "张无忌"


def test_date_ranges() -> None:
    assert date_range("2020") == (us("2020-01-01T00:00:00.000000Z"), us("2020-12-31T23:59:59.999999Z"))
    assert date_range("2020-02") == (us("2020-02-01T00:00:00.000000Z"), us("2020-02-29T23:59:59.999999Z"))
    assert date_range("2019-12") == (us("2019-12-01T00:00:00.000000Z"), us("2019-12-31T23:59:59.999999Z"))
    assert date_range("2021-03-04") == (us("2021-03-04T00:00:00.000000Z"), us("2021-03-04T23:59:59.999999Z"))
    assert date_range("2021-03-04T10:20:30Z") == (us("2021-03-04T10:20:30.000000Z"), us("2021-03-04T10:20:30.999999Z"))
    assert date_range("2021-03-04T10:20:30.5+02:00") == (
        us("2021-03-04T08:20:30.500000Z"),
        us("2021-03-04T08:20:30.599999Z"),
    )
    assert date_range("2021-03-04T10:20:30.123456789-05:00")[0] == us("2021-03-04T15:20:30.123456Z")  # type: ignore[index]
    assert date_range("2021-03-04T10:20:30") == (us("2021-03-04T10:20:30.000000Z"), us("2021-03-04T10:20:30.999999Z"))
    assert date_range("1969-12-31")[0] == -86_400_000_000  # type: ignore[index]
    for bad in ("2021-02-30", "2021-13", "20", "not a date", "2021-01-01T25:00:00Z"):
        assert date_range(bad) is None, bad
    assert DATE_MIN == us("0001-01-01T00:00:00.000000Z") and DATE_MAX == us("9999-12-31T23:59:59.999999Z")


def test_number_ranges() -> None:
    assert number_range(100) == (100.0, 99.5, 100.5)
    v, lo, hi = number_range(FhirDecimal("1.50"))  # type: ignore[misc]
    assert v == 1.5 and lo == pytest.approx(1.495) and hi == pytest.approx(1.505)
    assert number_range(6.3)[1:] == pytest.approx((6.25, 6.35))  # type: ignore[index]
    assert number_range(Decimal("1e3"))[1:] == pytest.approx((500.0, 1500.0))  # type: ignore[index]
    assert number_range(True) is None and number_range("abc") is None


def test_parse_reference() -> None:
    types = get_registry().resource_types
    assert parse_reference("Patient/123", types) == RefTarget("Patient", "123", None, None)
    assert parse_reference("Patient/123/_history/4", types) == RefTarget("Patient", "123", "4", None)
    absolute = parse_reference("http://x.org/fhir/Observation/a-1", types)
    assert absolute == RefTarget("Observation", "a-1", None, "http://x.org/fhir/Observation/a-1")
    assert parse_reference("urn:uuid:1234", types) == RefTarget(None, None, None, "urn:uuid:1234")
    assert parse_reference("#c1", types) is None
    assert parse_reference("http://x.org/other", types) == RefTarget(None, None, None, "http://x.org/other")
    assert parse_reference("Unknown/1", types) == RefTarget(None, None, None, "Unknown/1")


def test_row_types_match_the_index_tables() -> None:
    for table, row_type in ROW_TYPES.items():
        assert row_type._fields == tuple(c.name for c in INDEX_TABLES[table].columns)


def test_token_rows_for_each_type(reg: Registry) -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "1-8", "display": "Ácid"}, {"code": "local"}],
            "text": "Acid Test",
        },
        "identifier": [
            {
                "system": "urn:sys",
                "value": "v1",
                "type": {"text": "MR", "coding": [{"system": "http://t", "code": "MR"}]},
            }
        ],
        "category": [{"text": "only text"}],
    }
    code_rows = rows_for(obs, reg, "code", "idx_token")
    assert {(r.system, r.code, r.text) for r in code_rows} == {
        ("http://loinc.org", "1-8", "acid"),
        (None, "local", None),
        (None, None, "acid test"),
    }
    row = next(r for r in code_rows if r.code == "1-8")
    assert (row.h_code, row.h_sys_code, row.h_sys) == hashing.token_hashes(row.sp, "http://loinc.org", "1-8")
    status = rows_for(obs, reg, "status", "idx_token")
    assert [(r.system, r.code) for r in status] == [("http://hl7.org/fhir/observation-status", "final")]
    ident = rows_for(obs, reg, "identifier", "idx_token")
    assert [(r.system, r.code, r.text) for r in ident] == [("urn:sys", "v1", "mr")]
    of_type_sp = hashing.modifier_sp("Observation", "identifier", "of-type")
    of_type = [r for r in index_rows(obs, registry=reg)["idx_token"] if r.sp == of_type_sp]
    assert [(r.system, r.code) for r in of_type] == [(None, "http://t|MR|v1")]
    assert [(r.code, r.text) for r in rows_for(obs, reg, "category", "idx_token")] == [(None, "only text")]

    pat = {"resourceType": "Patient", "active": True, "telecom": [{"system": "phone", "value": "555", "use": "home"}]}
    assert [(r.system, r.code) for r in rows_for(pat, reg, "active", "idx_token")] == [(None, "true")]
    assert [(r.system, r.code) for r in rows_for(pat, reg, "phone", "idx_token")] == [(None, "555")]
    assert [(r.system, r.code) for r in rows_for(pat, reg, "telecom", "idx_token")] == [(None, "555")]
    assert [r.code for r in rows_for(pat, reg, "deceased", "idx_token")] == ["false"]


def test_string_rows_for_name_and_address(reg: Registry) -> None:
    pat = {
        "resourceType": "Patient",
        "name": [
            {
                "family": "Dúbois",
                "given": ["Jean", "Luc"],
                "prefix": ["Dr"],
                "text": "Dr Jean-Luc Dúbois",
                "use": "official",
            }
        ],
        "address": [{"line": ["1 Rue X"], "city": "Paris", "postalCode": "75001", "country": "FR", "use": "home"}],
    }
    names = {(r.value, r.exact) for r in rows_for(pat, reg, "name", "idx_string")}
    assert names == {
        ("dubois", "Dúbois"),
        ("jean", "Jean"),
        ("luc", "Luc"),
        ("dr", "Dr"),
        ("dr jean-luc dubois", "Dr Jean-Luc Dúbois"),
    }
    assert {r.value for r in rows_for(pat, reg, "family", "idx_string")} == {"dubois"}
    assert {r.value for r in rows_for(pat, reg, "address", "idx_string")} == {"1 rue x", "paris", "75001", "fr"}
    assert [r.value for r in rows_for(pat, reg, "address-city", "idx_string")] == ["paris"]


def test_date_rows_period_timing(reg: Registry) -> None:
    enc = {"resourceType": "Encounter", "period": {"start": "2015-01-17T16:00:00+10:00"}}
    assert [(r.lo, r.hi) for r in rows_for(enc, reg, "date", "idx_date")] == [
        (us("2015-01-17T06:00:00.000000Z"), DATE_MAX)
    ]
    enc["period"] = {"end": "2015"}
    assert [(r.lo, r.hi) for r in rows_for(enc, reg, "date", "idx_date")] == [
        (DATE_MIN, us("2015-12-31T23:59:59.999999Z"))
    ]
    sr = {
        "resourceType": "ServiceRequest",
        "occurrenceTiming": {
            "event": ["2020-05-01", "2020-03-01T10:00:00Z"],
            "repeat": {"boundsPeriod": {"start": "2020-04", "end": "2020-06"}},
        },
    }
    assert [(r.lo, r.hi) for r in rows_for(sr, reg, "occurrence", "idx_date")] == [
        (us("2020-03-01T10:00:00.000000Z"), us("2020-06-30T23:59:59.999999Z"))
    ]


def test_quantity_number_rows(reg: Registry) -> None:
    obs = {
        "resourceType": "Observation",
        "valueQuantity": {
            "value": FhirDecimal("6.30"),
            "unit": "mmol/l",
            "system": "http://unitsofmeasure.org",
            "code": "mmol/L",
        },
    }
    (row,) = rows_for(obs, reg, "value-quantity", "idx_quantity")
    assert (row.system, row.code, row.unit, row.value) == (
        "http://unitsofmeasure.org",
        "mmol/L",
        "mmol/l",
        6.3,
    )
    assert (row.lo, row.hi) == pytest.approx((6.295, 6.305))
    claim = {"resourceType": "ChargeItem", "priceOverride": {"value": 10, "currency": "EUR"}}
    (money,) = rows_for(claim, reg, "price-override", "idx_quantity")
    assert (money.system, money.code, money.lo, money.hi) == ("urn:iso:std:iso:4217", "EUR", 9.5, 10.5)
    cond = {"resourceType": "Condition", "onsetRange": {"low": {"value": 2, "unit": "a"}}}
    (rng,) = rows_for(cond, reg, "onset-age", "idx_quantity")
    assert (rng.value, rng.lo, rng.hi, rng.unit) == (2.0, 1.5, NUM_MAX, "a")
    risk = {
        "resourceType": "RiskAssessment",
        "prediction": [{"probabilityDecimal": 0.25}, {"probabilityRange": {"high": {"value": 3}}}],
    }
    got = sorted((r.value, r.lo, r.hi) for r in rows_for(risk, reg, "probability", "idx_number"))
    assert got == [(0.25, pytest.approx(0.245), pytest.approx(0.255)), (3.0, NUM_MIN, 3.5)]


def test_reference_and_uri_rows(reg: Registry) -> None:
    obs = {
        "resourceType": "Observation",
        "subject": {"reference": "Patient/p1/_history/2", "identifier": {"system": "urn:mrn", "value": "42"}},
        "performer": [{"reference": "#c"}, {"reference": "urn:uuid:9", "type": "Practitioner"}],
        "basedOn": [{"identifier": {"value": "x"}}],
        "meta": {"profile": ["http://p/StructureDefinition/x|1.0"], "source": "http://src"},
    }
    subject = rows_for(obs, reg, "subject", "idx_reference")
    assert [(r.target_type, r.target_id, r.target_version, r.url) for r in subject] == [("Patient", "p1", "2", None)]
    assert [(r.target_type, r.url) for r in rows_for(obs, reg, "performer", "idx_reference")] == [
        ("Practitioner", "urn:uuid:9")
    ]
    ident_sp = hashing.modifier_sp("Observation", "subject", "identifier")
    assert [(r.system, r.code) for r in index_rows(obs, registry=reg)["idx_token"] if r.sp == ident_sp] == [
        ("urn:mrn", "42")
    ]
    assert [r.uri for r in rows_for(obs, reg, "_profile", "idx_uri")] == ["http://p/StructureDefinition/x|1.0"]
    assert [r.uri for r in rows_for(obs, reg, "_source", "idx_uri")] == ["http://src"]
    q = {"resourceType": "QuestionnaireResponse", "questionnaire": "http://q/Questionnaire/a|2.0"}
    (canon,) = rows_for(q, reg, "questionnaire", "idx_reference")
    assert (canon.url, canon.target_version, canon.target_id) == ("http://q/Questionnaire/a", "2.0", None)
    bundle = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [{"resource": {"resourceType": "Composition", "id": "c1"}}],
    }
    assert [(r.target_type, r.target_id) for r in rows_for(bundle, reg, "composition", "idx_reference")] == [
        ("Composition", "c1")
    ]


def test_rows_are_deduplicated_and_tables_complete(reg: Registry) -> None:
    pat = {"resourceType": "Patient", "name": [{"family": "A"}, {"family": "A"}]}
    rows = index_rows(pat, registry=reg)
    assert set(rows) == set(INDEX_TABLES)
    assert len(rows_for(pat, reg, "family", "idx_string")) == 1
    assert index_rows({"no": "type"}, registry=reg)["idx_token"] == []


# ----------------------------------------------------------------------------- real examples


def _examples() -> list[tuple[str, dict]]:
    return [
        (pathlib.Path(f).name, loads(pathlib.Path(f).read_bytes())) for f in sorted(glob.glob(str(EXAMPLES / "*.json")))
    ]


def _example(name: str) -> dict:
    return loads((EXAMPLES / name).read_bytes())


@needs_examples
def test_patient_example_rows(reg: Registry) -> None:
    pat = _example("patient-example.json")
    assert {r.value for r in rows_for(pat, reg, "family", "idx_string")} == {"chalmers", "windsor"}
    assert {r.value for r in rows_for(pat, reg, "given", "idx_string")} == {"peter", "james", "jim"}
    assert [(r.system, r.code) for r in rows_for(pat, reg, "identifier", "idx_token")] == [
        ("urn:oid:1.2.36.146.595.217.0.1", "12345")
    ]
    assert [(r.lo, r.hi) for r in rows_for(pat, reg, "birthdate", "idx_date")] == [
        (us("1974-12-25T00:00:00.000000Z"), us("1974-12-25T23:59:59.999999Z"))
    ]
    assert [(r.system, r.code) for r in rows_for(pat, reg, "gender", "idx_token")] == [
        ("http://hl7.org/fhir/administrative-gender", "male")
    ]
    assert [(r.target_type, r.target_id) for r in rows_for(pat, reg, "organization", "idx_reference")] == [
        ("Organization", "1")
    ]


@needs_examples
def test_observation_example_rows(reg: Registry) -> None:
    obs = _example("observation-example-f001-glucose.json")
    assert [(r.system, r.code) for r in rows_for(obs, reg, "code", "idx_token")] == [("http://loinc.org", "15074-8")]
    (q,) = rows_for(obs, reg, "value-quantity", "idx_quantity")
    assert (q.value, q.code, q.lo, q.hi) == (6.3, "mmol/L", pytest.approx(6.25), pytest.approx(6.35))
    assert [(r.lo, r.hi) for r in rows_for(obs, reg, "date", "idx_date")] == [
        (us("2013-04-02T08:30:10.000000Z"), DATE_MAX)
    ]
    assert [(r.target_type, r.target_id) for r in rows_for(obs, reg, "subject", "idx_reference")] == [
        ("Patient", "f001")
    ]
    assert [(r.target_type, r.target_id) for r in rows_for(obs, reg, "patient", "idx_reference")] == [
        ("Patient", "f001")
    ]


@needs_examples
def test_encounter_example_rows(reg: Registry) -> None:
    enc = _example("encounter-example-home.json")
    assert [(r.lo, r.hi) for r in rows_for(enc, reg, "date", "idx_date")] == [
        (us("2015-01-17T06:00:00.000000Z"), us("2015-01-17T06:30:00.999999Z"))
    ]
    heart = _example("encounter-example-f001-heart.json")
    (length,) = rows_for(heart, reg, "length", "idx_quantity")
    assert (length.value, length.code) == (140.0, "min")


@needs_examples
def test_extraction_runs_on_all_examples(reg: Registry) -> None:
    examples = _examples()
    assert len(examples) >= 600
    total = 0
    for _name, res in examples:
        rows = index_rows(res, registry=reg)
        total += sum(len(v) for v in rows.values())
    assert total > 5_000


# The compiled extractor must select the same values as fhirpathpy evaluating the same expression.
# Documented differences, rewritten before asking fhirpathpy:
#  1. ``Resource.x``/``DomainResource.x``: fhirpathpy does not treat e.g. a Patient as a ``Resource``
#     in a leading type-name step (returns nothing); we rewrite to ``Patient.x``.
#  2. ``(x as T)`` with several items: fhirpathpy applies FHIRPath's singleton rule and raises; the R4
#     definitions (and servers) mean "filter by type", so we rewrite to ``x.ofType(T)``.
#  3. ``resolve()``: unsupported by fhirpathpy; both sides use ``reference_type`` (FHIRPATHPY_OPTIONS).
#  4. Results are compared as sets of canonical JSON (union removes duplicates, order is irrelevant
#     for indexing; numbers compared by decimal value).


def _fp_expression(expr: str, resource_type: str) -> str:
    expr = re.sub(r"\b(Resource|DomainResource)\.", resource_type + ".", expr)
    return re.sub(r"\(([A-Za-z.]+) as ([A-Za-z]+)\)", r"\1.ofType(\2)", expr)


def _canon(v: Any) -> str:
    if isinstance(v, (int, float, Decimal)) and not isinstance(v, bool):
        return "#" + str(Decimal(str(v)).normalize())
    return orjson.dumps(v, default=str, option=orjson.OPT_SORT_KEYS).decode()


def _compare_with_fhirpathpy(resources: list[dict], reg: Registry) -> tuple[int, list[str]]:
    cache: dict[str, Any] = {}
    compared, problems = 0, []
    for res in resources:
        rtype = res["resourceType"]
        for p in reg.indexed_params(rtype):
            assert p.expression is not None
            expr = _fp_expression(p.expression, rtype)
            fn = cache.get(expr) or cache.setdefault(expr, fhirpathpy_compile(expr))
            ours = {_canon(v) for v, _t in p.extract(res)}
            theirs = {_canon(v) for v in fn(res)}
            compared += 1
            if ours != theirs:
                problems.append(
                    f"{rtype}/{res.get('id')} {p.code}: {p.expression}: {sorted(ours)[:2]} != {sorted(theirs)[:2]}"
                )
    return compared, problems


@needs_examples
def test_extractor_agrees_with_fhirpathpy_on_examples(reg: Registry) -> None:
    compared, problems = _compare_with_fhirpathpy([r for _n, r in _examples()], reg)
    assert compared > 10_000
    assert problems == []


def _synthea(n: int) -> list[dict]:
    files = [f for f in sorted(glob.glob(str(SYNTHEA / "*.json.bz2"))) if not pathlib.Path(f).name.startswith("0-")]
    out: list[dict] = []
    for f in files[:n]:
        out.extend(e["resource"] for e in loads(bz2.open(f).read())["entry"])
    return out


@needs_synthea
def test_extractor_agrees_with_fhirpathpy_on_synthea(reg: Registry) -> None:
    compared, problems = _compare_with_fhirpathpy(_synthea(2), reg)
    assert compared > 10_000
    assert problems == []


@needs_examples
def test_extraction_speed(reg: Registry) -> None:
    """All parameters of a resource are extracted in well under 100 µs (typically ~20 µs)."""
    resources = [r for _n, r in _examples()]
    for r in resources:
        reg.indexed_params(r["resourceType"])
    start = time.perf_counter()
    for r in resources:
        for p in reg.indexed_params(r["resourceType"]):
            p.extract(r)
    per_resource = (time.perf_counter() - start) / len(resources)
    assert per_resource < 100e-6, f"{per_resource * 1e6:.1f} µs per resource"
