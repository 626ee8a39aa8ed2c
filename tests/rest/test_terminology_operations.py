"""Terminology operations over HTTP (IHE SVCM ITI-97..101 shapes), on SQLite and PostgreSQL.

Specs: http://hl7.org/fhir/R4/codesystem-operation-lookup.html, valueset-operation-expand.html,
valueset-operation-validate-code.html, codesystem-operation-validate-code.html,
codesystem-operation-subsumes.html, conceptmap-operation-translate.html.

Every test runs twice per database: with the CodeSystems' concept rows (``storage="rows"``, how
everything stored since migration 0006 is answered) and with the rows removed
(``storage="content"``, a database written before them: the CodeSystem is parsed from its
content), so both readings must give the same answers. The resources are created here, under
urls unique to the run (the database is shared by the whole test session).
"""

from __future__ import annotations

import json
import urllib.parse
import uuid
from typing import Any

import pytest
from sqlalchemy import delete

from fhir_server.storage.schema import terminology_concepts, terminology_edges, terminology_systems

JSON = "application/fhir+json"
UID = uuid.uuid4().hex[:8]
BASE = f"http://example.org/tx-{UID}"


class Tx:
    """The resources of one storage variant: urls and ids."""

    def __init__(self, storage: str) -> None:
        self.storage = storage
        tag = f"{UID}-{storage}"
        self.cs_id = f"tcm-{tag}"
        self.cs = f"{BASE}/{storage}/CodeSystem/tcm"
        self.vs_all = f"{BASE}/{storage}/ValueSet/tcm-all"
        self.vs_id = f"tcm-all-{tag}"
        self.vs_listed = f"{BASE}/{storage}/ValueSet/tcm-listed"
        self.vs_deficient = f"{BASE}/{storage}/ValueSet/tcm-deficient"
        self.vs_active = f"{BASE}/{storage}/ValueSet/tcm-active"
        self.v3 = f"{BASE}/{storage}/CodeSystem/v3"
        self.cm = f"{BASE}/{storage}/ConceptMap/tcm-to-v3"
        self.cm_id = f"tcm-to-v3-{tag}"
        self.grouped = f"{BASE}/{storage}/CodeSystem/grouped"


def codesystem(tx: Tx) -> dict[str, Any]:
    """constitution ⊃ {balanced, deficiency ⊃ {qi ⊃ qi-mild, yang, yin}, excess ⊃ {phlegm, damp-heat*}};
    damp-heat is under excess by a parent property, not by nesting; retired is retired;
    group is abstract (notSelectable); designations in English; a status property."""
    return {
        "resourceType": "CodeSystem",
        "id": tx.cs_id,
        "url": tx.cs,
        "version": "2025",
        "name": "TcmConstitutionTest",
        "title": "TCM constitution (test)",
        "status": "active",
        "content": "complete",
        "hierarchyMeaning": "is-a",
        "property": [
            {"code": "parent", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code"},
            {"code": "status", "type": "code"},
            {"code": "notSelectable", "uri": "http://hl7.org/fhir/concept-properties#notSelectable", "type": "boolean"},
            {"code": "letter", "type": "string"},
        ],
        "concept": [
            {
                "code": "constitution",
                "display": "体质",
                "concept": [
                    {
                        "code": "balanced",
                        "display": "平和质",
                        "designation": [{"language": "en", "value": "Balanced constitution"}],
                        "property": [{"code": "letter", "valueString": "A"}],
                    },
                    {
                        "code": "deficiency",
                        "display": "虚性体质",
                        "concept": [
                            {
                                "code": "qi",
                                "display": "气虚质",
                                "definition": "元气不足",
                                "designation": [
                                    {"language": "en", "value": "Qi-deficiency constitution"},
                                    {
                                        "language": "zh-CN",
                                        "use": {"system": "http://snomed.info/sct", "code": "900000000000013009"},
                                        "value": "气虚体质",
                                    },
                                ],
                                "property": [{"code": "letter", "valueString": "B"}],
                                "concept": [{"code": "qi-mild", "display": "轻度气虚"}],
                            },
                            {"code": "yang", "display": "阳虚质", "property": [{"code": "letter", "valueString": "C"}]},
                            {"code": "yin", "display": "阴虚质", "property": [{"code": "letter", "valueString": "D"}]},
                        ],
                    },
                    {"code": "excess", "display": "实性体质", "concept": [{"code": "phlegm", "display": "痰湿质"}]},
                ],
            },
            {"code": "damp-heat", "display": "湿热质", "property": [{"code": "parent", "valueCode": "excess"}]},
            {"code": "retired", "display": "旧分类", "property": [{"code": "status", "valueCode": "retired"}]},
            {"code": "group", "display": "分组", "property": [{"code": "notSelectable", "valueBoolean": True}]},
        ],
    }


#: flat expansion order: document order, nested concepts after their parent
ALL_CODES = [
    "constitution",
    "balanced",
    "deficiency",
    "qi",
    "qi-mild",
    "yang",
    "yin",
    "excess",
    "phlegm",
    "damp-heat",
    "retired",
    "group",
]


def resources(tx: Tx) -> list[dict[str, Any]]:
    v3 = {
        "resourceType": "CodeSystem",
        "id": f"v3-{tx.cs_id}",
        "url": tx.v3,
        "status": "active",
        "content": "complete",
        "concept": [
            {"code": "L", "display": "Low"},
            {"code": "N", "display": "Normal"},
            {"code": "H", "display": "High"},
        ],
    }
    return [
        codesystem(tx),
        v3,
        {
            "resourceType": "CodeSystem",
            "id": f"grouped-{tx.cs_id}",
            "url": tx.grouped,
            "status": "active",
            "content": "complete",
            "hierarchyMeaning": "grouped-by",
            "concept": [{"code": "g", "concept": [{"code": "m"}]}],
        },
        {
            "resourceType": "ValueSet",
            "id": tx.vs_id,
            "url": tx.vs_all,
            "version": "1",
            "name": "TcmAll",
            "status": "active",
            "compose": {"include": [{"system": tx.cs}]},
        },
        {
            "resourceType": "ValueSet",
            "id": f"listed-{tx.cs_id}",
            "url": tx.vs_listed,
            "status": "active",
            "compose": {
                "include": [
                    {
                        "system": tx.cs,
                        "concept": [{"code": "yin", "display": "阴虚体质"}, {"code": "qi"}],
                    },
                    {"system": tx.v3, "concept": [{"code": "H"}]},
                ]
            },
        },
        {
            "resourceType": "ValueSet",
            "id": f"deficient-{tx.cs_id}",
            "url": tx.vs_deficient,
            "status": "active",
            "compose": {
                "include": [
                    {"system": tx.cs, "filter": [{"property": "concept", "op": "is-a", "value": "deficiency"}]}
                ],
                "exclude": [{"system": tx.cs, "concept": [{"code": "yang"}]}],
            },
        },
        {
            "resourceType": "ValueSet",
            "id": f"active-{tx.cs_id}",
            "url": tx.vs_active,
            "status": "active",
            "compose": {"inactive": False, "include": [{"system": tx.cs}]},
        },
        {
            "resourceType": "ConceptMap",
            "id": tx.cm_id,
            "url": tx.cm,
            "status": "active",
            "sourceUri": tx.vs_all,
            "targetUri": f"{BASE}/ValueSet/v3",
            "group": [
                {
                    "source": tx.cs,
                    "target": tx.v3,
                    "element": [
                        {"code": "qi", "target": [{"code": "L", "display": "Low", "equivalence": "wider"}]},
                        {"code": "yang", "target": [{"code": "L", "equivalence": "wider"}]},
                        {"code": "balanced", "target": [{"code": "N", "equivalence": "equivalent"}]},
                        {"code": "phlegm", "target": [{"equivalence": "unmatched"}]},
                    ],
                },
                {
                    "source": tx.cs,
                    "target": f"{BASE}/{tx.storage}/CodeSystem/same",
                    "element": [{"code": "group", "target": [{"code": "group", "equivalence": "equal"}]}],
                    "unmapped": {"mode": "provided"},
                },
            ],
        },
    ]


@pytest.fixture(scope="module", params=["rows", "content"])
def tx(request: pytest.FixtureRequest, app, services) -> Tx:  # type: ignore[no-untyped-def]
    variant = Tx(request.param)
    client = app.test_client()
    for resource in resources(variant):
        resp = client.put(
            f"/fhir/{resource['resourceType']}/{resource['id']}", data=json.dumps(resource), content_type=JSON
        )
        assert resp.status_code in (200, 201), resp.get_json()
    if variant.storage == "content":  # as if stored before migration 0006: no concept rows
        with services.repo.session(write=True) as session:
            for table in (terminology_edges, terminology_concepts, terminology_systems):
                session.conn.execute(delete(table).where(table.c.cs_id.like(f"%{variant.cs_id}")))
    return variant


# -- helpers --------------------------------------------------------------------------------


def _get(client, path: str, **params: Any):  # type: ignore[no-untyped-def]
    items = [(k, v) for k, vs in params.items() for v in (vs if isinstance(vs, list) else [vs])]
    query = urllib.parse.urlencode([(k, str(v).lower() if isinstance(v, bool) else v) for k, v in items])
    return client.get(f"/fhir/{path}?{query}")


def _post(client, path: str, *parts: dict[str, Any]):  # type: ignore[no-untyped-def]
    body = {"resourceType": "Parameters", "parameter": list(parts)}
    return client.post(f"/fhir/{path}", data=json.dumps(body), content_type=JSON)


def _ok(resp) -> dict[str, Any]:  # type: ignore[no-untyped-def]
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()


def _error(resp, status: int) -> str:  # type: ignore[no-untyped-def]
    body = resp.get_json()
    assert resp.status_code == status, body
    assert body["resourceType"] == "OperationOutcome"
    return body["issue"][0]["diagnostics"]


def _values(parameters: dict[str, Any], name: str) -> list[Any]:
    out = []
    for p in parameters.get("parameter", []):
        if p["name"] == name:
            out.append(next((v for k, v in p.items() if k.startswith("value")), p.get("part")))
    return out


def _one(parameters: dict[str, Any], name: str) -> Any:
    values = _values(parameters, name)
    assert len(values) == 1, (name, parameters)
    return values[0]


def _parts(part: list[dict[str, Any]]) -> dict[str, Any]:
    return {p["name"]: next(v for k, v in p.items() if k.startswith("value") or k == "part") for p in part}


def _properties(parameters: dict[str, Any]) -> list[tuple[str, Any, str | None]]:
    out = []
    for part in _values(parameters, "property"):
        fields = _parts(part)
        out.append((fields["code"], fields["value"], fields.get("description")))
    return out


def _codes(contains: list[dict[str, Any]]) -> list[str]:
    """Codes of a (possibly nested) expansion in document order."""
    out = []
    for item in contains:
        out.append(item["code"])
        out += _codes(item.get("contains", []))
    return out


# -- $lookup --------------------------------------------------------------------------------


def test_lookup_returns_display_designations_properties_and_hierarchy(client, tx: Tx) -> None:
    body = _ok(_get(client, "CodeSystem/$lookup", system=tx.cs, code="qi"))
    assert _one(body, "name") == "TCM constitution (test)"
    assert _one(body, "version") == "2025"
    assert _one(body, "display") == "气虚质"
    designations = [_parts(d) for d in _values(body, "designation")]
    assert {"language": "en", "value": "Qi-deficiency constitution"} in designations
    assert {
        "language": "zh-CN",
        "use": {"system": "http://snomed.info/sct", "code": "900000000000013009"},
        "value": "气虚体质",
    } in designations
    props = _properties(body)
    assert ("definition", "元气不足", None) in props
    assert ("letter", "B", None) in props
    assert ("parent", "deficiency", "虚性体质") in props
    assert ("child", "qi-mild", "轻度气虚") in props


def test_lookup_hierarchy_stated_by_a_parent_property(client, tx: Tx) -> None:
    props = _properties(_ok(_get(client, "CodeSystem/$lookup", system=tx.cs, code="damp-heat")))
    assert [(c, v) for c, v, _ in props if c in ("parent", "child")] == [("parent", "excess")]
    excess = _properties(_ok(_get(client, "CodeSystem/$lookup", system=tx.cs, code="excess")))
    assert [v for c, v, _ in excess if c == "child"] == ["phlegm", "damp-heat"]


def test_lookup_by_post_with_a_coding_display_language_and_chosen_properties(client, tx: Tx) -> None:
    body = _ok(
        _post(
            client,
            "CodeSystem/$lookup",
            {"name": "coding", "valueCoding": {"system": tx.cs, "code": "qi", "version": "2025"}},
            {"name": "displayLanguage", "valueCode": "en"},
            {"name": "property", "valueCode": "parent"},
            {"name": "property", "valueCode": "lang.en"},
        )
    )
    assert _one(body, "display") == "Qi-deficiency constitution"
    assert [_parts(d)["value"] for d in _values(body, "designation")] == ["Qi-deficiency constitution"]
    assert [c for c, _, _ in _properties(body)] == ["parent"]


def test_lookup_errors(client, tx: Tx) -> None:
    assert "no code 'nope'" in _error(_get(client, "CodeSystem/$lookup", system=tx.cs, code="nope"), 404)
    assert "not stored" in _error(_get(client, "CodeSystem/$lookup", system=f"{tx.cs}-missing", code="qi"), 404)
    assert "not stored" in _error(_get(client, "CodeSystem/$lookup", system=tx.cs, code="qi", version="1999"), 404)
    resp = _get(client, "CodeSystem/$lookup", code="qi")
    assert "system" in _error(resp, 400)
    assert resp.get_json()["issue"][0]["expression"] == ["system"]
    assert "only one of code, coding" in _error(
        _get(client, "CodeSystem/$lookup", system=tx.cs, code="qi", coding=f"{tx.cs}|qi"), 400
    )
    assert "no parameter 'cod'" in _error(_get(client, "CodeSystem/$lookup", system=tx.cs, cod="qi"), 400)
    assert "not supported" in _error(_get(client, "CodeSystem/$lookup", system=tx.cs, code="qi", date="2020"), 400)
    assert "more than once" in _error(_get(client, "CodeSystem/$lookup", system=tx.cs, code=["qi", "yin"]), 400)
    # $lookup is a type-level operation only (R4): an instance-level call is not routed
    assert _get(client, f"CodeSystem/{tx.cs_id}/$lookup", code="qi").status_code in (404, 405)


# -- $expand --------------------------------------------------------------------------------


def test_expand_whole_hierarchical_system_is_nested(client, tx: Tx) -> None:
    body = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all))
    assert body["resourceType"] == "ValueSet" and body["url"] == tx.vs_all and "compose" not in body
    expansion = body["expansion"]
    assert expansion["total"] == len(ALL_CODES)
    assert expansion["identifier"].startswith("urn:uuid:") and expansion["timestamp"]
    assert {"name": "used-codesystem", "valueUri": f"{tx.cs}|2025"} in expansion["parameter"]
    tops = expansion["contains"]
    assert [c["code"] for c in tops] == ["constitution", "retired", "group"]
    assert _codes(tops) == ALL_CODES
    constitution = tops[0]
    assert [c["code"] for c in constitution["contains"]] == ["balanced", "deficiency", "excess"]
    excess = constitution["contains"][2]
    assert [c["code"] for c in excess["contains"]] == ["phlegm", "damp-heat"]  # the parent property nests too
    qi = constitution["contains"][1]["contains"][0]
    assert qi == {
        "system": tx.cs,
        "version": "2025",
        "code": "qi",
        "display": "气虚质",
        "contains": [{"system": tx.cs, "version": "2025", "code": "qi-mild", "display": "轻度气虚"}],
    }
    assert tops[1].get("inactive") is True and tops[2].get("abstract") is True


def test_expand_exclude_nested_is_flat_in_document_order(client, tx: Tx) -> None:
    expansion = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, excludeNested=True))["expansion"]
    assert [c["code"] for c in expansion["contains"]] == ALL_CODES
    assert all("contains" not in c for c in expansion["contains"])
    assert {"name": "excludeNested", "valueBoolean": True} in expansion["parameter"]


def test_expand_filter_in_chinese_and_english(client, tx: Tx) -> None:
    expansion = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="气虚"))["expansion"]
    assert expansion["total"] == 2
    assert [(c["code"], c["display"]) for c in expansion["contains"]] == [("qi", "气虚质"), ("qi-mild", "轻度气虚")]
    assert {"name": "filter", "valueString": "气虚"} in expansion["parameter"]
    # designations are searched too, case-insensitively; every word must match
    found = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="QI DEFICIENCY"))["expansion"]
    assert [c["code"] for c in found["contains"]] == ["qi"]
    assert _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="qi balanced"))["expansion"]["total"] == 0
    assert _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="质"))["expansion"]["total"] == 9


def test_expand_paging_is_stable_and_complete(client, tx: Tx) -> None:
    seen: list[str] = []
    for offset in range(0, 14, 5):
        expansion = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, offset=offset, count=5))["expansion"]
        assert expansion["total"] == len(ALL_CODES) and expansion["offset"] == offset
        page = [c["code"] for c in expansion.get("contains", [])]
        assert all("contains" not in c for c in expansion.get("contains", []))  # paging is flat
        assert page == ALL_CODES[offset : offset + 5]
        seen += page
    assert seen == ALL_CODES
    again = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, offset=5, count=5))["expansion"]
    assert [c["code"] for c in again["contains"]] == ALL_CODES[5:10]
    count_only = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, count=0))["expansion"]
    assert count_only["total"] == len(ALL_CODES) and "contains" not in count_only
    filtered = _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="质", offset=2, count=3))["expansion"]
    assert filtered["total"] == 9  # 体质 虚性体质 实性体质 and the six 质 types (not 轻度气虚, 旧分类, 分组)
    assert [c["code"] for c in filtered["contains"]] == ["deficiency", "qi", "yang"]


def test_expand_designations_language_and_active_only(client, tx: Tx) -> None:
    expansion = _ok(
        _get(
            client,
            f"ValueSet/{tx.vs_id}/$expand",
            includeDesignations=True,
            displayLanguage="en",
            activeOnly=True,
            excludeNested=True,
        )
    )["expansion"]
    by_code = {c["code"]: c for c in expansion["contains"]}
    assert "retired" not in by_code and expansion["total"] == len(ALL_CODES) - 1
    assert by_code["balanced"]["display"] == "Balanced constitution"
    assert by_code["yin"]["display"] == "阴虚质"  # no English designation: the display
    assert {"language": "en", "value": "Qi-deficiency constitution"} in by_code["qi"]["designation"]
    assert "designation" not in by_code["yin"]
    inactive_excluded = _ok(_get(client, "ValueSet/$expand", url=tx.vs_active, excludeNested=True))["expansion"]
    assert "retired" not in [c["code"] for c in inactive_excluded["contains"]]


def test_expand_composed_value_sets(client, tx: Tx) -> None:
    listed = _ok(_get(client, "ValueSet/$expand", url=tx.vs_listed))["expansion"]
    assert [(c["system"], c["code"], c.get("display")) for c in listed["contains"]] == [
        (tx.cs, "yin", "阴虚体质"),  # the value set's own display wins
        (tx.cs, "qi", "气虚质"),  # else the code system's
        (tx.v3, "H", "High"),
    ]
    deficient = _ok(_get(client, "ValueSet/$expand", url=tx.vs_deficient))["expansion"]
    assert [c["code"] for c in deficient["contains"]] == ["deficiency", "qi", "qi-mild", "yin"]
    page = _ok(_get(client, "ValueSet/$expand", url=tx.vs_deficient, filter="气虚", count=1, offset=1))["expansion"]
    assert page["total"] == 2 and [c["code"] for c in page["contains"]] == ["qi-mild"]


def test_expand_a_posted_value_set(client, tx: Tx) -> None:
    valueset = {
        "resourceType": "ValueSet",
        "status": "draft",
        "compose": {"include": [{"system": tx.cs, "filter": [{"property": "letter", "op": "in", "value": "A,C"}]}]},
    }
    body = _ok(_post(client, "ValueSet/$expand", {"name": "valueSet", "resource": valueset}))
    assert [c["code"] for c in body["expansion"]["contains"]] == ["balanced", "yang"]
    assert body["status"] == "draft"


def test_expand_too_costly_names_the_limit(client, tx: Tx, monkeypatch: pytest.MonkeyPatch) -> None:
    from fhir_server.terminology import expand

    monkeypatch.setattr(expand, "MAX_EXPANSION", 5)
    for url in (tx.vs_all, tx.vs_deficient):
        resp = _get(client, "ValueSet/$expand", url=url, count=6)
        assert "(5)" in _error(resp, 422)
        assert resp.get_json()["issue"][0]["code"] == "too-costly"
    resp = _get(client, "ValueSet/$expand", url=tx.vs_all)
    assert "has 12 codes" in _error(resp, 422) and resp.get_json()["issue"][0]["code"] == "too-costly"
    assert len(_ok(_get(client, "ValueSet/$expand", url=tx.vs_all, count=5))["expansion"]["contains"]) == 5
    assert _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, filter="虚"))["expansion"]["total"] == 5


def test_expand_errors(client, tx: Tx) -> None:
    assert "not stored" in _error(_get(client, "ValueSet/$expand", url=f"{tx.vs_all}-missing"), 404)
    assert "not stored" in _error(_get(client, "ValueSet/$expand", url=tx.vs_all, valueSetVersion="9"), 404)
    assert (
        _ok(_get(client, "ValueSet/$expand", url=tx.vs_all, valueSetVersion="1", count=0))["expansion"]["total"] == 12
    )
    assert "not stored" in _error(_get(client, "ValueSet/no-such-vs/$expand"), 404)
    assert "needs url" in _error(_get(client, "ValueSet/$expand"), 400)
    assert "takes no url" in _error(_get(client, f"ValueSet/{tx.vs_id}/$expand", url=tx.vs_all), 400)
    assert "true or false" in _error(_get(client, "ValueSet/$expand", url=tx.vs_all, activeOnly="yes"), 400)
    assert "whole number" in _error(_get(client, "ValueSet/$expand", url=tx.vs_all, offset=-1), 400)
    assert "not supported" in _error(_get(client, "ValueSet/$expand", url=tx.vs_all, context="x"), 400)
    broken = {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [{"system": f"{tx.cs}-gone"}]}}
    assert "not stored" in _error(_post(client, "ValueSet/$expand", {"name": "valueSet", "resource": broken}), 422)
    assert "must be a Parameters" in _error(
        client.post("/fhir/ValueSet/$expand", data=json.dumps(broken), content_type=JSON), 400
    )


# -- $validate-code -------------------------------------------------------------------------


def test_validate_code_in_a_value_set(client, tx: Tx) -> None:
    ok = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_all, system=tx.cs, code="qi"))
    assert _one(ok, "result") is True and _one(ok, "display") == "气虚质" and not _values(ok, "message")
    missing = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_deficient, system=tx.cs, code="yang"))
    assert _one(missing, "result") is False and "not in" in _one(missing, "message")
    unknown = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_all, system=tx.cs, code="nope"))
    assert _one(unknown, "result") is False
    other_system = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_all, system=tx.v3, code="H"))
    assert _one(other_system, "result") is False and "does not include" in _one(other_system, "message")
    listed = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_listed, coding=f"{tx.v3}|H"))
    assert _one(listed, "result") is True and _one(listed, "display") == "High"
    retired = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_active, system=tx.cs, code="retired"))
    assert _one(retired, "result") is False and "inactive" in _one(retired, "message")
    instance = _ok(_get(client, f"ValueSet/{tx.vs_id}/$validate-code", system=tx.cs, code="phlegm"))
    assert _one(instance, "result") is True


def test_validate_code_wrong_display_is_a_warning(client, tx: Tx) -> None:
    body = _ok(_get(client, "ValueSet/$validate-code", url=tx.vs_all, system=tx.cs, code="qi", display="阳虚质"))
    assert _one(body, "result") is True
    assert "'阳虚质' is not a display" in _one(body, "message") and "'气虚质'" in _one(body, "message")
    assert _one(body, "display") == "气虚质"
    by_designation = _ok(
        _get(
            client,
            "ValueSet/$validate-code",
            url=tx.vs_all,
            system=tx.cs,
            code="qi",
            display="qi-DEFICIENCY constitution",
        )
    )
    assert _one(by_designation, "result") is True and not _values(by_designation, "message")


def test_validate_code_codeable_concept_and_abstract(client, tx: Tx) -> None:
    concept = {"coding": [{"system": "http://other.org", "code": "x"}, {"system": tx.cs, "code": "yin"}]}
    body = _ok(
        _post(
            client,
            "ValueSet/$validate-code",
            {"name": "url", "valueUri": tx.vs_all},
            {"name": "codeableConcept", "valueCodeableConcept": concept},
        )
    )
    assert _one(body, "result") is True and "http://other.org#x" in _one(body, "message")
    assert _one(body, "display") == "阴虚质"
    none = {"coding": [{"system": tx.cs, "code": "nope"}]}
    body = _ok(
        _post(
            client,
            "ValueSet/$validate-code",
            {"name": "url", "valueUri": tx.vs_all},
            {"name": "codeableConcept", "valueCodeableConcept": none},
        )
    )
    assert _one(body, "result") is False
    allowed = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, code="group"))
    assert _one(allowed, "result") is True
    refused = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, code="group", abstract=False))
    assert _one(refused, "result") is False and "abstract" in _one(refused, "message")


def test_validate_code_in_a_code_system(client, tx: Tx) -> None:
    ok = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, code="damp-heat", display="湿热质"))
    assert _one(ok, "result") is True and not _values(ok, "message")
    instance = _ok(_get(client, f"CodeSystem/{tx.cs_id}/$validate-code", code="yin", version="2025"))
    assert _one(instance, "result") is True
    wrong_version = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, coding=f"{tx.cs}|qi", version="2025"))
    assert _one(wrong_version, "result") is True
    other = _ok(
        _post(
            client,
            "CodeSystem/$validate-code",
            {"name": "url", "valueUri": tx.cs},
            {"name": "coding", "valueCoding": {"system": tx.v3, "code": "H"}},
        )
    )
    assert _one(other, "result") is False and "not from" in _one(other, "message")
    retired = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, code="retired"))
    assert _one(retired, "result") is True and "inactive" in _one(retired, "message")
    unknown = _ok(_get(client, "CodeSystem/$validate-code", url=tx.cs, code="nope"))
    assert _one(unknown, "result") is False
    posted = {
        "resourceType": "CodeSystem",
        "url": "http://posted.org",
        "status": "draft",
        "content": "complete",
        "concept": [{"code": "p", "display": "P"}],
    }
    body = _ok(
        _post(
            client,
            "CodeSystem/$validate-code",
            {"name": "codeSystem", "resource": posted},
            {"name": "code", "valueCode": "p"},
        )
    )
    assert _one(body, "result") is True and _one(body, "display") == "P"


def test_validate_code_errors(client, tx: Tx) -> None:
    assert "not stored" in _error(
        _get(client, "ValueSet/$validate-code", url=f"{tx.vs_all}-x", system=tx.cs, code="qi"), 404
    )
    assert "not stored" in _error(_get(client, "CodeSystem/$validate-code", url=f"{tx.cs}-x", code="qi"), 404)
    assert "not stored" in _error(_get(client, "CodeSystem/nope-nope/$validate-code", code="qi"), 404)
    assert "system" in _error(_get(client, "ValueSet/$validate-code", url=tx.vs_all, code="qi"), 400)
    assert "give code" in _error(_get(client, "ValueSet/$validate-code", url=tx.vs_all), 400)
    assert "only one of" in _error(
        _get(client, "ValueSet/$validate-code", url=tx.vs_all, system=tx.cs, code="qi", coding=f"{tx.cs}|qi"), 400
    )
    assert "display goes with code" in _error(
        _get(client, "ValueSet/$validate-code", url=tx.vs_all, coding=f"{tx.cs}|qi", display="x"), 400
    )
    assert "POSTed" in _error(_get(client, "ValueSet/$validate-code", url=tx.vs_all, codeableConcept="x"), 400)
    assert "system|code" in _error(_get(client, "ValueSet/$validate-code", url=tx.vs_all, coding="qi"), 400)


# -- $subsumes ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "outcome"),
    [
        ("constitution", "qi-mild", "subsumes"),  # three levels down
        ("qi-mild", "deficiency", "subsumed-by"),
        ("excess", "damp-heat", "subsumes"),  # by the parent property
        ("constitution", "damp-heat", "subsumes"),  # property then nesting
        ("qi", "qi", "equivalent"),
        ("qi", "yang", "not-subsumed"),  # siblings
        ("qi-mild", "phlegm", "not-subsumed"),
        ("retired", "constitution", "not-subsumed"),
    ],
)
def test_subsumes_on_a_multi_level_hierarchy(client, tx: Tx, a: str, b: str, outcome: str) -> None:
    assert _one(_ok(_get(client, "CodeSystem/$subsumes", system=tx.cs, codeA=a, codeB=b)), "outcome") == outcome


def test_subsumes_instance_codings_and_post(client, tx: Tx) -> None:
    body = _ok(_get(client, f"CodeSystem/{tx.cs_id}/$subsumes", codeA="deficiency", codeB="yin"))
    assert _one(body, "outcome") == "subsumes"
    body = _ok(
        _post(
            client,
            "CodeSystem/$subsumes",
            {"name": "codingA", "valueCoding": {"system": tx.cs, "code": "qi-mild"}},
            {"name": "codingB", "valueCoding": {"system": tx.cs, "code": "constitution"}},
        )
    )
    assert _one(body, "outcome") == "subsumed-by"


def test_subsumes_errors(client, tx: Tx) -> None:
    assert "no code 'nope'" in _error(_get(client, "CodeSystem/$subsumes", system=tx.cs, codeA="qi", codeB="nope"), 422)
    assert "hierarchyMeaning" in _error(
        _get(client, "CodeSystem/$subsumes", system=tx.grouped, codeA="g", codeB="m"), 422
    )
    assert "codeB" in _error(_get(client, "CodeSystem/$subsumes", system=tx.cs, codeA="qi"), 400)
    assert "needs system" in _error(_get(client, "CodeSystem/$subsumes", codeA="qi", codeB="yin"), 400)
    assert "not stored" in _error(_get(client, "CodeSystem/$subsumes", system=f"{tx.cs}-x", codeA="a", codeB="b"), 404)
    assert "no relationships between code systems" in _error(
        _get(client, "CodeSystem/$subsumes", system=tx.cs, codingA=f"{tx.v3}|H", codeB="qi"), 422
    )


# -- $translate -----------------------------------------------------------------------------


def _matches(body: dict[str, Any]) -> list[tuple[str | None, str | None, str | None]]:
    out = []
    for part in _values(body, "match"):
        fields = _parts(part)
        concept = fields.get("concept") or {}
        out.append((fields.get("equivalence"), concept.get("system"), concept.get("code")))
    return out


def test_translate_forward(client, tx: Tx) -> None:
    body = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.cs, code="qi", target=f"{BASE}/ValueSet/v3"))
    assert _one(body, "result") is True
    assert (("wider", tx.v3, "L")) in _matches(body)
    match = _parts(_values(body, "match")[0])
    assert match["concept"] == {"system": tx.v3, "code": "L", "display": "Low"} and match["source"] == tx.cm
    only_v3 = _ok(_get(client, f"ConceptMap/{tx.cm_id}/$translate", system=tx.cs, code="qi", targetsystem=tx.v3))
    assert _matches(only_v3) == [("wider", tx.v3, "L")]
    # the second group maps every code to itself ("provided")
    same = f"{BASE}/{tx.storage}/CodeSystem/same"
    assert _matches(_ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.cs, code="yin"))) == [
        ("equal", same, "yin")
    ]


def test_translate_unmatched_and_unknown(client, tx: Tx) -> None:
    body = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.cs, code="phlegm", targetsystem=tx.v3))
    assert _one(body, "result") is False and _matches(body) == [("unmatched", None, None)]
    none = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.v3, code="H"))
    assert _one(none, "result") is False and "No translation" in _one(none, "message")
    wrong_target = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.cs, code="qi", target="http://x/vs"))
    assert _one(wrong_target, "result") is False and "does not map" in _one(wrong_target, "message")


def test_translate_reverse_turns_the_equivalence(client, tx: Tx) -> None:
    body = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.v3, code="L", reverse=True))
    assert _one(body, "result") is True
    assert _matches(body) == [("narrower", tx.cs, "qi"), ("narrower", tx.cs, "yang")]
    equal = _ok(_get(client, "ConceptMap/$translate", url=tx.cm, system=tx.v3, code="N", reverse=True))
    assert _matches(equal) == [("equivalent", tx.cs, "balanced")]


def test_translate_finds_maps_by_system_and_takes_posted_ones(client, tx: Tx) -> None:
    found = _ok(_get(client, "ConceptMap/$translate", system=tx.cs, code="balanced", targetsystem=tx.v3))
    assert _matches(found) == [("equivalent", tx.v3, "N")]
    back = _ok(_get(client, "ConceptMap/$translate", coding=f"{tx.v3}|N", reverse=True))
    assert _matches(back) == [("equivalent", tx.cs, "balanced")]
    posted = {
        "resourceType": "ConceptMap",
        "status": "draft",
        "group": [
            {
                "source": "http://a",
                "target": "http://b",
                "element": [{"code": "1", "target": [{"code": "one", "equivalence": "equal"}]}],
            }
        ],
    }
    body = _ok(
        _post(
            client,
            "ConceptMap/$translate",
            {"name": "conceptMap", "resource": posted},
            {"name": "coding", "valueCoding": {"system": "http://a", "code": "1"}},
        )
    )
    assert _matches(body) == [("equal", "http://b", "one")]


def test_translate_errors(client, tx: Tx) -> None:
    assert "not stored" in _error(_get(client, "ConceptMap/$translate", url=f"{tx.cm}-x", system=tx.cs, code="qi"), 404)
    assert "not stored" in _error(_get(client, "ConceptMap/nope-nope/$translate", system=tx.cs, code="qi"), 404)
    assert "needs system" in _error(_get(client, "ConceptMap/$translate", url=tx.cm, code="qi"), 400)
    assert "not supported" in _error(_post(client, "ConceptMap/$translate", {"name": "dependency", "part": []}), 400)


# -- the CapabilityStatement ----------------------------------------------------------------


def test_capability_statement_lists_the_operations_per_type(client) -> None:
    statement = client.get("/fhir/metadata").get_json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}

    def ops(res_type: str) -> dict[str, str]:
        return {o["name"]: o["definition"] for o in resources[res_type].get("operation", [])}

    base = "http://fhir.telefhir.cn/OperationDefinition"
    assert ops("CodeSystem")["lookup"] == f"{base}/codesystem-lookup"
    assert ops("CodeSystem")["validate-code"] == f"{base}/codesystem-validate-code"
    assert ops("CodeSystem")["subsumes"] == f"{base}/codesystem-subsumes"
    assert ops("ValueSet")["expand"] == f"{base}/valueset-expand"
    assert ops("ValueSet")["validate-code"] == f"{base}/valueset-validate-code"
    assert ops("ConceptMap")["translate"] == f"{base}/conceptmap-translate"
    assert "lookup" not in ops("Patient") and "expand" not in ops("CodeSystem")


def test_operation_definitions_are_stored_and_match_the_routes(client) -> None:
    """The OperationDefinitions we publish are installed, and say what the handlers take."""
    from fhir_server.rest.operations import expand, lookup, subsumes, translate, validate_code

    specs = {
        "codesystem-lookup": lookup.SPEC,
        "valueset-expand": expand.SPEC,
        "valueset-validate-code": validate_code.VALUESET_SPEC,
        "codesystem-validate-code": validate_code.CODESYSTEM_SPEC,
        "codesystem-subsumes": subsumes.SPEC,
        "conceptmap-translate": translate.SPEC,
    }
    for res_id, spec in specs.items():
        resp = client.get(f"/fhir/OperationDefinition/{res_id}")
        assert resp.status_code == 200, res_id
        definition = resp.get_json()
        assert definition["url"] == f"http://fhir.telefhir.cn/OperationDefinition/{res_id}"
        inputs = {p["name"] for p in definition["parameter"] if p["use"] == "in"}
        assert inputs == set(spec), res_id


def test_operations_speak_xml(client, tx: Tx) -> None:
    body = (
        '<Parameters xmlns="http://hl7.org/fhir"><parameter><name value="url"/>'
        f'<valueUri value="{tx.vs_all}"/></parameter><parameter><name value="filter"/>'
        '<valueString value="阴虚"/></parameter></Parameters>'
    ).encode()
    resp = client.post("/fhir/ValueSet/$expand?_format=xml", data=body, content_type="application/fhir+xml")
    assert resp.status_code == 200 and resp.content_type.startswith("application/fhir+xml")
    text = resp.data.decode()
    assert '<total value="1"/>' in text and '<code value="yin"/>' in text and '<display value="阴虚质"/>' in text
