"""Importing external code systems, and the concept rows every stored CodeSystem gets.

On SQLite and PostgreSQL (the ``services`` fixture). The LOINC, ClaML and CSV files are written
here in the real formats: ``Loinc.csv`` with the header of the LOINC 2.7x distribution (the
part values of the rows are illustrative, not copied from LOINC), WHO ICD-10 ClaML 2.0 with the
element and attribute names the WHO files use. Real files cannot be downloaded here.
"""

from __future__ import annotations

import csv
import pathlib
import uuid
from typing import Any

import pytest
from click.testing import CliRunner
from sqlalchemy import func, select

from fhir_server.errors import FhirError
from fhir_server.storage.schema import terminology_concepts, terminology_edges, terminology_systems
from fhir_server.terminology.expand import ExpandOptions, expand
from fhir_server.terminology.importers import ImportOptions, build, import_file
from fhir_server.terminology.locate import open_codesystem
from fhir_server.terminology.lookup import lookup
from fhir_server.terminology.memory import MemoryContent
from fhir_server.terminology.subsumes import relation
from fhir_server.terminology.table import TableContent

LOINC_HEADER = [
    "LOINC_NUM", "COMPONENT", "PROPERTY", "TIME_ASPCT", "SYSTEM", "SCALE_TYP", "METHOD_TYP", "CLASS",
    "VersionLastChanged", "CHNG_TYPE", "DefinitionDescription", "STATUS", "CONSUMER_NAME", "CLASSTYPE", "FORMULA",
    "EXMPL_ANSWERS", "SURVEY_QUEST_TEXT", "SURVEY_QUEST_SRC", "UNITSREQUIRED", "RELATEDNAMES2", "SHORTNAME",
    "ORDER_OBS", "HL7_FIELD_SUBFIELD_ID", "EXTERNAL_COPYRIGHT_NOTICE", "EXAMPLE_UNITS", "LONG_COMMON_NAME",
    "EXAMPLE_UCUM_UNITS", "STATUS_REASON", "STATUS_TEXT", "CHANGE_REASON_PUBLIC", "COMMON_TEST_RANK",
    "COMMON_ORDER_RANK", "COMMON_SI_TEST_RANK", "HL7_ATTACHMENT_STRUCTURE", "EXTERNAL_COPYRIGHT_LINK", "PanelType",
    "AskAtOrderEntry", "AssociatedObservations", "VersionFirstReleased", "ValidHL7AttachmentRequest", "DisplayName",
]  # fmt: skip

LOINC_ROWS = [
    {"LOINC_NUM": "8867-4", "COMPONENT": "Heart rate", "PROPERTY": "NRat", "TIME_ASPCT": "Pt", "SYSTEM": "XXX",
     "SCALE_TYP": "Qn", "CLASS": "HRTRATE.ATOM", "STATUS": "ACTIVE", "CLASSTYPE": "2", "SHORTNAME": "Heart rate",
     "ORDER_OBS": "Both", "LONG_COMMON_NAME": "Heart rate", "EXAMPLE_UCUM_UNITS": "{beats}/min",
     "RELATEDNAMES2": "Beat; Heart beat; Pulse rate", "DisplayName": "Heart rate"},
    {"LOINC_NUM": "8480-6", "COMPONENT": "Intravascular systolic", "PROPERTY": "Pres", "TIME_ASPCT": "Pt",
     "SYSTEM": "Arterial system", "SCALE_TYP": "Qn", "CLASS": "BP.ATOM", "STATUS": "ACTIVE", "CLASSTYPE": "2",
     "SHORTNAME": "BP sys", "LONG_COMMON_NAME": "Systolic blood pressure", "EXAMPLE_UCUM_UNITS": "mm[Hg]",
     "DisplayName": "BP systolic"},
    {"LOINC_NUM": "2345-7", "COMPONENT": "Glucose", "PROPERTY": "MCnc", "TIME_ASPCT": "Pt", "SYSTEM": "Ser/Plas",
     "SCALE_TYP": "Qn", "CLASS": "CHEM", "STATUS": "ACTIVE", "CLASSTYPE": "1", "SHORTNAME": "Glucose SerPl-mCnc",
     "LONG_COMMON_NAME": "Glucose [Mass/volume] in Serum or Plasma", "EXAMPLE_UCUM_UNITS": "mg/dL",
     "DefinitionDescription": "Glucose, \"blood sugar\", measured in serum or plasma"},
    {"LOINC_NUM": "11524-6", "COMPONENT": "EKG study", "PROPERTY": "Find", "TIME_ASPCT": "Pt", "SYSTEM": "Heart",
     "SCALE_TYP": "Nar", "METHOD_TYP": "EKG", "CLASS": "EKG.MEAS", "STATUS": "ACTIVE", "CLASSTYPE": "2",
     "LONG_COMMON_NAME": "EKG study", "SHORTNAME": "EKG study"},
    {"LOINC_NUM": "99999-1", "COMPONENT": "Old test", "PROPERTY": "MCnc", "TIME_ASPCT": "Pt", "SYSTEM": "Bld",
     "SCALE_TYP": "Qn", "CLASS": "CHEM", "STATUS": "DEPRECATED", "CLASSTYPE": "1",
     "LONG_COMMON_NAME": "Old test [Mass/volume] in Blood", "STATUS_REASON": "DUPLICATE"},
]  # fmt: skip

CLAML = """<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE ClaML SYSTEM "ClaML.dtd">
<ClaML version="2.0.0">
  <Meta name="TopLevelSort" value="I II"/>
  <Identifier authority="WHO" uid="icd10_2019"/>
  <Title name="ICD-10" version="2019" date="2019-01-01">
    International Statistical Classification of Diseases and Related Health Problems 10th Revision
  </Title>
  <Authors><Author name="WHO">World Health Organization</Author></Authors>
  <Variants><Variant name="default"/></Variants>
  <ClassKinds><ClassKind name="chapter"/><ClassKind name="block"/><ClassKind name="category"/></ClassKinds>
  <UsageKinds><UsageKind name="dagger" mark="&#8224;"/><UsageKind name="aster" mark="*"/></UsageKinds>
  <RubricKinds>
    <RubricKind name="preferred" inherited="false"/>
    <RubricKind name="preferredLong" inherited="false"/>
    <RubricKind name="inclusion"/>
    <RubricKind name="exclusion"/>
    <RubricKind name="note"/>
  </RubricKinds>
  <Modifier code="S04F10_4">
    <SubClass code=".0"/>
    <Rubric id="m1" kind="text"><Label xml:lang="en">closed</Label></Rubric>
  </Modifier>
  <ModifierClass modifier="S04F10_4" code=".0">
    <SuperClass code="S04F10_4"/>
    <Rubric id="m2" kind="preferred"><Label xml:lang="en">closed</Label></Rubric>
  </ModifierClass>
  <Class code="I" kind="chapter">
    <SubClass code="A00-A09"/>
    <SubClass code="A15-A19"/>
    <Rubric id="r1" kind="preferred">
      <Label xml:lang="en" xml:space="default">Certain infectious and parasitic diseases</Label>
    </Rubric>
    <Rubric id="r2" kind="inclusion">
      <Label xml:lang="en" xml:space="default">diseases generally recognized as communicable or transmissible</Label>
    </Rubric>
    <Rubric id="r3" kind="exclusion">
      <Label xml:lang="en" xml:space="default">carrier or suspected carrier of infectious disease
        (<Reference class="in brackets">Z22.-</Reference>)</Label>
    </Rubric>
  </Class>
  <Class code="A00-A09" kind="block">
    <SuperClass code="I"/>
    <SubClass code="A00"/>
    <Rubric id="r4" kind="preferred">
      <Label xml:lang="en" xml:space="default">Intestinal infectious diseases</Label>
    </Rubric>
  </Class>
  <Class code="A00" kind="category">
    <SuperClass code="A00-A09"/>
    <SubClass code="A00.0"/>
    <SubClass code="A00.9"/>
    <Rubric id="r5" kind="preferred"><Label xml:lang="en" xml:space="default">Cholera</Label></Rubric>
  </Class>
  <Class code="A00.0" kind="category">
    <SuperClass code="A00"/>
    <Rubric id="r6" kind="preferred">
      <Label xml:lang="en" xml:space="default">Cholera due to
        <Term class="italics">Vibrio cholerae</Term> 01, biovar cholerae</Label>
    </Rubric>
    <Rubric id="r7" kind="inclusion">
      <Label xml:lang="en" xml:space="default">Classical cholera</Label>
    </Rubric>
  </Class>
  <Class code="A00.9" kind="category">
    <SuperClass code="A00"/>
    <Rubric id="r8" kind="preferred">
      <Label xml:lang="en" xml:space="default">Cholera, unspecified</Label>
    </Rubric>
  </Class>
  <Class code="A15-A19" kind="block">
    <SuperClass code="I"/>
    <SubClass code="A17"/>
    <Rubric id="r9" kind="preferred"><Label xml:lang="en" xml:space="default">Tuberculosis</Label></Rubric>
  </Class>
  <Class code="A17" kind="category" usage="dagger">
    <SuperClass code="A15-A19"/>
    <SubClass code="A17.0"/>
    <Rubric id="r10" kind="preferred">
      <Label xml:lang="en" xml:space="default">Tuberculosis of nervous system</Label>
    </Rubric>
  </Class>
  <Class code="A17.0" kind="category" usage="dagger">
    <SuperClass code="A17"/>
    <Rubric id="r11" kind="preferred">
      <Label xml:lang="en" xml:space="default">Tuberculous meningitis</Label>
    </Rubric>
    <Rubric id="r12" kind="preferredLong">
      <Label xml:lang="en" xml:space="default">Tuberculous meningitis (G01*)</Label>
    </Rubric>
  </Class>
</ClaML>
"""


def _uid() -> str:
    return uuid.uuid4().hex[:8]


def write_loinc(path: pathlib.Path) -> pathlib.Path:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=LOINC_HEADER, quoting=csv.QUOTE_ALL, lineterminator="\r\n")
        writer.writeheader()
        for row in LOINC_ROWS:
            writer.writerow(row)
    return path


def write_csv(path: pathlib.Path) -> pathlib.Path:
    """Generic CSV as a spreadsheet saves it: UTF-8 with a byte-order mark, an extra column."""
    rows = [
        ["code", "display", "parent", "definition", "pinyin"],
        ["tcm", "中医证候", "", "", "zhong yi zheng hou"],
        ["qi-xu", "气虚证", "tcm", "元气不足,脏腑功能减退", "qi xu zheng"],
        ["pi-qi-xu", "脾气虚证", "qi-xu|pi", "", "pi qi xu zheng"],
        ["pi", "脾系证", "tcm", "", ""],
    ]
    with path.open("w", newline="", encoding="utf-8-sig") as f:
        csv.writer(f).writerows(rows)
    return path


def _rows(services, res_id: str) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        return {
            t.name: int(s.conn.execute(select(func.count()).select_from(t).where(t.c.cs_id == res_id)).scalar_one())
            for t in (terminology_systems, terminology_concepts, terminology_edges)
        }


def _versions(services, res_id: str) -> set[int]:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        t = terminology_concepts
        return set(s.conn.execute(select(t.c.cs_version).where(t.c.cs_id == res_id).distinct()).scalars())


def _params(parameters: dict[str, Any]) -> dict[str, list[Any]]:
    out: dict[str, list[Any]] = {}
    for p in parameters.get("parameter", []):
        out.setdefault(p["name"], []).append(next((v for k, v in p.items() if k.startswith("value")), p.get("part")))
    return out


# -- LOINC ----------------------------------------------------------------------------------


def test_loinc_table_import(services, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    # another url than http://loinc.org: the session's database is shared, and other tests rely on
    # LOINC not being stored (the default url and id are checked by test_command_line_import)
    uid = _uid()
    url = f"http://loinc.org/test-{uid}"
    options = ImportOptions(url=url, version="2.77", res_id=f"loinc-{uid}")
    stored = import_file(services.repo, "loinc", write_loinc(tmp_path / "Loinc.csv"), options)
    assert (stored.res_id, stored.version) == (f"loinc-{uid}", 1)
    resource = stored.resource()
    assert resource["name"] == "LOINC" and resource["version"] == "2.77" and resource["count"] == 5
    counts = {"terminology_systems": 1, "terminology_concepts": 5, "terminology_edges": 0}
    assert _rows(services, stored.res_id) == counts
    with services.repo.session() as s:
        content = open_codesystem(s, url, search=services.search)
        assert isinstance(content, TableContent)
        answer = _params(lookup(content, "2345-7"))
        assert answer["display"] == ["Glucose [Mass/volume] in Serum or Plasma"]
        assert answer["version"] == ["2.77"]
        props = {
            (p[0]["valueCode"], next(v for k, v in p[1].items() if k.startswith("value"))) for p in answer["property"]
        }
        assert ("COMPONENT", "Glucose") in props and ("SCALE_TYP", "Qn") in props
        assert ("definition", 'Glucose, "blood sugar", measured in serum or plasma') in props
        assert [d[-1]["valueString"] for d in answer["designation"]] == ["Glucose SerPl-mCnc"]
        deprecated = content.get("99999-1")
        assert deprecated is not None and deprecated.inactive
        valueset = {
            "resourceType": "ValueSet",
            "status": "draft",
            "compose": {"include": [{"system": url}]},
        }
        found = expand(s, valueset, ExpandOptions(filter="bp SYS"))["expansion"]
        assert [c["code"] for c in found["contains"]] == ["8480-6"]  # the DisplayName designation
        active = expand(s, valueset, ExpandOptions(active_only=True))["expansion"]
        assert active["total"] == 4


def test_reimport_makes_a_new_version_and_replaces_the_rows(services, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    uid = _uid()
    path = write_csv(tmp_path / "tcm.csv")
    options = ImportOptions(url=f"http://example.org/cs/re-{uid}", version="1")
    first = import_file(services.repo, "csv", path, options)
    assert _versions(services, first.res_id) == {1}
    second = import_file(services.repo, "csv", path, ImportOptions(url=options.url, version="2"))
    assert (second.res_id, second.version) == (first.res_id, 2)
    assert _versions(services, first.res_id) == {2}
    with services.repo.session() as s:
        assert open_codesystem(s, options.url, search=services.search).info.version == "2"
    with pytest.raises(FhirError) as info:
        import_file(services.repo, "csv", path, ImportOptions(url="http://example.org/other", res_id=first.res_id))
    assert info.value.kind == "conflict" and "already holds" in info.value.diagnostics


# -- ICD-10 ClaML ---------------------------------------------------------------------------


def test_icd10_claml_import(services, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "icd102019en.xml"
    path.write_text(CLAML, encoding="utf-8")
    uid = _uid()
    stored = import_file(
        services.repo, "icd10-claml", path, ImportOptions(url=f"http://example.org/icd-10-{uid}", res_id=f"icd-{uid}")
    )
    resource = stored.resource()
    assert (
        resource["version"] == "2019"
        and resource["title"] == "ICD-10"
        and resource["hierarchyMeaning"] == "classified-with"
    )
    assert [c["code"] for c in resource["concept"]] == [
        "I",
        "A00-A09",
        "A00",
        "A00.0",
        "A00.9",
        "A15-A19",
        "A17",
        "A17.0",
    ]
    with services.repo.session() as s:
        content = open_codesystem(s, resource["url"], search=services.search)
        cholera = content.get("A00.0")
        assert cholera is not None
        assert cholera.display == "Cholera due to Vibrio cholerae 01, biovar cholerae"
        assert [d["value"] for d in cholera.designations] == ["Classical cholera"]
        assert content.parents("A00.0") == ["A00"] and content.children("A00") == ["A00.0", "A00.9"]
        assert relation(content, "I", "A00.0") == "subsumes"
        assert relation(content, "A17.0", "A15-A19") == "subsumed-by"
        assert relation(content, "A00", "A17") == "not-subsumed"
        tb = _params(lookup(content, "A17.0"))
        props = [(p[0]["valueCode"], p[1].get("valueCode")) for p in tb["property"]]
        assert ("kind", "category") in props and ("usage", "dagger") in props and ("parent", "A17") in props
        assert [d[-1]["valueString"] for d in tb["designation"]] == ["Tuberculous meningitis (G01*)"]
        chapter = content.get("I")
        assert chapter is not None and chapter.display == "Certain infectious and parasitic diseases"
        valueset = {
            "resourceType": "ValueSet",
            "status": "draft",
            "compose": {"include": [{"system": resource["url"]}]},
        }
        nested = expand(s, valueset, ExpandOptions())["expansion"]["contains"]
        assert [c["code"] for c in nested] == ["I"]
        assert [c["code"] for c in nested[0]["contains"]] == ["A00-A09", "A15-A19"]


# -- generic CSV ----------------------------------------------------------------------------


def test_generic_csv_import(services, tmp_path: pathlib.Path) -> None:  # type: ignore[no-untyped-def]
    uid = _uid()
    url = f"http://example.org/cs/zheng-{uid}"
    stored = import_file(services.repo, "csv", write_csv(tmp_path / "zheng.csv"), ImportOptions(url=url, name="Zheng"))
    assert stored.res_id == f"zheng-{uid}"
    resource = stored.resource()
    assert resource["name"] == "Zheng" and {"code": "pinyin", "type": "string"} in resource["property"]
    with services.repo.session() as s:
        content = open_codesystem(s, url, search=services.search)
        assert content.get("qi-xu").definition == "元气不足,脏腑功能减退"  # type: ignore[union-attr]
        assert sorted(content.parents("pi-qi-xu")) == ["pi", "qi-xu"]  # two parents
        assert relation(content, "tcm", "pi-qi-xu") == "subsumes"
        found = expand(s, {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [{"system": url}]}},
                       ExpandOptions(filter="气虚"))["expansion"]  # fmt: skip
        assert [c["code"] for c in found["contains"]] == ["qi-xu", "pi-qi-xu"]


@pytest.mark.parametrize(
    ("fmt", "content", "message"),
    [
        ("csv", "code,name\nx,y\n", "must name code, display and parent"),
        ("csv", "code,display,parent\n", "no concepts"),
        ("csv", "code,display,parent\n,nameless,\n", "line 2: no code"),
        ("loinc", "code,display,parent\nx,y,\n", "not a LOINC table file"),
        ("icd10-claml", "<NotClaML/>", "not a ClaML file"),
        ("icd10-claml", "not xml at all", "is not XML"),
        ("icd10-claml", "<ClaML><Class code='A'>", "ICD"),
    ],
)
def test_bad_files_are_refused(tmp_path: pathlib.Path, fmt: str, content: str, message: str) -> None:
    path = tmp_path / "input"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(FhirError) as info:
        build(fmt, path, ImportOptions(url="http://example.org/x"))
    if message == "ICD":  # a truncated ClaML file: the parser's own words
        assert info.value.kind == "invalid"
    else:
        assert message in info.value.diagnostics


def test_csv_needs_a_url(tmp_path: pathlib.Path) -> None:
    with pytest.raises(FhirError) as info:
        build("csv", write_csv(tmp_path / "x.csv"), ImportOptions())
    assert "needs --url" in info.value.diagnostics


def test_command_line_import(tmp_path: pathlib.Path) -> None:
    from fhir_server.app import build_services
    from fhir_server.commands import cli
    from fhir_server.config import Settings

    db = f"sqlite:///{tmp_path / 'fhir.db'}"
    path = write_loinc(tmp_path / "Loinc.csv")
    result = CliRunner().invoke(
        cli, ["terminology", "import", "--database-url", db, "--format", "loinc", "--version", "2.77", str(path)]
    )
    assert result.exit_code == 0, result.output
    assert "CodeSystem/loinc (version 1): 5 concepts of http://loinc.org|2.77" in result.output
    services = build_services(Settings(database_url=db, data_dir=tmp_path))
    try:
        with services.repo.session() as s:
            assert open_codesystem(s, "http://loinc.org", "2.77", search=services.search).get("8867-4") is not None
    finally:
        services.repo.dispose()
    bad = CliRunner().invoke(
        cli, ["terminology", "import", "--database-url", db, "--format", "csv", str(write_csv(tmp_path / "a.csv"))]
    )
    assert bad.exit_code != 0 and "needs --url" in bad.output


# -- the concept rows follow every write --------------------------------------------------


def _small(url: str, version: str, codes: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "CodeSystem",
        "url": url,
        "version": version,
        "status": "active",
        "content": "complete",
        "concept": [{"code": c, "display": c.upper()} for c in codes],
    }


def test_rows_follow_create_update_delete_and_rollback(services) -> None:  # type: ignore[no-untyped-def]
    uid = _uid()
    res_id = f"rows-{uid}"
    url = f"http://example.org/cs/rows-{uid}"
    with services.repo.session(write=True) as s:
        s.create(_small(url, "1", ["a", "b"]), res_id=res_id, method="PUT")
    assert _rows(services, res_id)["terminology_concepts"] == 2
    with services.repo.session(write=True) as s:
        s.update(s.read_current("CodeSystem", res_id), _small(url, "2", ["a", "b", "c"]))
    assert _versions(services, res_id) == {2} and _rows(services, res_id)["terminology_concepts"] == 3
    with pytest.raises(RuntimeError), services.repo.session(write=True) as s:
        s.update(s.read_current("CodeSystem", res_id), _small(url, "3", ["z"]))
        raise RuntimeError("roll back")
    assert _versions(services, res_id) == {2}
    with services.repo.session() as s:
        assert open_codesystem(s, url, search=services.search).get("c") is not None
    with services.repo.session(write=True) as s:
        s.delete(s.read_current("CodeSystem", res_id))
    assert _rows(services, res_id) == {"terminology_systems": 0, "terminology_concepts": 0, "terminology_edges": 0}


def _tree(url: str) -> dict[str, Any]:
    """Nesting, parent and child properties, a cycle (x ⇄ y), a repeated code and a dangling parent."""
    return {
        "resourceType": "CodeSystem",
        "url": url,
        "status": "active",
        "content": "complete",
        "property": [
            {"code": "up", "uri": "http://hl7.org/fhir/concept-properties#parent", "type": "code"},
            {"code": "down", "uri": "http://hl7.org/fhir/concept-properties#child", "type": "code"},
            {"code": "status", "type": "code"},
        ],
        "concept": [
            {
                "code": "r",
                "display": "Root 根",
                "concept": [{"code": "a", "concept": [{"code": "a1"}, {"code": "a2"}]}],
            },
            {
                "code": "b",
                "display": "Bé",
                "property": [{"code": "up", "valueCode": "r"}, {"code": "down", "valueCode": "b1"}],
            },
            {"code": "b1", "designation": [{"language": "en", "value": "Bee one"}]},
            {"code": "x", "property": [{"code": "up", "valueCode": "y"}]},
            {"code": "y", "property": [{"code": "up", "valueCode": "x"}, {"code": "status", "valueCode": "retired"}]},
            {"code": "d", "property": [{"code": "up", "valueCode": "nowhere"}]},
            {"code": "a1", "display": "repeated"},
        ],
    }


def test_rows_and_memory_give_the_same_answers(services) -> None:  # type: ignore[no-untyped-def]
    uid = _uid()
    url = f"http://example.org/cs/tree-{uid}"
    resource = _tree(url)
    with services.repo.session(write=True) as s:
        s.create(resource, res_id=f"tree-{uid}", method="PUT")
    memory = MemoryContent(resource, f"tree-{uid}")
    with services.repo.session() as s:
        table = open_codesystem(s, url, search=services.search)
        assert isinstance(table, TableContent)
        codes = ["r", "a", "a1", "a2", "b", "b1", "x", "y", "d"]
        assert table.info.count == memory.info.count == len(codes)
        assert table.get_many(codes) == memory.get_many(codes)
        assert table.get("a1").display is None  # type: ignore[union-attr]  # the first occurrence wins
        for code in codes:
            assert table.parents(code) == memory.parents(code), code
            assert table.children(code) == memory.children(code), code
            for other in codes:
                assert table.is_ancestor(other, code) == memory.is_ancestor(other, code), (other, code)
        assert table.is_ancestor("r", "b1") and table.is_ancestor("x", "x") is True  # through the cycle x ⇄ y
        assert sorted(table.edges()) == sorted(memory.edges())
        for words, active in ((["root"], False), (["be"], False), (["bee", "one"], False), ([], True), (["根"], False)):
            assert table.count(words, active) == memory.count(words, active), words
            for offset, limit in ((0, 100), (1, 2), (50, 5), (0, 0)):
                assert table.page(words, active, offset, limit) == memory.page(words, active, offset, limit)
        assert [c.code for c in table.page(["be"], False, 0, 10)[1]] == ["b", "b1"]  # accent-folded: Bé


def test_code_systems_too_large_to_parse_are_answered_from_rows_only(services, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from fhir_server.terminology import service
    from fhir_server.terminology.service import code_closure, codes_in_valueset

    uid = _uid()
    url = f"http://example.org/cs/big-{uid}"
    is_a = {"resourceType": "ValueSet", "url": f"{url}/vs", "status": "active"}
    is_a["compose"] = {"include": [{"system": url, "filter": [{"property": "concept", "op": "is-a", "value": "a"}]}]}
    with services.repo.session(write=True) as s:
        s.create(_tree(url), res_id=f"big-{uid}", method="PUT")
        s.create(is_a)
    monkeypatch.setattr(service, "MAX_PARSED_CONCEPTS", 5)
    with services.repo.session() as s:
        assert code_closure(s, url, "r", "below") == {"r", "a", "a1", "a2", "b", "b1"}  # from the rows
        assert code_closure(s, url, "b1", "above") == {"b1", "b", "r"}
        with pytest.raises(FhirError) as info:
            codes_in_valueset(s, f"{url}/vs")
        assert info.value.status == 400 and "9 concepts" in info.value.diagnostics
        with pytest.raises(FhirError) as info:
            expand(s, is_a, ExpandOptions())
        assert info.value.status == 422 and info.value.issues[0].code == "too-costly"
        whole = {"resourceType": "ValueSet", "status": "draft", "compose": {"include": [{"system": url}]}}
        assert expand(s, whole, ExpandOptions(count=3))["expansion"]["total"] == 9  # the whole system: rows
    monkeypatch.setattr(service, "MAX_PARSED_CONCEPTS", 9)
    with services.repo.session() as s:
        assert codes_in_valueset(s, f"{url}/vs") == {(url, "a"), (url, "a1"), (url, "a2")}
