"""Concept rules and in-memory reading of a CodeSystem, without a database.

Specs: http://hl7.org/fhir/R4/codesystem.html (nested concepts, parent/child properties,
concept properties inactive/status/notSelectable), valueset-operation-expand.html (nesting).
"""

from __future__ import annotations

from typing import Any

import pytest

from fhir_server.errors import FhirError
from fhir_server.terminology.concepts import (
    Concept,
    SystemInfo,
    filter_words,
    fold,
    is_abstract,
    is_inactive,
    matches,
    searchable,
)
from fhir_server.terminology.expand import Entry, _nest, whole_systems
from fhir_server.terminology.lookup import lookup
from fhir_server.terminology.memory import MemoryContent
from fhir_server.terminology.subsumes import relation
from fhir_server.terminology.validate import Coded, answer, in_codesystem


def test_fold_is_case_accent_and_width_insensitive() -> None:
    assert fold("Ménière  DISEASE") == "meniere disease"
    assert fold("ＱＩ　气虚") == "qi 气虚"  # full-width letters and space (NFKD)
    assert filter_words("  Qi  虚 ") == ["qi", "虚"]
    assert filter_words(None) == [] and filter_words("") == []


def test_search_text_covers_code_display_and_designations() -> None:
    concept = {
        "code": "B",
        "display": "气虚质",
        "designation": [{"language": "en", "value": "Qi Deficiency"}, {"use": {}}],
    }
    text = searchable(concept)
    assert matches(text, ["气虚"]) and matches(text, ["qi", "deficiency"]) and matches(text, ["b"])
    assert not matches(text, ["qi", "yang"])
    assert matches(text, [])


@pytest.mark.parametrize(
    ("props", "inactive", "abstract"),
    [
        ([], False, False),
        ([{"code": "inactive", "valueBoolean": True}], True, False),
        ([{"code": "inactive", "valueBoolean": False}], False, False),
        ([{"code": "status", "valueCode": "retired"}], True, False),
        ([{"code": "status", "valueCode": "inactive"}], True, False),
        ([{"code": "status", "valueCode": "active"}], False, False),
        ([{"code": "notSelectable", "valueBoolean": True}], False, True),
    ],
)
def test_inactive_and_abstract(props: list[dict[str, Any]], inactive: bool, abstract: bool) -> None:
    concept = {"code": "c", "property": props}
    assert is_inactive(concept) is inactive
    assert is_abstract(concept) is abstract


def test_display_for_a_language_takes_sub_tags_both_ways() -> None:
    concept = Concept(
        "c",
        "气虚质",
        False,
        0,
        {"designation": [{"language": "en-GB", "value": "Qi deficiency"}, {"language": "zh", "value": "气虚"}]},
    )
    assert concept.display_for("en") == "Qi deficiency"
    assert concept.display_for("EN-gb") == "Qi deficiency"
    assert concept.display_for("zh-CN") == "气虚"
    assert concept.display_for("fr") == "气虚质" and concept.display_for(None) == "气虚质"
    assert concept.names() == ["气虚质", "Qi deficiency", "气虚"]


def _cs(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "url": "http://example.org/cs",
        "version": "1",
        "name": "Example",
        "status": "active",
        "content": "complete",
        "property": [{"code": "p", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code"}],
        "concept": [
            {"code": "r", "display": "Root", "concept": [{"code": "a", "concept": [{"code": "a1"}]}, {"code": "b"}]},
            {"code": "c", "property": [{"code": "p", "valueCode": "b"}, {"code": "p", "valueCode": "a"}]},
            {"code": "z", "property": [{"code": "status", "valueCode": "retired"}]},
        ],
        **extra,
    }


def test_memory_content_reads_nesting_and_the_declared_parent_property() -> None:
    content = MemoryContent(_cs())
    assert content.info.count == 6 and content.info.parent_property == "p"
    assert content.parents("c") == ["b", "a"] and content.children("a") == ["a1", "c"]
    assert content.is_ancestor("r", "c") and content.is_ancestor("a", "c") and not content.is_ancestor("c", "a")
    assert not content.is_ancestor("r", "r")
    assert content.count([], True) == 5 and content.page([], True, 4, 10) == (5, [content.get("c")])
    assert relation(content, "r", "a1") == "subsumes" and relation(content, "z", "r") == "not-subsumed"


def test_lookup_and_validate_on_memory_content() -> None:
    content = MemoryContent(_cs())
    out = lookup(content, "a", properties=["child"])
    assert out["parameter"][-2:] == [
        {"name": "property", "part": [{"name": "code", "valueCode": "child"}, {"name": "value", "valueCode": "a1"}]},
        {"name": "property", "part": [{"name": "code", "valueCode": "child"}, {"name": "value", "valueCode": "c"}]},
    ]
    assert _display(lookup(content, "a1")) == "a1"  # no display: the code
    with pytest.raises(FhirError) as info:
        lookup(content, "nope")
    assert info.value.status == 404
    verdict = in_codesystem(content, Coded("http://example.org/cs", "r", "1", "root"))
    assert verdict.valid and verdict.messages == [] and verdict.display == "Root"
    other_version = in_codesystem(content, Coded("http://example.org/cs", "r", "2"))
    assert not other_version.valid and "version 2" in other_version.messages[0]
    assert answer([other_version, verdict])["parameter"][0] == {"name": "result", "valueBoolean": True}


def _display(parameters: dict[str, Any]) -> str:
    return next(p["valueString"] for p in parameters["parameter"] if p["name"] == "display")


def test_codes_not_listed_or_not_subsumption_are_refused() -> None:
    with pytest.raises(FhirError) as info:
        relation(MemoryContent(_cs(hierarchyMeaning="part-of")), "r", "a")
    assert info.value.status == 422 and "part-of" in info.value.diagnostics
    with pytest.raises(FhirError) as info:
        lookup(MemoryContent(_cs(content="not-present", concept=[])), "r")
    assert info.value.status == 422 and "not-present" in info.value.diagnostics
    info_only = SystemInfo.from_header({"url": "u", "content": "supplement"}, None, 0)
    assert info_only.label == "CodeSystem u"


def _entries(*codes: str) -> list[Entry]:
    return [Entry("s", c) for c in codes]


def _shape(entries: list[Entry]) -> list[Any]:
    return [(e.code, _shape(e.children)) if e.children else e.code for e in entries]


def test_nesting_places_each_code_once_under_its_first_parent() -> None:
    entries = _entries("r", "a", "b", "c", "x", "y")
    edges = [("r", "a"), ("r", "b"), ("b", "c"), ("a", "c"), ("x", "y"), ("y", "x")]
    assert _shape(_nest(entries, edges)) == [("r", ["a", ("b", ["c"])]), ("x", ["y"])]  # the cycle is kept, once
    assert _shape(_nest(_entries("a", "b"), [])) == ["a", "b"]
    # a parent outside the page (or the value set) does not hide a code
    assert _shape(_nest(_entries("c"), [("b", "c")])) == ["c"]


@pytest.mark.parametrize(
    ("compose", "expansion", "parts"),
    [
        ({"include": [{"system": "a"}, {"system": "b", "version": "2"}]}, None, [("a", None), ("b", "2")]),
        ({"include": [{"system": "a", "concept": [{"code": "x"}]}]}, None, None),
        ({"include": [{"system": "a", "filter": [{"property": "concept", "op": "is-a", "value": "x"}]}]}, None, None),
        ({"include": [{"valueSet": ["v"]}]}, None, None),
        ({"include": [{"system": "a"}], "exclude": [{"system": "a", "concept": [{"code": "x"}]}]}, None, None),
        ({"include": [{"system": "a"}]}, {"contains": [{"system": "a", "code": "x"}]}, None),  # stored expansion wins
        ({"include": [{"system": "a"}]}, {"total": 5, "contains": [{"system": "a", "code": "x"}]}, [("a", None)]),
    ],
)
def test_whole_systems_detection(compose: dict[str, Any], expansion: dict[str, Any] | None, parts: Any) -> None:
    valueset: dict[str, Any] = {"resourceType": "ValueSet", "compose": compose}
    if expansion is not None:
        valueset["expansion"] = expansion
    assert whole_systems(valueset) == parts


def test_fold_is_exactly_the_string_search_folding() -> None:
    """``fold`` is a faster ``normalize_string`` (no length cut): the same text on every script."""
    import random

    from fhir_server.search.index import normalize_string

    rng = random.Random(4)
    samples = ["e\u0301 ǅ ﬁ Å Straße İstanbul ΆΈ", "x\u0903y\u093fz \u0345", "气虚质  阳虚 ＡＢ"]
    samples += ["".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(40)) for _ in range(200)]
    for text in samples:
        assert fold(text) == normalize_string(text, limit=None), text
