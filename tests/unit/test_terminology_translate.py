"""``$translate`` over ConceptMaps, without a database (http://hl7.org/fhir/R4/conceptmap.html)."""

from __future__ import annotations

from typing import Any

from fhir_server.terminology.translate import MAX_CHAIN, applies, translate
from fhir_server.terminology.validate import Coded

SEX = "urn:oid:2.16.156.10011.2.3.3.4"
GENDER = "http://hl7.org/fhir/administrative-gender"


def sex_map(**extra: Any) -> dict[str, Any]:
    """GB/T 2261.1 sex codes to FHIR administrative gender (the shape of our packaged map)."""
    return {
        "resourceType": "ConceptMap",
        "url": "http://example.org/cm/sex",
        "sourceCanonical": "http://example.org/vs/sex|1",
        "targetCanonical": "http://hl7.org/fhir/ValueSet/administrative-gender",
        "group": [
            {
                "source": SEX,
                "target": GENDER,
                "element": [
                    {"code": "1", "display": "男性", "target": [{"code": "male", "equivalence": "equivalent"}]},
                    {"code": "2", "display": "女性", "target": [{"code": "female", "equivalence": "equivalent"}]},
                    {"code": "9", "display": "未说明的性别", "target": [{"code": "unknown", "equivalence": "wider"}]},
                    {
                        "code": "0",
                        "display": "未知的性别",
                        "target": [{"code": "unknown", "equivalence": "equivalent"}],
                    },
                    {
                        "code": "5",
                        "target": [
                            {
                                "code": "other",
                                "equivalence": "inexact",
                                "dependsOn": [{"property": "http://example.org/sex-at-birth", "value": "x"}],
                                "product": [
                                    {"property": "http://example.org/note", "system": "http://n", "value": "n1"}
                                ],
                            }
                        ],
                    },
                ],
                "unmapped": {"mode": "fixed", "code": "unknown", "display": "Unknown"},
            }
        ],
        **extra,
    }


def _matches(out: dict[str, Any]) -> list[tuple[str, str | None, str | None]]:
    found = []
    for p in out["parameter"]:
        if p["name"] != "match":
            continue
        parts = {q["name"]: q for q in p["part"]}
        concept = parts.get("concept", {}).get("valueCoding", {})
        found.append((parts["equivalence"]["valueCode"], concept.get("system"), concept.get("code")))
    return found


def _result(out: dict[str, Any]) -> bool:
    return out["parameter"][0]["valueBoolean"]


def _message(out: dict[str, Any]) -> str:
    return next((p["valueString"] for p in out["parameter"] if p["name"] == "message"), "")


def test_forward_and_unmapped_fixed() -> None:
    out = translate([sex_map()], [Coded(SEX, "1")])
    assert _result(out) and _matches(out) == [("equivalent", GENDER, "male")]
    source = next(q for q in next(p for p in out["parameter"] if p["name"] == "match")["part"] if q["name"] == "source")
    assert source == {"name": "source", "valueUri": "http://example.org/cm/sex"}
    fixed = translate([sex_map()], [Coded(SEX, "7")])
    assert _matches(fixed) == [("inexact", GENDER, "unknown")]


def test_reverse_turns_equivalence_and_collects_every_source() -> None:
    out = translate([sex_map()], [Coded(GENDER, "unknown")], reverse=True)
    assert _matches(out) == [("narrower", SEX, "9"), ("equivalent", SEX, "0")]
    concept = next(
        q for q in next(p for p in out["parameter"] if p["name"] == "match")["part"] if q["name"] == "concept"
    )
    assert concept["valueCoding"] == {"system": SEX, "code": "9", "display": "未说明的性别"}
    assert _matches(translate([sex_map()], [Coded(GENDER, "male")], reverse=True, target_system="http://x")) == []


def test_dependencies_are_reported_and_products_returned() -> None:
    out = translate([sex_map()], [Coded(SEX, "5")])
    assert _result(out) and "depends on http://example.org/sex-at-birth" in _message(out)
    match = next(p for p in out["parameter"] if p["name"] == "match")
    product = next(q for q in match["part"] if q["name"] == "product")
    assert product["part"] == [
        {"name": "element", "valueUri": "http://example.org/note"},
        {"name": "concept", "valueCoding": {"system": "http://n", "code": "n1"}},
    ]


def test_scope_of_a_map() -> None:
    cmap = sex_map()
    assert applies(cmap, "http://example.org/vs/sex", None, False)  # versions are not compared
    assert applies(cmap, None, "http://hl7.org/fhir/ValueSet/administrative-gender", False)
    assert not applies(cmap, "http://example.org/vs/other", None, False)
    assert applies(cmap, "http://hl7.org/fhir/ValueSet/administrative-gender", "http://example.org/vs/sex", True)
    assert applies({"group": []}, "anything", "anything", False)  # a map that declares no scope
    out = translate([cmap], [Coded(SEX, "1")], target="http://example.org/vs/other")
    assert not _result(out) and "does not map" in _message(out) and "No translation" in _message(out)


def test_versions_of_the_source_system() -> None:
    cmap = sex_map()
    cmap["group"][0]["sourceVersion"] = "2003"
    assert _matches(translate([cmap], [Coded(SEX, "1", "2003")])) == [("equivalent", GENDER, "male")]
    assert _matches(translate([cmap], [Coded(SEX, "1", "1988")])) == []
    assert _matches(translate([cmap], [Coded(SEX, "1")])) == [("equivalent", GENDER, "male")]


def test_other_map_chains_and_stops() -> None:
    first = {
        "url": "m1",
        "group": [
            {
                "source": "a",
                "target": "b",
                "element": [{"code": "x", "target": [{"code": "y", "equivalence": "equal"}]}],
                "unmapped": {"mode": "other-map", "url": "m2"},
            }
        ],
    }  # noqa: E501
    second = {
        "url": "m2",
        "group": [
            {
                "source": "a",
                "target": "c",
                "element": [{"code": "z", "target": [{"code": "zz", "equivalence": "wider"}]}],
            }
        ],
    }  # noqa: E501
    maps = {"m1": first, "m2": second}
    out = translate([first], [Coded("a", "z")], resolve=maps.get)
    assert _matches(out) == [("wider", "c", "zz")]
    missing = translate([first], [Coded("a", "z")], resolve=lambda _url: None)
    assert not _result(missing) and "m2, which is not stored" in _message(missing)
    loop = {
        "url": "m3",
        "group": [
            {"source": "a", "target": "b", "element": [{"code": "q"}], "unmapped": {"mode": "other-map", "url": "m3"}}
        ],
    }  # noqa: E501
    looped = translate([loop], [Coded("a", "z")], resolve=lambda _url: loop)
    assert not _result(looped) and f"beyond {MAX_CHAIN} maps" in _message(looped)


def test_unmatched_and_disjoint_are_not_a_result() -> None:
    cmap = {"url": "m", "group": [{"source": "a", "target": "b", "element": [
        {"code": "x", "target": [{"equivalence": "unmatched"}]},
        {"code": "y", "target": [{"code": "w", "equivalence": "disjoint"}]},
    ]}]}  # fmt: skip
    assert not _result(translate([cmap], [Coded("a", "x")]))
    out = translate([cmap], [Coded("a", "y")])
    assert not _result(out) and _matches(out) == [("disjoint", "b", "w")]
    both = translate([cmap, sex_map()], [Coded("a", "y"), Coded(SEX, "2")])
    assert _result(both) and len(_matches(both)) == 2
