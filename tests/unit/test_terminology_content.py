"""The packaged terminology under ``terminology/``: valid, consistent, and as the standards fix it.

Why these checks: the files are hand-maintained data that scoring code, profiles and the
terminology operations rely on. A wrong property on one questionnaire item changes a patient's
constitution; a ValueSet that names a missing system makes ``:in`` searches fail at run time. So
every file is checked structurally, every cross-reference is resolved, the counts the standards
fix are asserted, and the stored copy (both databases) must expand to what the files say.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server import packaged
from fhir_server.validation import check_resource

ROOT = pathlib.Path(__file__).resolve().parents[2]
TERMINOLOGY = ROOT / "terminology"
BASE = "http://fhir.telefhir.cn"
FOLDER = {"CodeSystem": "codesystem", "ValueSet": "valueset", "ConceptMap": "conceptmap"}
#: CodeSystems we store under a url that is not ours (id -> url)
EXTERNAL_URLS = {
    "gbt-2261-1": "urn:oid:2.16.156.10011.2.3.3.4",
    "icd11-mms-tm1": "http://id.who.int/icd/release/11/mms",
}
#: CodeSystem id -> the ValueSet id that holds all of it, where it is not the same id
VALUESET_OF = {"icd11-mms-tm1": "icd11-tm1"}
WELL_KNOWN_PREFIXES = (
    "http://loinc.org",
    "http://snomed.info/sct",
    "http://terminology.hl7.org/",
    "http://hl7.org/fhir/",
    "http://unitsofmeasure.org",
)
#: codes of external systems our ConceptMaps target (R4 administrative-gender; v3 interpretation codes used)
EXTERNAL_CODES = {
    "http://hl7.org/fhir/administrative-gender": {"male", "female", "other", "unknown"},
    "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation": {"L", "N", "H", "A", "LL", "HH"},
}
FILES = sorted(TERMINOLOGY.rglob("*.json"))
TYPES = "ABCDEFGHI"


def load(path: pathlib.Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


RESOURCES = [load(p) for p in FILES]
BY_URL = {r["url"]: r for r in RESOURCES}
CODESYSTEMS = {r["id"]: r for r in RESOURCES if r["resourceType"] == "CodeSystem"}
VALUESETS = {r["id"]: r for r in RESOURCES if r["resourceType"] == "ValueSet"}
CONCEPTMAPS = {r["id"]: r for r in RESOURCES if r["resourceType"] == "ConceptMap"}


def walk(concepts: list[dict[str, Any]], parent: str | None = None) -> Iterator[tuple[dict[str, Any], str | None]]:
    for c in concepts:
        yield c, parent
        yield from walk(c.get("concept") or [], c["code"])


def concepts(cs_id: str) -> dict[str, dict[str, Any]]:
    return {c["code"]: c for c, _ in walk(CODESYSTEMS[cs_id]["concept"])}


def props(concept: dict[str, Any], code: str) -> list[Any]:
    out = []
    for p in concept.get("property") or []:
        if p["code"] == code:
            out.extend(v for k, v in p.items() if k.startswith("value"))
    return out


# ---------------------------------------------------------------- every file


def test_the_folder_holds_the_fixed_resources() -> None:
    fixed_cs = {
        "tcm-constitution",
        "tcm-constitution-result",
        "tcm-constitution-form",
        "tcm-ccmq-2009-item",
        "tcm-ccmq-2025-item",
        "tcm-observation-code",
        "tcm-tongue",
        "tcm-pulse",
        "tcm-pulse-position",
        "tcm-meridian",
        "tcm-meridian-point",
        "tcm-meridian-interpretation",
        "gbt-15657-2021",
        "icd11-mms-tm1",
        "telemedicine-service-type",
        "consultation-task-status",
        "telemedicine-role",
        "cv02-01-101",
        "gbt-2261-1",
        "gbt-3304",
        "institution-level",
        "professional-title",
    }
    assert fixed_cs <= set(CODESYSTEMS)
    assert "icd11-tm1" in VALUESETS
    assert {
        "gbt-2261-1-to-administrative-gender",
        "tcm-meridian-interpretation-to-v3",
        "gbt-15657-to-icd11-tm1",
    } <= set(CONCEPTMAPS)


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_file_is_valid_and_named_by_its_id(path: pathlib.Path) -> None:
    resource = load(path)
    check_resource(resource, resource["resourceType"])  # raises FhirError on any structural error
    assert path.parent.name == FOLDER[resource["resourceType"]]
    assert path.name == f"{resource['id']}.json"
    if resource["id"] in EXTERNAL_URLS and resource["resourceType"] == "CodeSystem":
        assert resource["url"] == EXTERNAL_URLS[resource["id"]]
    else:
        assert resource["url"] == f"{BASE}/{resource['resourceType']}/{resource['id']}"
    assert resource["status"] == "active"
    assert resource.get("title") and resource.get("description")


def test_urls_are_unique() -> None:
    urls = Counter(r["url"] for r in RESOURCES)
    assert [u for u, n in urls.items() if n > 1] == []


@pytest.mark.parametrize("cs_id", sorted(CODESYSTEMS))
def test_codesystem_is_consistent(cs_id: str) -> None:
    cs = CODESYSTEMS[cs_id]
    codes = [c["code"] for c, _ in walk(cs["concept"])]
    assert len(codes) == len(set(codes)), "duplicate codes"
    assert cs["count"] == len(codes)
    assert cs["content"] in ("complete", "fragment")
    assert isinstance(cs["caseSensitive"], bool)
    declared = {p["code"]: p["type"] for p in cs.get("property") or []}
    value_key = {"code": "valueCode", "string": "valueString", "integer": "valueInteger", "boolean": "valueBoolean"}
    value_key |= {"Coding": "valueCoding", "decimal": "valueDecimal", "dateTime": "valueDateTime"}
    for c, _ in walk(cs["concept"]):
        assert c.get("display"), c["code"]
        for p in c.get("property") or []:
            assert p["code"] in declared, f"{c['code']}: undeclared property {p['code']}"
            assert value_key[declared[p["code"]]] in p, f"{c['code']}: {p['code']} has the wrong value type"
        for d in c.get("designation") or []:
            assert d["language"] in ("zh-CN", "zh-TW", "en")
        zh = [d["value"] for d in c.get("designation") or [] if d["language"] == "zh-CN" and "use" not in d]
        assert zh in ([], [c["display"]]), f"{c['code']}: zh-CN designation differs from display"
    if any(c.get("concept") for c in cs["concept"]):
        assert cs.get("hierarchyMeaning") in ("is-a", "classified-with"), "nested concepts need a hierarchyMeaning"


@pytest.mark.parametrize("cs_id", sorted(CODESYSTEMS))
def test_every_codesystem_has_its_whole_system_valueset(cs_id: str) -> None:
    cs = CODESYSTEMS[cs_id]
    vs = VALUESETS[VALUESET_OF.get(cs_id, cs_id)]
    include = vs["compose"]["include"]
    if cs_id in VALUESET_OF:  # an external system's fragment: the ValueSet lists exactly the stored codes
        assert len(include) == 1 and include[0]["system"] == cs["url"]
        assert [c["code"] for c in include[0]["concept"]] == [c["code"] for c, _ in walk(cs["concept"])]
        assert "valueSet" not in cs  # it is not 'the value set of all ICD-11 codes'
    else:
        assert include == [{"system": cs["url"]}]
        assert cs["valueSet"] == vs["url"]


@pytest.mark.parametrize("vs_id", sorted(VALUESETS))
def test_valueset_systems_are_known(vs_id: str) -> None:
    for part in VALUESETS[vs_id]["compose"]["include"] + VALUESETS[vs_id]["compose"].get("exclude", []):
        system = part["system"]
        if system.startswith(WELL_KNOWN_PREFIXES):
            continue
        assert system in BY_URL and BY_URL[system]["resourceType"] == "CodeSystem", system
        cs = BY_URL[system]
        known = {c["code"] for c, _ in walk(cs["concept"])}
        assert {c["code"] for c in part.get("concept", [])} <= known
        declared = {p["code"] for p in cs.get("property") or []}
        for flt in part.get("filter", []):
            assert flt["property"] in declared | {"concept", "code"}


@pytest.mark.parametrize("cm_id", sorted(CONCEPTMAPS))
def test_conceptmap_codes_exist(cm_id: str) -> None:
    cm = CONCEPTMAPS[cm_id]
    for canonical in (cm["sourceCanonical"], cm["targetCanonical"]):
        if canonical.startswith(BASE):
            assert canonical in BY_URL and BY_URL[canonical]["resourceType"] == "ValueSet"
    mapped = 0
    for group in cm["group"]:

        def codes_of(system: str) -> set[str]:
            if system in BY_URL:
                return {c["code"] for c, _ in walk(BY_URL[system]["concept"])}
            return EXTERNAL_CODES[system]

        source, target = codes_of(group["source"]), codes_of(group["target"])
        for element in group["element"]:
            assert element["code"] in source, element["code"]
            for t in element["target"]:
                mapped += 1
                if t["equivalence"] != "unmatched":
                    assert t["code"] in target, t["code"]
                if t["equivalence"] not in ("equivalent", "equal"):
                    assert t.get("comment"), f"{element['code']}: a non-equivalent mapping says why"
    assert mapped


# ---------------------------------------------------------------- what the standards fix


def test_nine_constitution_types_and_results() -> None:
    types = concepts("tcm-constitution")
    assert list(types) == list(TYPES)
    assert [types[t]["display"] for t in TYPES] == [
        "平和质",
        "气虚质",
        "阳虚质",
        "阴虚质",
        "痰湿质",
        "湿热质",
        "血瘀质",
        "气郁质",
        "特禀质",
    ]
    assert list(concepts("tcm-constitution-result")) == ["yes", "basically-yes", "tendency", "no"]
    assert set(concepts("tcm-constitution-form")) == {"zyyxh-t157-2009", "gbt-46939-2025"}
    assert [props(c, "score")[0] for c in concepts("tcm-ccmq-answer").values()] == [1, 2, 3, 4, 5]


def form_per_person(cs_id: str, sex: str) -> tuple[int, Counter[str], dict[str, set[str]]]:
    """Questions asked, scored slots per type and reverse-scored items per type, for one person."""
    asked = 0
    slots: Counter[str] = Counter()
    reverse: dict[str, set[str]] = {}
    for code, c in concepts(cs_id).items():
        if props(c, "sex") and props(c, "sex") != [sex]:
            continue
        asked += 1
        slots.update(props(c, "type"))
        for t in props(c, "reverse-for"):
            reverse.setdefault(t, set()).add(code)
    return asked, slots, reverse


@pytest.mark.parametrize("sex", ["female", "male"])
def test_2009_form_counts(sex: str) -> None:
    items = concepts("tcm-ccmq-2009-item")
    assert len(items) == 61  # 60 asked of each person + the other sex's alternative
    asked, slots, reverse = form_per_person("tcm-ccmq-2009-item", sex)
    assert asked == 60
    assert sum(slots.values()) == 66
    assert slots == Counter(A=8, B=8, C=7, D=8, E=8, F=6, G=7, H=7, I=7)
    assert reverse == {"A": {"q02", "q03", "q04", "q05", "q07", "q08"}}
    shared = {code for code, c in items.items() if len(props(c, "type")) > 1}
    assert shared == {"q02", "q03", "q04", "q05", "q08", "q12"}


@pytest.mark.parametrize("sex", ["female", "male"])
def test_2025_short_form_counts(sex: str) -> None:
    items = concepts("tcm-ccmq-2025-item")
    assert len(items) == 27
    asked, slots, reverse = form_per_person("tcm-ccmq-2025-item", sex)
    assert asked == 26
    assert slots == Counter(A=4, B=3, C=3, D=3, E=3, F=3, G=3, H=3, I=4)
    assert reverse == {"A": {"s02", "s03", "s04"}}


@pytest.mark.parametrize("cs_id", ["tcm-ccmq-2009-item", "tcm-ccmq-2025-item"])
def test_item_properties_are_machine_readable(cs_id: str) -> None:
    """Slots number each type's table 1..n, reverse scoring only where the item counts, sex items are F's."""
    positions: dict[str, list[int]] = {}
    for code, c in concepts(cs_id).items():
        types = props(c, "type")
        assert types and set(types) <= set(TYPES) and len(types) == len(set(types)), code
        assert set(props(c, "reverse-for")) <= set(types), code
        slots = props(c, "slot")
        assert sorted(s[0] for s in slots) == sorted(types), code
        for s in slots:
            positions.setdefault(s[0], []).append(int(s[1:]))
        if props(c, "sex"):
            assert props(c, "sex") in (["female"], ["male"]) and types == ["F"], code
    for t, numbers in positions.items():
        assert sorted(numbers) == list(range(1, len(numbers) + 1)), t
    sexed = [props(c, "sex")[0] for c in concepts(cs_id).values() if props(c, "sex")]
    assert sorted(sexed) == ["female", "male"]


def test_short_form_items_are_2009_questions_scored_alike() -> None:
    old = concepts("tcm-ccmq-2009-item")
    for code, c in concepts("tcm-ccmq-2025-item").items():
        (link,) = props(c, "ccmq-2009-item")
        assert link["system"] == CODESYSTEMS["tcm-ccmq-2009-item"]["url"]
        same = old[link["code"]]
        assert set(props(c, "type")) <= set(props(same, "type")), code
        assert props(c, "reverse-for") == props(same, "reverse-for"), code
        assert props(c, "sex") == props(same, "sex"), code


def test_twenty_eight_pulses_in_six_families() -> None:
    cs = CODESYSTEMS["tcm-pulse"]
    groups = [c for c in cs["concept"] if c["code"].startswith("group-")]
    assert [g["display"] for g in groups] == ["浮脉类", "沉脉类", "迟脉类", "数脉类", "虚脉类", "实脉类"]
    members = [m for g in groups for m in g["concept"]]
    assert len(members) == 28 and len({m["display"] for m in members}) == 28
    assert all(props(g, "notSelectable") == [True] for g in groups)
    assert list(concepts("tcm-pulse-position")) == ["cun", "guan", "chi"]


def test_tongue_dimensions() -> None:
    cs = CODESYSTEMS["tcm-tongue"]
    assert [c["code"] for c in cs["concept"]] == [
        "body-colour",
        "body-shape",
        "body-motility",
        "coating-colour",
        "coating-texture",
        "sublingual-vessels",
    ]
    for dimension in cs["concept"]:
        assert props(dimension, "notSelectable") == [True]
        assert dimension["concept"], dimension["code"]
    assert {"pale", "pale-red", "red", "crimson", "bluish-purple"} <= set(concepts("tcm-tongue"))  # ISO 23961-1


def test_twelve_meridians_and_twenty_four_points() -> None:
    meridians = concepts("tcm-meridian")
    assert list(meridians) == ["LU", "LI", "ST", "SP", "HT", "SI", "BL", "KI", "PC", "TE", "GB", "LR"]
    assert "SJ" in {d["value"] for d in meridians["TE"]["designation"]}
    points = concepts("tcm-meridian-point")
    assert list(points) == [f"{m}-{s}" for m in meridians for s in "LR"]
    for code, c in points.items():
        meridian, side = code.split("-")
        assert props(c, "meridian") == [meridian] and props(c, "side") == [side]
        assert props(c, "site")[0].startswith(meridian)
    ryodoraku = Counter(props(c, "ryodoraku")[0] for c in points.values())
    assert ryodoraku == Counter({f"{limb}{n}": 2 for limb in "HF" for n in range(1, 7)})
    assert {"deficient", "balanced", "excess"} <= set(concepts("tcm-meridian-interpretation"))


def test_fixed_observation_codes() -> None:
    codes = concepts("tcm-observation-code")
    fixed = {
        "constitution-assessment",
        "tongue",
        "pulse",
        "meridian-measurement",
        "inspection",
        "listening-smelling",
        "tongue-body-colour",
        "tongue-shape",
        "tongue-motility",
        "tongue-coating-colour",
        "tongue-coating-texture",
        "sublingual-vessels",
        "meridian-mean",
        "meridian-band-low",
        "meridian-band-high",
    }
    assert fixed <= set(codes)
    for code, c in codes.items():
        kind = props(c, "kind")
        assert kind in (["observation"], ["component"]), code
        for panel in props(c, "panel"):
            assert props(codes[panel], "kind") == ["observation"], code


def test_gbt_15657_classes_examples_and_dotted_hierarchy() -> None:
    cs = CODESYSTEMS["gbt-15657-2021"]
    assert cs["content"] == "fragment"
    roots = [c["code"] for c in cs["concept"]]
    assert roots == [f"A{i:02d}" for i in range(1, 18)] + [f"B{i:02d}" for i in range(1, 11)]
    for c, parent in walk(cs["concept"]):
        if parent is not None:
            assert c["code"].rsplit(".", 1)[0] == parent, c["code"]
        assert props(c, "part") == (["disease"] if c["code"].startswith("A") else ["syndrome"])
        if props(c, "inferred"):
            assert "未转录" in c["display"] and props(c, "notSelectable") == [True]
    codes = concepts("gbt-15657-2021")
    examples = {
        "A01.01.01.01": "伤风",
        "A07.06.03": "尪痹",
        "A07.06.04": "肢痹",
        "B03.01.03": "气虚证",
        "B03.02.05": "血瘀证",
        "B03.03.03": "阴虚证",
        "B03.04.02": "阳虚证",
        "B02.05.04": "湿热证",
        "B02.09.03": "痰湿证",
        "B04.01.01.03.01": "心气虚证",
        "B04.02.01.04.01.01": "肝气郁结证",
        "B04.03.01.03.01": "脾气虚证",
        "B04.06.01.03.02": "心脾两虚证",
        "B04.06.02.03.01.02": "肝郁脾虚证",
    }
    assert {code: codes[code]["display"] for code in examples} == examples
    assert all("[U]" in codes[code]["definition"] for code in examples)


def test_icd11_fragment() -> None:
    codes = concepts("icd11-mms-tm1")
    for code in ("SA01", "SA60", "SD84", "SD93", "SE70", "SE77", "SE90", "SF01", "SF57", "SF6J", "SF70", "SF60"):
        assert code in codes
    assert all(props(c, "tm1-kind") in (["disorder"], ["pattern"]) for c in codes.values())
    assert CODESYSTEMS["icd11-mms-tm1"]["content"] == "fragment"


def test_national_value_domains() -> None:
    ethnic = concepts("gbt-3304")
    assert [f"{i:02d}" for i in range(1, 57)] + ["97", "98"] == list(ethnic)
    assert ethnic["01"]["display"] == "汉族" and ethnic["56"]["display"] == "基诺族"
    assert len({props(c, "alpha-code")[0] for c in ethnic.values() if props(c, "alpha-code")}) == 56
    assert list(concepts("gbt-2261-1")) == ["0", "1", "2", "9"]
    assert list(concepts("cv02-01-101")) == ["01", "02", "03", "04", "05", "06", "07", "99"]
    titles = concepts("professional-title")
    assert {code: titles[code]["display"] for code in ("231", "232", "233", "234", "235")} == {
        "231": "主任医师",
        "232": "副主任医师",
        "233": "主治医师",
        "234": "医师",
        "235": "医士",
    }
    statuses = concepts("consultation-task-status")
    assert [props(c, "order")[0] for c in statuses.values()] == list(range(1, len(statuses) + 1))
    fhir_task_status = {"requested", "received", "accepted", "rejected", "ready", "cancelled", "in-progress"}
    assert {props(c, "task-status")[0] for c in statuses.values()} <= fhir_task_status | {"completed", "on-hold"}


def test_generated_doc_is_current() -> None:
    gen = _generator()
    committed = (ROOT / "docs" / "terminology.md").read_text(encoding="utf-8")
    assert committed == gen.render(), "run: .venv/bin/python scripts/gen_terminology_doc.py"


def _generator():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("gen_terminology_doc", ROOT / "scripts" / "gen_terminology_doc.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


# ---------------------------------------------------------------- stored (SQLite and PostgreSQL)


def test_installed_at_start_and_second_install_writes_nothing(services) -> None:  # type: ignore[no-untyped-def]
    with services.repo.session() as session:
        stored = session.read_current("CodeSystem", "tcm-constitution")
        assert stored is not None and not stored.deleted
        resource = stored.resource()
        assert resource["url"] == f"{BASE}/CodeSystem/tcm-constitution"
        assert [c["code"] for c in resource["concept"]] == list(TYPES)
        for resource in RESOURCES:
            current = session.read_current(resource["resourceType"], resource["id"])
            assert current is not None, f"{resource['resourceType']}/{resource['id']} not stored"
    # build_services installed everything; this call only restores what another test of the session (sharing
    # the database) may have changed, so the idempotence checked is that of the call after it
    packaged.install(services.repo)
    assert packaged.install(services.repo) == []
    with services.repo.session() as session:
        for resource in RESOURCES:
            stored = session.read_current(resource["resourceType"], resource["id"]).resource()
            assert {k: v for k, v in stored.items() if k != "meta"} == resource


def test_stored_valuesets_expand_as_the_files_say(services) -> None:  # type: ignore[no-untyped-def]
    """The server's expansion of each stored ValueSet equals the expansion of the files themselves."""
    from fhir_server.terminology.service import codes_in_valueset

    source = _generator().FolderSource(RESOURCES)
    with services.repo.session() as session:
        for vs in VALUESETS.values():
            stored = codes_in_valueset(session, vs["url"])
            assert stored == source.expand(vs), vs["id"]
        syndromes = {code for _, code in codes_in_valueset(session, f"{BASE}/ValueSet/gbt-15657-2021-syndrome")}
        assert "B03.01.03" in syndromes and "A01" not in syndromes
