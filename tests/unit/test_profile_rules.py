"""Rule criteria: the direct answer for "carries this code" agrees with evaluating the FHIRPath."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

import pytest

from fhir_server.validation import fhirpath
from fhir_server.validation.rules import _holds

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _rules() -> list[tuple[str, str, str]]:
    spec = importlib.util.spec_from_file_location("gen_ig", ROOT / "scripts" / "gen_implementation_guide.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return list(gen.RULES)


def _resources() -> list[dict[str, Any]]:
    out = [json.loads(p.read_text()) for p in sorted((ROOT / "profiles" / "examples").glob("*.json"))]
    out += [
        {"resourceType": "Observation", "code": {"text": "no coding"}},
        {"resourceType": "Observation"},
        {"resourceType": "ServiceRequest", "category": [{"text": "x"}, {"coding": [{"code": "teleconsultation"}]}]},
        {"resourceType": "Task", "businessStatus": {"coding": [{"system": "urn:other", "code": "applied"}]}},
    ]
    return out


@pytest.mark.parametrize("rule", _rules(), ids=lambda r: f"{r[0]}-{r[1]}")
def test_direct_answer_agrees_with_fhirpath(rule: tuple[str, str, str]) -> None:
    res_type, _profile, criteria = rule
    resources = [r for r in _resources() if r["resourceType"] == res_type]
    assert resources
    covered = 0
    for resource in resources:
        expected = fhirpath.evaluate(criteria, resource, res_type, resource) == [True]
        assert _holds(criteria, resource) is expected, (criteria, resource.get("id"))
        covered += expected
    assert covered >= 1  # each rule covers at least its own example
