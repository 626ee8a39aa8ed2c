"""Operation inputs of the terminology operations: typed, strict, from a query or a Parameters body.

Spec: http://hl7.org/fhir/R4/operations.html#request (GET takes primitive parameters only; POST a
Parameters resource).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest
from fhir_server.rest.operations.terminology_inputs import (
    BOOLEAN,
    CODING,
    CONCEPT,
    INTEGER,
    STRING,
    Inputs,
    coded_inputs,
)

SPEC = {
    "url": (STRING, False),
    "count": (INTEGER, False),
    "flag": (BOOLEAN, False),
    "coding": (CODING, False),
    "codeableConcept": (CONCEPT, False),
    "property": (STRING, True),
    "valueSet": ("resource:ValueSet", False),
    "code": (STRING, False),
    "system": (STRING, False),
    "version": (STRING, False),
    "display": (STRING, False),
}


def _get(*params: tuple[str, str]) -> Inputs:
    return Inputs(FhirRequest("GET", params=list(params)), "op", SPEC, frozenset({"date"}))


def _post(*parts: dict[str, Any], params: tuple[tuple[str, str], ...] = ()) -> Inputs:
    body = {"resourceType": "Parameters", "parameter": list(parts)}
    return Inputs(FhirRequest("POST", params=list(params), resource=body), "op", SPEC, frozenset({"date"}))


def _error(call, *args: Any, **kw: Any) -> FhirError:  # type: ignore[no-untyped-def]
    with pytest.raises(FhirError) as info:
        call(*args, **kw)
    assert info.value.status == 400
    return info.value


def test_query_values_are_typed() -> None:
    inputs = _get(
        ("url", "http://x"), ("count", "5"), ("flag", "true"), ("coding", "http://s|a|b"), ("_format", "json")
    )
    assert inputs.get("url") == "http://x" and inputs.get("count") == 5 and inputs.get("flag") is True
    assert inputs.get("coding") == {"system": "http://s|a", "code": "b"}  # the last bar splits
    assert _get(("property", "a"), ("property", "b")).all("property") == ["a", "b"]
    assert _get().get("url") is None and not _get().has("url")


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ((("nope", "1"),), "has no parameter 'nope'"),
        ((("date", "2020"),), "not supported"),
        ((("flag", "yes"),), "true or false"),
        ((("count", "-2"),), "whole number"),
        ((("count", "x"),), "whole number"),
        ((("coding", "abc"),), "system|code"),
        ((("codeableConcept", "x"),), "POSTed"),
        ((("valueSet", "x"),), "POSTed"),
        ((("url", "a"), ("url", "b")), "more than once"),
    ],
)
def test_query_errors_name_the_parameter(params: tuple[tuple[str, str], ...], message: str) -> None:
    err = _error(_get, *params)
    assert message in err.diagnostics


def test_body_values_are_typed() -> None:
    vs = {"resourceType": "ValueSet", "status": "draft"}
    inputs = _post(
        {"name": "url", "valueCanonical": "http://x"},
        {"name": "count", "valueInteger": 3},
        {"name": "flag", "valueBoolean": False},
        {"name": "coding", "valueCoding": {"system": "s", "code": "c"}},
        {"name": "valueSet", "resource": vs},
        params=(("_pretty", "true"), ("property", "p")),
    )
    assert inputs.get("url") == "http://x" and inputs.get("count") == 3 and inputs.get("flag") is False
    assert inputs.get("valueSet") is vs and inputs.all("property") == ["p"]
    assert inputs.echo("count", "flag", "property") == [
        {"name": "count", "valueInteger": 3},
        {"name": "flag", "valueBoolean": False},
        {"name": "property", "valueString": "p"},
    ]


@pytest.mark.parametrize(
    ("part", "message"),
    [
        ({"name": "flag", "valueString": "true"}, "must be a boolean"),
        ({"name": "valueSet", "resource": {"resourceType": "CodeSystem"}}, "must hold a ValueSet"),
        ({"name": "url"}, "exactly one value[x]"),
        ({"name": "url", "valueUri": "a", "valueString": "b"}, "exactly one value[x]"),
        ({"valueUri": "a"}, "without a name"),
        ({"name": "date", "valueDateTime": "2020"}, "not supported"),
    ],
)
def test_body_errors(part: dict[str, Any], message: str) -> None:
    err = _error(_post, part)
    assert message in err.diagnostics
    if part.get("name") in ("flag", "valueSet", "url"):
        assert err.issues[0].expression == ["Parameters.parameter[0]"]


def test_a_body_must_be_parameters() -> None:
    req = FhirRequest("POST", resource={"resourceType": "ValueSet"})
    assert "must be a Parameters resource" in _error(Inputs, req, "op", SPEC).diagnostics


def test_query_and_body_together_still_count_once() -> None:
    err = _error(_post, {"name": "url", "valueUri": "a"}, params=(("url", "b"),))
    assert "more than once" in err.diagnostics


def test_coded_inputs() -> None:
    [coded] = coded_inputs(
        _get(("code", "c"), ("system", "s"), ("version", "1"), ("display", "d")), "system", "version"
    )
    assert (coded.system, coded.code, coded.version, coded.display) == ("s", "c", "1", "d")
    [default] = coded_inputs(_get(("code", "c")), None, "version", system_default="cs")
    assert default.system == "cs"
    concept = {"coding": [{"system": "a", "code": "1", "display": "One"}, {"system": "b"}, {"code": "2"}]}
    many = coded_inputs(_post({"name": "codeableConcept", "valueCodeableConcept": concept}), "system", "version")
    assert [(c.system, c.code, c.display) for c in many] == [("a", "1", "One"), (None, "2", None)]
    assert "needs system" in _error(coded_inputs, _get(("code", "c")), "system", "version").diagnostics
    assert "give code" in _error(coded_inputs, _get(), "system", "version").diagnostics
    assert (
        "only one of" in _error(coded_inputs, _get(("code", "c"), ("coding", "s|c")), "system", "version").diagnostics
    )
    empty = _post({"name": "codeableConcept", "valueCodeableConcept": {"text": "x"}})
    assert "no coding with a code" in _error(coded_inputs, empty, "system", "version").diagnostics
