"""Terminology for token modifiers (:in, :not-in, :above, :below) over stored ValueSets and CodeSystems.

Runs on SQLite and PostgreSQL (the ``services`` fixture). The database is shared by the whole test
session, so hand-written resources get unique urls; the R4 examples are stored once per database.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.terminology import MAX_CODES, code_closure, codes_in_valueset
from fhir_server.terminology.cache import LRU, caches_for
from fhir_server.terminology.canonical import parse
from fhir_server.terminology.codesystem import CodeSystemView
from tests.conftest import shared_data

# -- helpers -------------------------------------------------------------------------------


def _uid() -> str:
    return uuid.uuid4().hex[:10]


def _store(services, *resources: dict[str, Any]) -> list[Any]:  # type: ignore[no-untyped-def]
    with services.repo.session(write=True) as s:
        return [s.create(r) for r in resources]


def _codes(services, url: str, **kw: Any) -> frozenset[tuple[str | None, str]]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        return codes_in_valueset(s, url, services.search, **kw)


def _closure(services, system: str, code: str, direction: str, **kw: Any) -> frozenset[str]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        return code_closure(s, system, code, direction, services.search, **kw)  # type: ignore[arg-type]


def _error(call, *args: Any, **kw: Any) -> str:  # type: ignore[no-untyped-def]
    with pytest.raises(FhirError) as info:
        call(*args, **kw)
    assert info.value.kind == "invalid-param" and info.value.status == 400
    return info.value.diagnostics


def _vs(url: str, compose: dict[str, Any] | None = None, **extra: Any) -> dict[str, Any]:
    vs: dict[str, Any] = {"resourceType": "ValueSet", "url": url, "status": "active", **extra}
    if compose is not None:
        vs["compose"] = compose
    return vs


def _pairs(system: str | None, *codes: str) -> frozenset[tuple[str | None, str]]:
    return frozenset((system, c) for c in codes)


class CountingMatcher:
    """The real SearchEngine, counting the reads it is asked for."""

    def __init__(self, engine: Any) -> None:
        self.engine = engine
        self.calls: list[tuple[str, list[tuple[str, str]]]] = []

    def match(self, session, res_type, params, limit=2):  # type: ignore[no-untyped-def]
        self.calls.append((res_type, params))
        return self.engine.match(session, res_type, params, limit)


def _hierarchy_cs(url: str, **extra: Any) -> dict[str, Any]:
    """root ⊃ a ⊃ {a1 ⊃ c, a2, d}; root ⊃ b ⊃ d; top ⊃ root; x alone.

    Nested concepts give root/a/a1/a2/b; ``parent`` properties put c under a1 and d under a and b;
    a ``child`` property on top puts root under top. r1 and r2 are retired/inactive leaves of b.
    """
    return {
        "resourceType": "CodeSystem",
        "url": url,
        "status": "active",
        "content": "complete",
        "hierarchyMeaning": "is-a",
        "property": [
            {"code": "parent", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code"},
            {"code": "child", "uri": "http://hl7.org/fhir/concept-properties#child", "type": "code"},
            {"code": "status", "type": "code"},
            {"code": "inactive", "type": "boolean"},
            {"code": "colour", "type": "string"},
        ],
        "concept": [
            {
                "code": "root",
                "concept": [
                    {
                        "code": "a",
                        "property": [{"code": "colour", "valueString": "red"}],
                        "concept": [
                            {"code": "a1"},
                            {"code": "a2", "property": [{"code": "colour", "valueString": "blue"}]},
                        ],
                    },
                    {
                        "code": "b",
                        "concept": [
                            {"code": "r1", "property": [{"code": "status", "valueCode": "retired"}]},
                            {"code": "r2", "property": [{"code": "inactive", "valueBoolean": True}]},
                        ],
                    },
                ],
            },
            {"code": "c", "property": [{"code": "parent", "valueCode": "a1"}]},
            {"code": "d", "property": [{"code": "parent", "valueCode": "a"}, {"code": "parent", "valueCode": "b"}]},
            {"code": "top", "property": [{"code": "child", "valueCode": "root"}]},
            {"code": "x"},
        ],
        **extra,
    }


ALL_HIERARCHY = ("root", "a", "a1", "a2", "b", "r1", "r2", "c", "d", "top", "x")


@pytest.fixture()
def cs(services) -> str:  # type: ignore[no-untyped-def]
    """A fresh hierarchy CodeSystem; returns its url."""
    url = f"http://example.org/cs/{_uid()}"
    _store(services, _hierarchy_cs(url))
    return url


# -- the R4 examples -----------------------------------------------------------------------

EXAMPLE_FILES = (
    "codesystem-example.json",
    "codesystem-list-example-codes.json",
    "codesystem-examplescenario-actor-type.json",
    "codesystem-example-summary.json",
    "valueset-list-example-codes.json",
    "valueset-examplescenario-actor-type.json",
    "valueset-example-expansion.json",
    "valueset-example-yesnodontknow.json",
    "valueset-example-inactive.json",
    "valueset-example-intensional.json",
    "valueset-example-filter.json",
)


@pytest.fixture(scope="module")
def examples(services) -> None:  # type: ignore[no-untyped-def]
    """The R4 examples above, stored once per database (skipped when the shared data is absent)."""
    folder = shared_data("fhir", "r4-examples")
    with services.repo.session(write=True) as s:
        for name in EXAMPLE_FILES:
            resource = json.loads((folder / name).read_text())
            if not services.search.match(s, resource["resourceType"], [("url", resource["url"])]):
                s.create(resource)


LIST_CODES = "http://terminology.hl7.org/CodeSystem/list-example-use-codes"
LOINC = "http://loinc.org"
ACT_MOOD = "http://terminology.hl7.org/CodeSystem/v3-ActMood"


def test_example_valueset_including_a_whole_stored_codesystem(services, examples) -> None:  # type: ignore[no-untyped-def]
    assert _codes(services, "http://hl7.org/fhir/ValueSet/list-example-codes") == _pairs(
        LIST_CODES,
        "alerts",
        "adverserxns",
        "allergies",
        "medications",
        "problems",
        "worklist",
        "waiting",
        "protocols",
        "plans",
    )
    assert _codes(services, "http://hl7.org/fhir/ValueSet/examplescenario-actor-type") == _pairs(
        "http://hl7.org/fhir/examplescenario-actor-type", "person", "entity"
    )


def test_example_expansions_are_used_nested_groups_included(services, examples) -> None:  # type: ignore[no-untyped-def]
    expected = _pairs(LOINC, "14647-2", "2093-3", "48620-9", "9342-7", "2096-6", "35200-5", "48089-7", "55838-7")
    # compose filters on LOINC (not stored): only the stored expansion can answer
    assert _codes(services, "http://hl7.org/fhir/ValueSet/example-expansion") == expected
    assert _codes(services, "http://hl7.org/fhir/ValueSet/example-expansion|20150622") == expected
    assert "not stored" in _error(_codes, services, "http://hl7.org/fhir/ValueSet/example-expansion|1999")
    assert _codes(services, "http://hl7.org/fhir/ValueSet/yesnodontknow") == frozenset(
        {
            ("http://terminology.hl7.org/CodeSystem/v2-0136", "Y"),
            ("http://terminology.hl7.org/CodeSystem/v2-0136", "N"),
            ("http://terminology.hl7.org/CodeSystem/data-absent-reason", "asked-unknown"),
        }
    )
    assert _codes(services, "http://hl7.org/fhir/ValueSet/inactive") == _pairs(
        ACT_MOOD, "CRT", "EXPEC", "GOL", "RSK", "OPT"
    )


def test_example_valuesets_that_cannot_be_evaluated_are_errors(services, examples) -> None:  # type: ignore[no-untyped-def]
    # filter on LOINC, which is not stored, and no expansion
    message = _error(_codes, services, "http://hl7.org/fhir/ValueSet/example-intensional")
    assert "CodeSystem http://loinc.org is not stored" in message
    # a filter the CodeSystem defines with its own meaning
    message = _error(_codes, services, "http://hl7.org/fhir/ValueSet/example-filter")
    assert "acme-plasma" in message and "does not know what it means" in message
    # a CodeSystem stored without its concepts
    url = f"http://example.org/vs/{_uid()}"
    _store(services, _vs(url, {"include": [{"system": "http://hl7.org/fhir/CodeSystem/summary"}]}))
    assert "content='not-present'" in _error(_codes, services, url)
    assert "content='not-present'" in _error(
        _closure, services, "http://hl7.org/fhir/CodeSystem/summary", "true", "below"
    )


def test_closure_in_a_flat_example_codesystem(services, examples) -> None:  # type: ignore[no-untyped-def]
    system = "http://hl7.org/fhir/CodeSystem/example"
    assert _closure(services, system, "chol", "below") == {"chol"}
    assert _closure(services, system + "|20160128", "chol-mass", "above") == {"chol-mass"}
    assert "has no code 'nope'" in _error(_closure, services, system, "nope", "below")


# -- hierarchy and code_closure ------------------------------------------------------------


def test_closure_follows_nesting_and_parent_child_properties(services, cs) -> None:  # type: ignore[no-untyped-def]
    assert _closure(services, cs, "a", "below") == {"a", "a1", "a2", "c", "d"}
    assert _closure(services, cs, "b", "below") == {"b", "r1", "r2", "d"}
    assert _closure(services, cs, "top", "below") == set(ALL_HIERARCHY) - {"x"}
    assert _closure(services, cs, "c", "above") == {"c", "a1", "a", "root", "top"}
    assert _closure(services, cs, "d", "above") == {"d", "a", "b", "root", "top"}
    assert _closure(services, cs, "x", "below") == {"x"}
    assert _closure(services, cs, "x", "above") == {"x"}


def test_closure_errors(services, cs) -> None:  # type: ignore[no-untyped-def]
    assert "has no code 'zz'" in _error(_closure, services, cs, "zz", "below")
    assert "is not stored" in _error(_closure, services, f"http://example.org/cs/{_uid()}", "a", "below")
    assert "direction" in _error(_closure, services, cs, "a", "sideways")
    assert "more than 3 codes" in _error(_closure, services, cs, "a", "below", max_codes=3)
    grouped = f"http://example.org/cs/{_uid()}"
    _store(services, _hierarchy_cs(grouped, hierarchyMeaning="grouped-by"))
    assert "hierarchyMeaning='grouped-by'" in _error(_closure, services, grouped, "a", "below")


def test_closure_with_cycles_in_parent_properties_terminates(services) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/cs/{_uid()}"
    concepts = [
        {"code": "p", "property": [{"code": "parent", "valueCode": "q"}]},
        {"code": "q", "property": [{"code": "parent", "valueCode": "p"}]},
    ]
    _store(
        services,
        {"resourceType": "CodeSystem", "url": url, "status": "draft", "content": "complete", "concept": concepts},
    )
    assert _closure(services, url, "p", "below") == {"p", "q"}


# -- compose: filters ----------------------------------------------------------------------


def _filter_vs(services, cs: str, *filters: dict[str, str], **compose: Any) -> str:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    _store(services, _vs(url, {"include": [{"system": cs, "filter": list(filters)}], **compose}))
    return url


def _f(prop: str, op: str, value: str) -> dict[str, str]:
    return {"property": prop, "op": op, "value": value}


def test_concept_filters(services, cs) -> None:  # type: ignore[no-untyped-def]
    def codes(*filters: dict[str, str]) -> frozenset[tuple[str | None, str]]:
        return _codes(services, _filter_vs(services, cs, *filters))

    assert codes(_f("concept", "is-a", "a")) == _pairs(cs, "a", "a1", "a2", "c", "d")
    assert codes(_f("concept", "descendent-of", "a")) == _pairs(cs, "a1", "a2", "c", "d")
    assert codes(_f("concept", "is-not-a", "a")) == _pairs(cs, "root", "b", "r1", "r2", "top", "x")
    assert codes(_f("concept", "generalizes", "c")) == _pairs(cs, "c", "a1", "a", "root", "top")
    assert codes(_f("concept", "=", "x")) == _pairs(cs, "x")
    assert codes(_f("code", "in", "x,a2")) == _pairs(cs, "x", "a2")
    # several filters are ANDed
    assert codes(_f("concept", "is-a", "root"), _f("concept", "is-not-a", "b")) == _pairs(
        cs, "root", "a", "a1", "a2", "c"
    )


def test_property_filters(services, cs) -> None:  # type: ignore[no-untyped-def]
    def codes(*filters: dict[str, str]) -> frozenset[tuple[str | None, str]]:
        return _codes(services, _filter_vs(services, cs, *filters))

    assert codes(_f("colour", "=", "red")) == _pairs(cs, "a")
    assert codes(_f("colour", "in", "red,blue")) == _pairs(cs, "a", "a2")
    assert codes(_f("colour", "exists", "true")) == _pairs(cs, "a", "a2")
    assert codes(_f("status", "=", "retired")) == _pairs(cs, "r1")
    # parent = X: direct children, however the hierarchy is written
    assert codes(_f("parent", "=", "a")) == _pairs(cs, "a1", "a2", "d")
    assert codes(_f("child", "=", "d")) == _pairs(cs, "a", "b")
    assert codes(_f("concept", "is-a", "b"), _f("status", "not-in", "retired")) == _pairs(cs, "b", "r2", "d")


def test_unsupported_or_unknown_filters_are_errors(services, cs) -> None:  # type: ignore[no-untyped-def]
    message = _error(_codes, services, _filter_vs(services, cs, _f("concept", "regex", "a.*")))
    assert "operator 'regex'" in message and "not supported" in message
    message = _error(_codes, services, _filter_vs(services, cs, _f("flavour", "=", "sweet")))
    assert "has no property 'flavour'" in message
    message = _error(_codes, services, _filter_vs(services, cs, _f("concept", "is-a", "nope")))
    assert "has no code 'nope'" in message


def test_compose_inactive_false_drops_inactive_codes(services, cs) -> None:  # type: ignore[no-untyped-def]
    url = _filter_vs(services, cs, _f("concept", "is-a", "b"), inactive=False)
    assert _codes(services, url) == _pairs(cs, "b", "d")
    url = _filter_vs(services, cs, _f("concept", "is-a", "b"), inactive=True)
    assert _codes(services, url) == _pairs(cs, "b", "r1", "r2", "d")


# -- compose: includes, excludes, imports ---------------------------------------------------


def test_concept_lists_need_no_stored_codesystem(services) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    include = {"system": "http://snomed.info/sct", "concept": [{"code": "123"}, {"code": "456"}]}
    _store(services, _vs(url, {"include": [include]}))
    assert _codes(services, url) == _pairs("http://snomed.info/sct", "123", "456")


def test_excludes_and_imports(services, cs) -> None:  # type: ignore[no-untyped-def]
    base, narrowed, both, union = (f"http://example.org/vs/{_uid()}" for _ in range(4))
    _store(
        services,
        _vs(base, {"include": [{"system": cs}]}),
        # import minus a concept list and minus a filter
        _vs(
            narrowed,
            {
                "include": [{"valueSet": [base]}],
                "exclude": [
                    {"system": cs, "concept": [{"code": "x"}]},
                    {"system": cs, "filter": [_f("concept", "is-a", "b")]},
                ],
            },
        ),
        # one include with a system filter and an import: the intersection
        _vs(both, {"include": [{"system": cs, "filter": [_f("concept", "is-a", "a")], "valueSet": [narrowed]}]}),
        # two includes: the union; one include with two imports: the intersection
        _vs(
            union,
            {
                "include": [
                    {"valueSet": [narrowed, base]},
                    {"system": "http://other.example/cs", "concept": [{"code": "z"}]},
                ]
            },
        ),
    )
    assert _codes(services, base) == _pairs(cs, *ALL_HIERARCHY)
    assert _codes(services, narrowed) == _pairs(cs, "root", "a", "a1", "a2", "c", "top")
    assert _codes(services, both) == _pairs(cs, "a", "a1", "a2", "c")
    assert _codes(services, union) == _pairs(cs, "root", "a", "a1", "a2", "c", "top") | {
        ("http://other.example/cs", "z")
    }


def test_import_cycles_are_errors(services, cs) -> None:  # type: ignore[no-untyped-def]
    one, two, self_ref = (f"http://example.org/vs/{_uid()}" for _ in range(3))
    _store(
        services,
        _vs(one, {"include": [{"valueSet": [two]}]}),
        _vs(two, {"include": [{"system": cs, "concept": [{"code": "a"}]}, {"valueSet": [one]}]}),
        _vs(self_ref, {"include": [{"valueSet": [self_ref]}]}),
    )
    assert f"ValueSet import cycle: {one} -> {two} -> {one}" in _error(_codes, services, one)
    assert f"ValueSet import cycle: {self_ref} -> {self_ref}" in _error(_codes, services, self_ref)


def test_unknown_valuesets_are_errors_not_empty_sets(services, cs) -> None:  # type: ignore[no-untyped-def]
    missing = f"http://example.org/vs/{_uid()}"
    assert _error(_codes, services, missing) == f"ValueSet {missing} is not stored on this server"
    importer = f"http://example.org/vs/{_uid()}"
    _store(services, _vs(importer, {"include": [{"valueSet": [missing]}]}))
    assert _error(_codes, services, importer) == f"ValueSet {importer}: ValueSet {missing} is not stored on this server"
    assert "is not stored" in _error(_codes, services, f"ValueSet/{_uid()}")


def test_valueset_without_content_is_an_error(services) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    _store(services, _vs(url))
    assert "neither an expansion nor a compose" in _error(_codes, services, url)


# -- expansions ----------------------------------------------------------------------------


def test_expansion_is_used_before_compose(services) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    expansion = {
        "timestamp": "2024-01-01T00:00:00Z",
        "contains": [
            {"system": "http://s1", "code": "one"},
            {"abstract": True, "display": "group", "contains": [{"system": "http://s2", "code": "two"}]},
            {"code": "bare"},
        ],
    }
    # the compose names a CodeSystem that is not stored: it must not be evaluated
    compose = {"include": [{"system": "http://not-stored.example/cs"}]}
    _store(services, _vs(url, compose, expansion=expansion))
    assert _codes(services, url) == {("http://s1", "one"), ("http://s2", "two"), (None, "bare")}


def test_partial_expansion_falls_back_to_compose_or_fails(services, cs) -> None:  # type: ignore[no-untyped-def]
    page = {"timestamp": "2024-01-01T00:00:00Z", "total": 3, "contains": [{"system": cs, "code": "x"}]}
    with_compose, without = f"http://example.org/vs/{_uid()}", f"http://example.org/vs/{_uid()}"
    _store(
        services,
        _vs(with_compose, {"include": [{"system": cs, "concept": [{"code": "a"}, {"code": "b"}]}]}, expansion=page),
        _vs(without, expansion=page),
    )
    assert _codes(services, with_compose) == _pairs(cs, "a", "b")
    assert "partial (1 of 3 codes" in _error(_codes, services, without)


def test_size_limit(services, cs) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    _store(services, _vs(url, {"include": [{"system": cs}]}))
    assert "more than 10 codes" in _error(_codes, services, url, max_codes=10)
    assert len(_codes(services, url, max_codes=11)) == 11
    assert MAX_CODES == 10_000


# -- versions, literal references, caching --------------------------------------------------


def _versioned_cs(url: str, version: str, *codes: str) -> dict[str, Any]:
    concepts = [{"code": c} for c in codes]
    return {
        "resourceType": "CodeSystem",
        "url": url,
        "version": version,
        "status": "active",
        "content": "complete",
        "concept": concepts,
    }


def test_versions_are_chosen_or_must_be_named(services) -> None:  # type: ignore[no-untyped-def]
    system = f"http://example.org/cs/{_uid()}"
    vs, any_vs = f"http://example.org/vs/{_uid()}", f"http://example.org/vs/{_uid()}"
    _store(
        services,
        _versioned_cs(system, "1", "old"),
        _versioned_cs(system, "2", "old", "new"),
        _vs(vs, {"include": [{"system": system, "version": "1"}]}, version="1.0"),
        _vs(vs, {"include": [{"system": system, "version": "2"}]}, version="2.0"),
        _vs(any_vs, {"include": [{"system": system}]}),
    )
    assert _codes(services, f"{vs}|1.0") == _pairs(system, "old")
    assert _codes(services, f"{vs}|2.0") == _pairs(system, "old", "new")
    assert "name one as" in _error(_codes, services, vs)
    message = _error(_codes, services, any_vs)
    assert "2 stored CodeSystems have url" in message and "versions: 1, 2" in message
    assert _closure(services, f"{system}|2", "new", "below") == {"new"}
    assert "has no code 'new'" in _error(_closure, services, f"{system}|1", "new", "below")


def test_literal_valueset_reference(services, cs) -> None:  # type: ignore[no-untyped-def]
    url = f"http://example.org/vs/{_uid()}"
    (stored,) = _store(services, _vs(url, {"include": [{"system": cs, "concept": [{"code": "a"}]}]}))
    assert _codes(services, f"ValueSet/{stored.res_id}") == _pairs(cs, "a")


def test_cache_is_reused_and_sees_new_versions(services) -> None:  # type: ignore[no-untyped-def]
    system = f"http://example.org/cs/{_uid()}"
    inner, outer = f"http://example.org/vs/{_uid()}", f"http://example.org/vs/{_uid()}"
    _store(
        services,
        _versioned_cs(system, "1", "p", "q"),
        _vs(inner, {"include": [{"system": system}]}),
        _vs(outer, {"include": [{"valueSet": [inner]}], "exclude": [{"system": system, "concept": [{"code": "q"}]}]}),
    )
    matcher = CountingMatcher(services.search)

    def codes() -> frozenset[tuple[str | None, str]]:
        with services.repo.session() as s:
            return codes_in_valueset(s, outer, matcher)

    assert codes() == _pairs(system, "p")
    assert len(matcher.calls) == 3  # outer, inner, the CodeSystem
    assert codes() == _pairs(system, "p")
    assert len(matcher.calls) == 3  # from the cache: nothing read again

    # a new version of the CodeSystem (an update) is seen
    with services.repo.session(write=True) as s:
        current = services.search.match(s, "CodeSystem", [("url", system)])[0]
        s.update(current, _versioned_cs(system, "1", "p", "q", "r"))
    assert codes() == _pairs(system, "p", "r")
    # the ValueSets had not changed: only the CodeSystem was read again
    assert [res_type for res_type, _ in matcher.calls[3:]] == ["CodeSystem"]

    # a second resource with the same url makes the reference ambiguous, cached or not
    _store(services, _versioned_cs(system, "2", "s"))
    assert "name one as" in _error(codes)

    # deleting the new one restores the answer
    with services.repo.session(write=True) as s:
        for version in services.search.match(s, "CodeSystem", [("url", system)], limit=5):
            if version.resource()["version"] == "2":
                s.delete(version)
    assert codes() == _pairs(system, "p", "r")

    # a change to the imported ValueSet is seen; listing concepts, it no longer depends on the CodeSystem
    def set_inner(include: dict[str, Any]) -> None:
        with services.repo.session(write=True) as s:
            s.update(services.search.match(s, "ValueSet", [("url", inner)])[0], _vs(inner, {"include": [include]}))

    set_inner({"system": system, "concept": [{"code": "q"}, {"code": "r"}]})
    assert codes() == _pairs(system, "r")
    with services.repo.session(write=True) as s:
        s.delete(services.search.match(s, "CodeSystem", [("url", system)])[0])
    assert codes() == _pairs(system, "r")
    # including the whole (now deleted) CodeSystem again: unknown, not empty
    set_inner({"system": system})
    assert "is not stored" in _error(codes)


def test_code_closure_reuses_the_parsed_codesystem(services, cs) -> None:  # type: ignore[no-untyped-def]
    matcher = CountingMatcher(services.search)
    with services.repo.session() as s:  # answered from the concept rows: the resource is not read
        assert code_closure(s, cs, "a1", "below", matcher) == {"a1", "c"}
        assert code_closure(s, cs, "a1", "above", matcher) == {"a1", "a", "root", "top"}
    assert matcher.calls == []
    from sqlalchemy import delete

    from fhir_server.storage.schema import terminology_concepts, terminology_edges, terminology_systems

    with services.repo.session(write=True) as s:  # as if stored before the rows existed (migration 0006)
        cs_id = s.conn.execute(terminology_systems.select().where(terminology_systems.c.url == cs)).first().cs_id
        for table in (terminology_edges, terminology_concepts, terminology_systems):
            s.conn.execute(delete(table).where(table.c.cs_id == cs_id))
    with services.repo.session() as s:
        assert code_closure(s, cs, "a1", "below", matcher) == {"a1", "c"}
        assert code_closure(s, cs, "a1", "above", matcher) == {"a1", "a", "root", "top"}
    assert len(matcher.calls) == 1  # the second closure used the parsed CodeSystem


def test_default_search_engine_is_used_when_none_is_given(services, cs) -> None:  # type: ignore[no-untyped-def]
    url = _filter_vs(services, cs, _f("concept", "=", "x"))
    with services.repo.session() as s:
        assert code_closure(s, cs, "c", "below") == {"c"}
        assert codes_in_valueset(s, url) == _pairs(cs, "x")


def test_caches_are_per_repository(services) -> None:  # type: ignore[no-untyped-def]
    assert caches_for(services.repo) is caches_for(services.repo)
    assert caches_for(services.repo) is not caches_for(object.__new__(type(services.repo)))


# -- pure parts ----------------------------------------------------------------------------


def test_lru_is_bounded_and_keeps_recently_used() -> None:
    lru: LRU[int] = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1
    lru.put("c", 3)
    assert (lru.get("a"), lru.get("b"), lru.get("c"), len(lru)) == (1, None, 3, 2)


def test_reference_parsing() -> None:
    assert parse("ValueSet", "http://x/vs|2").version == "2"
    assert parse("ValueSet", "http://x/vs").key == ("url", "ValueSet", "http://x/vs")
    assert parse("ValueSet", "ValueSet/abc").key == ("id", "ValueSet", "abc")
    assert parse("CodeSystem", "http://x/cs", "3") == parse("CodeSystem", "http://x/cs|3")
    with pytest.raises(FhirError):
        parse("CodeSystem", "http://x/cs|3", "4")
    with pytest.raises(FhirError):
        parse("ValueSet", "http://x/vs|")


def test_view_reads_hierarchy_without_a_database() -> None:
    view = CodeSystemView.from_resource(_hierarchy_cs("http://x/cs"))
    assert view.codes == ALL_HIERARCHY
    assert view.closure("root", "below") == set(ALL_HIERARCHY) - {"x", "top"}
