"""SMART scopes, v1 and v2 (fhir_server/security/scopes.py) and the permission table (access.py)."""

from __future__ import annotations

import pytest

from fhir_server.rest.messages import FhirRequest
from fhir_server.rest.routes import resolve
from fhir_server.security.access import required
from fhir_server.security.scopes import ResourceScope, ScopeError, ScopeSet, parse_scope


@pytest.mark.parametrize(
    ("text", "letters"),
    [
        ("system/*.read", "rs"),
        ("system/*.write", "cud"),
        ("system/*.*", "cruds"),
        ("system/Patient.rs", "rs"),
        ("user/Observation.cruds", "cruds"),
        ("patient/Condition.s", "s"),
    ],
)
def test_v1_and_v2_permissions_become_letters(text: str, letters: str) -> None:
    scope = parse_scope(text)
    assert isinstance(scope, ResourceScope) and scope.letters == letters and scope.text == text


@pytest.mark.parametrize("text", ["system/*.sr", "system/Patient.x", "system/patient.read", "other/*.read", "*.read"])
def test_malformed_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_identity_scopes_are_kept_apart() -> None:
    scopes = ScopeSet.parse("openid fhirUser launch/patient system/Patient.rs")
    assert scopes.other == {"openid", "fhirUser", "launch/patient"}
    assert [s.text for s in scopes.resource] == ["system/Patient.rs"]


def test_allows_by_context_type_and_letter() -> None:
    scopes = ScopeSet.parse("system/Patient.rs system/Observation.c")
    assert scopes.allows("system", "Patient", "r") and scopes.allows("system", "Patient", "s")
    assert not scopes.allows("system", "Patient", "c")
    assert scopes.allows("system", "Observation", "c") and not scopes.allows("system", "Observation", "r")
    assert not scopes.allows("user", "Patient", "r")  # another context
    assert ScopeSet.parse("system/*.read").allows("system", "Encounter", "s")


def test_a_queried_v2_scope_grants_nothing_yet() -> None:
    scopes = ScopeSet.parse("system/Observation.rs?category=laboratory")
    assert not scopes.allows("system", "Observation", "r")
    assert str(scopes.narrowed_to(ScopeSet.parse("system/*.*"))) == ""


def test_narrowing_a_request_to_a_registration() -> None:
    allowed = ScopeSet.parse("system/*.read system/Observation.c")
    asked = ScopeSet.parse("system/Patient.rs system/Observation.cu system/*.read openid")
    assert str(asked.narrowed_to(allowed)) == "system/Patient.rs system/*.read"
    assert str(ScopeSet.parse("system/*.*").narrowed_to(ScopeSet.parse("system/*.*"))) == "system/*.*"


@pytest.mark.parametrize(
    ("method", "path", "needed"),
    [
        ("GET", "Patient/1", [("Patient", "r")]),
        ("GET", "Patient/1/_history/2", [("Patient", "r")]),
        ("GET", "Patient", [("Patient", "s")]),
        ("GET", "", [("*", "s")]),
        ("POST", "Observation", [("Observation", "c")]),
        ("PUT", "Observation/1", [("Observation", "u")]),
        ("PUT", "Observation", [("Observation", "us")]),  # conditional update searches first
        ("DELETE", "Observation", [("Observation", "ds")]),
        ("PATCH", "Observation/1", [("Observation", "u")]),
        ("POST", "", []),  # a Bundle: each entry is checked as it runs
        ("GET", "ValueSet/$expand", [("ValueSet", "r")]),
        ("POST", "$reindex", [("*", "cruds")]),
        ("POST", "Observation/$import-aecg", [("Observation", "c"), ("DocumentReference", "c"), ("Binary", "c")]),
    ],
)
def test_permissions_each_interaction_needs(method: str, path: str, needed: list[tuple[str, str]]) -> None:
    route, variables = resolve(method, path)
    req = FhirRequest(method=method, params=[])
    req.res_type = variables.get("type")
    assert required(route, req) == needed
