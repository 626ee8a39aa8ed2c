"""SMART scopes, v1 and v2 (fhir_server/security/scopes.py), v2 scopes with a query (granular.py) and the
permission table (access.py)."""

from __future__ import annotations

import pytest

from fhir_server.rest.messages import FhirRequest
from fhir_server.rest.routes import resolve
from fhir_server.security.access import required
from fhir_server.security.granular import ScopeFilter, check_enforceable
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


LAB = "category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory"
VITAL = "category=http://terminology.hl7.org/CodeSystem/observation-category|vital-signs"


def test_a_query_is_parsed_as_a_search_url_is() -> None:
    scope = parse_scope(f"patient/Observation.rs?{LAB}&date=ge2024%2B08:00")
    assert isinstance(scope, ResourceScope) and scope.letters == "rs"
    assert scope.params == (
        ("category", "http://terminology.hl7.org/CodeSystem/observation-category|laboratory"),
        ("date", "ge2024+08:00"),
    )


@pytest.mark.parametrize(
    "text", ["system/Observation.rs?", "system/Observation.rs?category", "system/Observation.rs?a=1&&b=2"]
)
def test_a_malformed_query_is_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_a_queried_scope_grants_its_letters_on_its_type() -> None:
    scopes = ScopeSet.parse(f"system/Observation.rs?{LAB}")
    assert scopes.queried and not ScopeSet.parse("system/Observation.rs").queried
    assert scopes.allows("system", "Observation", "r") and scopes.allows("system", "Observation", "s")
    assert not scopes.allows("system", "Observation", "c") and not scopes.allows("system", "Patient", "r")


@pytest.mark.parametrize(
    ("registered", "requested", "granted"),
    [
        ("system/Observation.rs", f"system/Observation.rs?{LAB}", f"system/Observation.rs?{LAB}"),
        ("system/*.read", f"system/Observation.s?{LAB}", f"system/Observation.s?{LAB}"),
        (f"system/Observation.rs?{LAB}", f"system/Observation.rs?{LAB}", f"system/Observation.rs?{LAB}"),
        (f"system/Observation.rs?{LAB}", f"system/Observation.r?{LAB}&code=x", f"system/Observation.r?{LAB}&code=x"),
        (f"system/Observation.rs?{LAB}", "system/Observation.rs", ""),  # more rows than registered
        (f"system/Observation.rs?{LAB}", f"system/Observation.rs?{VITAL}", ""),
        (f"system/Observation.rs?{LAB}", f"system/Observation.cr?{LAB}", ""),  # more letters
        (f"system/Observation.rs?{LAB}", f"user/Observation.rs?{LAB}", ""),  # another context
        (f"system/Observation.rs?{LAB},{VITAL[9:]}", f"system/Observation.rs?{LAB}", ""),  # an OR is not taken apart
    ],
)
def test_narrowing_a_queried_scope(registered: str, requested: str, granted: str) -> None:
    assert str(ScopeSet.parse(requested).narrowed_to(ScopeSet.parse(registered))) == granted


@pytest.mark.parametrize(
    "query",
    [
        LAB,
        f"{LAB}&code=http://loinc.org|1234-5",
        "category:not=vital-signs",
        "subject=Patient/1",
        "subject:Patient=1",
        "performer:missing=false",
        "status=final",
        "code:text=glucose",
        "date=ge2024-01-01",
        "_lastUpdated=ge2024",
        "value-quantity=gt5",
        "_tag=http://example.org|t",
        "_profile:below=http://example.org/fhir",
        "combo-code=x",
    ],
)
def test_queries_the_server_enforces(query: str) -> None:
    check_enforceable(ScopeSet.parse(f"patient/Observation.rs?{query}"))


@pytest.mark.parametrize(
    ("scope", "reason"),
    [
        ("system/*.rs?_tag=a|b", "resource type"),
        ("system/AuditEvent.rs?type=rest", "AuditEvent"),
        ("system/Observation.rs?_include=Observation:subject", "cannot limit"),
        ("system/Observation.rs?_revinclude=Provenance:target", "cannot limit"),
        ("system/Observation.rs?_sort=date", "cannot limit"),
        ("system/Observation.rs?subject.name=Zhang", "cannot limit"),
        ("system/Observation.rs?subject:Patient.name=Zhang", "cannot limit"),
        ("system/Patient.rs?_has:Observation:subject:code=x", "cannot limit"),
        ("system/Observation.rs?_id=1", "cannot limit"),
        ("system/Observation.rs?_list=1", "cannot limit"),
        ("system/Observation.rs?no-such=1", "cannot limit"),
        ("system/Observation.rs?code-value-quantity=x$5", "cannot limit"),  # composite
        ("system/Location.rs?near=1|2|3|km", "cannot limit"),  # special
        ("system/Observation.rs?category:in=http://example.org/vs", "modifier :in"),
        ("system/Observation.rs?code:below=http://loinc.org|1", "modifier :below"),
        ("system/Observation.rs?_profile:above=http://example.org/a/b", "modifier :above"),
        ("system/Observation.rs?date:exact=2024", "modifier :exact"),
        ("system/Patient.rs?identifier=urn:a|1", "blind index"),
        ("system/Observation.rs?category=", "no value"),
        ("system/Observation.rs?date=yesterday", "not a valid date"),
        ("system/Observation.rs?performer:missing=maybe", "true or false"),
    ],
)
def test_queries_the_server_could_not_enforce_are_refused(scope: str, reason: str) -> None:
    with pytest.raises(ScopeError, match=reason) as caught:
        check_enforceable(ScopeSet.parse(scope))
    assert repr(scope) in str(caught.value)


def test_rows_are_limited_per_type_and_letter() -> None:
    scopes = [
        f"system/Observation.rs?{LAB}",
        f"system/Observation.rs?{VITAL}",
        f"system/Observation.c?{LAB}",
        "system/Condition.rs",
        f"system/Condition.u?{LAB}",
        "user/Patient.rs?gender=female",
    ]
    limits = ScopeFilter.of(ScopeSet.parse(" ".join(scopes)), ("system",))
    assert limits is not None and limits.types == {"Observation", "Condition"}  # user/ does not count
    assert limits.queries("Observation", "r") == {(("category", LAB[9:]),), (("category", VITAL[9:]),)}
    assert limits.queries("Observation", "c") == {(("category", LAB[9:]),)}
    assert limits.queries("Observation", "d") is None  # not granted: the route check refuses it
    assert limits.queries("Condition", "r") is None  # a scope without a query: every row
    assert limits.queries("Condition", "u") == {(("category", LAB[9:]),)}
    assert limits.queries("Patient", "r") is None


def test_an_unrestricted_scope_on_the_type_or_star_wins() -> None:
    limits = ScopeFilter.of(ScopeSet.parse(f"system/Observation.rs?{LAB} system/*.rs"), ("system",))
    assert limits is not None and limits.queries("Observation", "s") is None
    assert ScopeFilter.of(ScopeSet.parse("system/Observation.rs"), ("system",)) is None
    assert ScopeFilter.of(ScopeSet.parse(f"patient/Observation.rs?{LAB}"), ("system",)) is None


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
