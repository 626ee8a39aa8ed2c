"""Constitution scoring (fhir_server/clinical/tcm_constitution.py) against the standards' rules.

Expected values are computed by hand in the comments: transformed = (raw − n) / (4n) × 100.
Research: ../shared/research/tcm_standards.md §1.2–§1.4.
"""

from __future__ import annotations

import json
import pathlib
from decimal import Decimal
from fractions import Fraction

import pytest

from fhir_server.clinical import ccmq
from fhir_server.clinical.ccmq import CCMQ_2009, CCMQ_2025
from fhir_server.clinical.constitution_fhir import assess_response, observation, read_answers
from fhir_server.clinical.tcm_constitution import (
    BASICALLY_YES,
    NO,
    TENDENCY,
    YES,
    ConstitutionInputError,
    assess,
    balanced_result,
    biased_result,
    classify,
    transformed_score,
)
from fhir_server.validation import check_resource

ROOT = pathlib.Path(__file__).resolve().parents[2]
ALL_NO = {t: 0 for t in ccmq.BIASED}


def answers_2009(sex: str = "male", **given: int) -> dict[str, object]:
    """Every applicable 2009 item answered 1 (没有), then ``given`` on top."""
    skip = "q41" if sex == "male" else "q42"
    out: dict[str, object] = {i.code: 1 for i in CCMQ_2009.items if i.code != skip}
    out.update(given)
    return out


def answers_2025(sex: str = "female", **given: int) -> dict[str, object]:
    skip = "s18" if sex == "female" else "s17"
    out: dict[str, object] = {i.code: 1 for i in CCMQ_2025.items if i.code != skip}
    out.update(given)
    return out


def results(assessment) -> dict[str, str]:  # type: ignore[no-untyped-def]
    return {t: s.result for t, s in assessment.scores.items()}


# ----------------------------------------------------------------------------- the tables
def _slot_counts(form: ccmq.Form) -> tuple[int, int]:
    slots = [s.code for slots in form.types.values() for s in slots]
    return len(slots), len(slots) - len(set(slots))


def test_2009_table_matches_research_counts() -> None:
    # §1.3: 67 listed slots, 6 shared questions, 61 distinct, 60 answered per person
    assert len(CCMQ_2009.items) == 61
    assert _slot_counts(CCMQ_2009) == (67, 6)
    assert {t: len(s) for t, s in CCMQ_2009.types.items()} == {
        "A": 8,
        "B": 8,
        "C": 7,
        "D": 8,
        "E": 8,
        "F": 7,
        "G": 7,
        "H": 7,
        "I": 7,
    }
    assert [i.code for i in CCMQ_2009.items] == [f"q{n:02d}" for n in range(1, 62)]
    shared = {c for c in (s.code for slots in CCMQ_2009.types.values() for s in slots)}
    assert shared == {i.code for i in CCMQ_2009.items}  # every item is scored somewhere
    labels = {i.code: i.label for i in CCMQ_2009.items}
    shared_labels = sorted(
        labels[c] for c in labels if sum(c in {s.code for s in slots} for slots in CCMQ_2009.types.values()) == 2
    )
    # the six shared questions of §1.3
    assert sorted(shared_labels) == sorted(
        [
            "容易疲乏",
            "说话声音低弱无力",
            "闷闷不乐、情绪低沉",
            "比一般人耐受不了寒冷(冬天的寒冷,夏天的冷空调、电扇等)",
            "容易忘事(健忘)",
            "比别人容易患感冒",
        ]
    )


def test_2009_reverse_items_are_the_six_of_the_balanced_type() -> None:
    reverse = {(t, s.code) for t, slots in CCMQ_2009.types.items() for s in slots if s.reverse}
    assert reverse == {("A", c) for c in ("q02", "q03", "q04", "q05", "q07", "q08")}


def test_2025_table_matches_research_counts() -> None:
    # §1.4: 30 slots, 3 shared, 27 distinct, 26 answered per person
    assert len(CCMQ_2025.items) == 27
    assert _slot_counts(CCMQ_2025) == (30, 3)
    reverse = {(t, s.code) for t, slots in CCMQ_2025.types.items() for s in slots if s.reverse}
    assert reverse == {("A", "s02"), ("A", "s03"), ("A", "s04")}
    # the short form reuses 2009 questions; the wording follows
    by_2009 = {i.code: i for i in CCMQ_2009.items}
    for item in CCMQ_2025.items:
        assert item.label == by_2009[ccmq.SHORT_FORM_SOURCE[item.code]].label
        assert item.sex == by_2009[ccmq.SHORT_FORM_SOURCE[item.code]].sex


def test_sex_specific_items() -> None:
    assert {i.code: i.sex for i in CCMQ_2009.items if i.sex} == {"q41": "female", "q42": "male"}
    assert {i.code: i.sex for i in CCMQ_2025.items if i.sex} == {"s17": "female", "s18": "male"}
    assert CCMQ_2009.item("q41").label.startswith("带下色黄")  # type: ignore[union-attr]
    assert CCMQ_2009.item("q42").label == "阴囊部位潮湿"  # type: ignore[union-attr]


# ----------------------------------------------------------------------------- the formula
def test_transformed_score_formula() -> None:
    assert transformed_score(8, 8) == 0
    assert transformed_score(40, 8) == 100
    assert transformed_score(32, 8) == 75
    assert transformed_score(18, 7) == Fraction(1100, 28)  # 39.2857…
    with pytest.raises(ValueError):
        transformed_score(0, 0)


# ----------------------------------------------------------------------------- decision rules
@pytest.mark.parametrize(
    ("score", "expected"),
    [(0, NO), (29.99, NO), (30, TENDENCY), (30.0, TENDENCY), (39.29, TENDENCY), (39.99, TENDENCY)]
    + [(Fraction(3999, 100), TENDENCY), (40, YES), (40.0, YES), (Decimal("40.00"), YES), (100, YES)],
)
def test_biased_rule_edges(score: object, expected: str) -> None:
    assert biased_result(score) == expected  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("balanced", "highest_biased", "expected"),
    [
        (60, 29.99, YES),  # ≥60 and all <30
        (60, 30, BASICALLY_YES),  # exactly 30 is no longer <30
        (60, 39.99, BASICALLY_YES),
        (60, 40, NO),  # exactly 40 is no longer <40
        (59.99, 0, NO),
        (100, 0, YES),
    ],
)
def test_balanced_rule_edges(balanced: float, highest_biased: float, expected: str) -> None:
    biased = dict(ALL_NO, E=highest_biased)
    assert balanced_result(balanced, biased) == expected


def test_standard_example_balanced_75_qi_deficiency_56() -> None:
    # "平和75 + 气虚56 → 气虚质 是" (others below 30): 平和 is not 是 because a biased type ≥40
    out = classify(dict(ALL_NO, A=75, B=56))
    assert out == dict({t: NO for t in ccmq.TYPES}, B=YES)


def test_standard_example_balanced_75_phlegm_damp_32() -> None:
    # "平和75 + 痰湿32 (others <30) → 基本是平和质, 有痰湿质倾向"
    out = classify(dict(ALL_NO, A=75, E=32))
    assert out == dict({t: NO for t in ccmq.TYPES}, A=BASICALLY_YES, E=TENDENCY)


def test_classify_needs_all_nine() -> None:
    with pytest.raises(ValueError, match="A"):
        classify(dict(ALL_NO))


# ----------------------------------------------------------------------------- scoring answers
def test_2009_answers_for_the_first_worked_example() -> None:
    # 气虚 B = q02 q09 q10 q11 q12 q13 q03 q14 = 4+4+3+3+3+4+3+2 = 26 → (26−8)/32 = 56.25
    # 平和 A = q01 + (6−q02) + (6−q03) + (6−q04) + (6−q05) + q06 + (6−q07) + (6−q08)
    #        = 4 + 2 + 3 + 5 + 5 + 3 + 5 + 5 = 32 → (32−8)/32 = 75
    # 阳虚 C = q15 q16 q17 q05 q12 q18 q19 = 1+1+1+1+3+1+1 = 9 → (9−7)/28 = 7.14
    given = dict(q01=4, q02=4, q03=3, q06=3, q09=4, q10=3, q11=3, q12=3, q13=4, q14=2)
    a = assess(CCMQ_2009, answers_2009(**given), "male")
    s = a.scores
    assert (s["A"].raw, s["A"].n, s["A"].rounded) == (32, 8, Decimal("75.00"))
    assert (s["B"].raw, s["B"].n, s["B"].rounded) == (26, 8, Decimal("56.25"))
    assert (s["C"].raw, s["C"].n, s["C"].rounded) == (9, 7, Decimal("7.14"))
    assert results(a) == dict({t: NO for t in ccmq.TYPES}, B=YES)


def test_2009_answers_for_the_second_worked_example() -> None:
    # A: q01=4, q06=4 and the six reverse items answered 2 (→4 each): 8 + 24 = 32 → 75
    # B: q02=2, q03=2, rest 1: 2+2+6 = 10 → 6.25; C: q05=2 → 8 → 3.57; G (q08), H (q04) the same
    # E: 3+3+2+2+2+2+2+2 = 18 → (18−8)/32 = 31.25 (倾向是; 32 itself is not reachable with n=8)
    rev = {c: 2 for c in ("q02", "q03", "q04", "q05", "q07", "q08")}
    phlegm = dict(q28=3, q29=3, q30=2, q31=2, q32=2, q33=2, q34=2, q35=2)
    a = assess(CCMQ_2009, answers_2009("female", q01=4, q06=4, **rev, **phlegm), "female")
    assert a.scores["A"].rounded == Decimal("75.00")
    assert a.scores["E"].rounded == Decimal("31.25")
    assert [a.scores[t].rounded for t in "BCGH"] == [Decimal("6.25"), Decimal("3.57"), Decimal("3.57"), Decimal("3.57")]
    assert results(a) == dict({t: NO for t in ccmq.TYPES}, A=BASICALLY_YES, E=TENDENCY)


def test_several_biased_types_at_once() -> None:
    # D all 5 → 100; I all 4 → (28−7)/28 = 75; G: q43..q48 3 and q08 3 → (21−7)/28 = 50
    given = {f"q{n}": 5 for n in range(20, 28)}
    given.update({f"q{n}": 4 for n in range(55, 62)})
    given.update({c: 3 for c in ("q43", "q44", "q45", "q46", "q47", "q48", "q08")})
    a = assess(CCMQ_2009, answers_2009(**given), "male")
    assert {t for t, r in results(a).items() if r == YES} == {"D", "G", "I"}
    assert [a.scores[t].rounded for t in "DGI"] == [Decimal("100.00"), Decimal("50.00"), Decimal("75.00")]
    assert a.scores["A"].result == NO


def test_score_between_39_and_40_is_a_tendency() -> None:
    # C: 7 items, raw 18 → 1100/28 = 39.2857 → displayed 39.29, 倾向是 (the gap of the standard's wording)
    given = dict(q15=4, q16=3, q17=3, q05=2, q12=2, q18=2, q19=2)
    a = assess(CCMQ_2009, answers_2009(**given), "male")
    assert (a.scores["C"].raw, a.scores["C"].rounded, a.scores["C"].result) == (18, Decimal("39.29"), TENDENCY)
    a = assess(CCMQ_2009, answers_2009(**dict(given, q19=3)), "male")  # raw 19 → 42.86
    assert (a.scores["C"].rounded, a.scores["C"].result) == (Decimal("42.86"), YES)


def test_damp_heat_uses_the_item_of_the_persons_sex() -> None:
    # 湿热 2009: q36–q40 and q41 (women) or q42 (men): n = 6 for everyone
    # woman: 2+2+2+2+2 + q41 5 = 15 → (15−6)/24 = 37.5; man answering q42=5 likewise
    five = {f"q{n}": 2 for n in range(36, 41)}
    woman = assess(CCMQ_2009, answers_2009("female", q41=5, **five), "female")
    man = assess(CCMQ_2009, answers_2009("male", q42=5, **five), "male")
    for a in (woman, man):
        assert (a.scores["F"].raw, a.scores["F"].n, a.scores["F"].rounded) == (15, 6, Decimal("37.50"))
        assert a.scores["F"].result == TENDENCY


def test_answer_to_the_other_sexs_item_is_ignored() -> None:
    five = {f"q{n}": 2 for n in range(36, 41)}
    plain = assess(CCMQ_2009, answers_2009("male", **five), "male")
    with_female_item = assess(CCMQ_2009, answers_2009("male", q41=5, **five), "male")
    assert with_female_item.ignored == ("q41",)
    assert with_female_item.scores["F"] == plain.scores["F"]
    assert plain.ignored == ()


def test_2025_short_form() -> None:
    # woman: 湿热 s15 s16 s17 = 3+3+2 = 8 → (8−3)/12 = 41.67 是
    # 平和 s01 fwd 5, s02 s03 s04 reversed from 1 → 5: 20 → 100; but a biased type ≥40 → 否
    # 气虚 s02 s05 s06 = 1+2+2 = 5 → 16.67; 特禀 s24..s27 = 2,2,2,1 = 7 → (7−4)/16 = 18.75
    a = assess(CCMQ_2025, answers_2025(s01=5, s15=3, s16=3, s17=2, s05=2, s06=2, s24=2, s25=2, s26=2), "female")
    s = a.scores
    assert (s["F"].raw, s["F"].n, s["F"].rounded, s["F"].result) == (8, 3, Decimal("41.67"), YES)
    assert (s["A"].raw, s["A"].n, s["A"].rounded, s["A"].result) == (20, 4, Decimal("100.00"), NO)
    assert (s["B"].rounded, s["I"].rounded, s["I"].n) == (Decimal("16.67"), Decimal("18.75"), 4)


def test_2025_all_balanced() -> None:
    # only 精力充沛 5 and everything else 1: A = 5 + 5+5+5 = 20 → 100, biased all 0 → 平和质 是
    a = assess(CCMQ_2025, answers_2025("male", s01=5), "male")
    assert results(a) == dict({t: NO for t in ccmq.TYPES}, A=YES)


# ----------------------------------------------------------------------------- input errors
def test_missing_answer_names_the_item() -> None:
    answers = answers_2009()
    del answers["q07"]
    with pytest.raises(ConstitutionInputError) as err:
        assess(CCMQ_2009, answers, "male")
    assert [(p.location, "q07" in p.message and "容易失眠" in p.message) for p in err.value.problems] == [("q07", True)]


def test_woman_must_answer_the_female_item() -> None:
    answers = answers_2009("female")
    del answers["q41"]
    with pytest.raises(ConstitutionInputError) as err:
        assess(CCMQ_2009, answers, "female")
    assert [p.location for p in err.value.problems] == ["q41"]


@pytest.mark.parametrize("bad", [0, 6, -1, 2.5, "3", True, None])
def test_answer_out_of_range(bad: object) -> None:
    with pytest.raises(ConstitutionInputError) as err:
        assess(CCMQ_2009, answers_2009(q12=bad), "male")  # type: ignore[arg-type]
    assert [p.location for p in err.value.problems] == ["q12"]
    assert "from 1 to 5" in err.value.problems[0].message


def test_every_problem_is_reported_at_once() -> None:
    answers = answers_2009(q12=9, q99=1)
    del answers["q01"]
    with pytest.raises(ConstitutionInputError) as err:
        assess(CCMQ_2009, answers, "male")
    assert sorted(p.location for p in err.value.problems) == ["q01", "q12", "q99"]  # type: ignore[type-var]


def test_sex_must_be_known() -> None:
    with pytest.raises(ConstitutionInputError, match="sex"):
        assess(CCMQ_2009, answers_2009(), "unknown")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- FHIR in and out
def _response(form: ccmq.Form, answers: dict[str, object], **extra: object) -> dict:
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": form.questionnaire_url,
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2025-03-01T10:00:00+08:00",
        "item": [{"linkId": code, "answer": [{"valueInteger": v}]} for code, v in answers.items()],
        **extra,
    }


def test_response_errors_carry_fhirpath_locations() -> None:
    answers = answers_2009()
    answers["q04"] = 7
    del answers["q30"]
    qr = _response(CCMQ_2009, answers)
    with pytest.raises(ConstitutionInputError) as err:
        assess_response(qr, "male")
    where = {p.location for p in err.value.problems}
    assert where == {"QuestionnaireResponse.item[3].answer[0]", "QuestionnaireResponse.item.where(linkId='q30')"}


def test_response_structure_errors() -> None:
    qr = _response(CCMQ_2009, answers_2009())
    qr["item"][5]["answer"].append({"valueInteger": 2})
    qr["item"].append({"linkId": "q01", "answer": [{"valueInteger": 1}]})
    qr["item"].append({"linkId": "zz", "answer": [{"valueInteger": 1}]})
    with pytest.raises(ConstitutionInputError) as err:
        read_answers(CCMQ_2009, qr)
    assert [p.location for p in err.value.problems] == [
        "QuestionnaireResponse.item[5]",
        "QuestionnaireResponse.item[60]",
        "QuestionnaireResponse.item[61]",
    ]


def test_answer_coding_from_another_system_is_refused() -> None:
    qr = _response(CCMQ_2009, answers_2009())
    qr["item"][0]["answer"] = [{"valueCoding": {"system": "http://loinc.org", "code": "3"}}]
    with pytest.raises(ConstitutionInputError) as err:
        assess_response(qr, "male")
    assert err.value.problems[0].location == "QuestionnaireResponse.item[0].answer[0]"
    assert "http://loinc.org|3" in err.value.problems[0].message
    qr["item"][0]["answer"] = [{"valueCoding": {"system": ccmq.ANSWER_SYSTEM, "code": "3"}}]
    # all 1s give 平和 raw 1 + 6 × 5 + 1 = 32; q01 = 3 adds 2
    assert assess_response(qr, "male").scores["A"].raw == 34


def test_response_with_unknown_questionnaire() -> None:
    qr = _response(CCMQ_2009, answers_2009(), questionnaire="http://example.org/Questionnaire/phq9")
    with pytest.raises(ConstitutionInputError) as err:
        assess_response(qr, "male")
    assert err.value.problems[0].location == "QuestionnaireResponse.questionnaire"


def test_response_answers_as_codings_in_groups_and_versioned_canonical() -> None:
    answers = answers_2025("male", s01=5)
    qr = _response(CCMQ_2025, {}, questionnaire=CCMQ_2025.questionnaire_url + "|2025")
    qr["item"] = [
        {
            "linkId": "group-1",
            "item": [{"linkId": c, "answer": [{"valueCoding": {"code": str(v)}}]} for c, v in answers.items()],
        }
    ]
    a = assess_response(qr, "male")
    assert a.scores["A"].result == YES
    # an out-of-range coding inside a group is located inside it
    qr["item"][0]["item"][2]["answer"][0]["valueCoding"]["code"] = "9"
    with pytest.raises(ConstitutionInputError) as err:
        assess_response(qr, "male")
    assert err.value.problems[0].location == "QuestionnaireResponse.item[0].item[2].answer[0]"


def test_observation_shape() -> None:
    given = dict(q01=4, q02=4, q03=3, q06=3, q09=4, q10=3, q11=3, q12=3, q13=4, q14=2)
    qr = _response(CCMQ_2009, answers_2009(**given))
    obs = observation(
        assess_response(qr, "male"),
        subject=qr["subject"],
        effective=qr["authored"],
        derived_from={"reference": "QuestionnaireResponse/qr1"},
    )
    check_resource(obs, "Observation")
    assert "valueQuantity" not in obs and not any(k.startswith("value") for k in obs)
    code = obs["code"]["coding"][0]
    assert (code["system"], code["code"]) == (
        "http://fhir.telefhir.cn/CodeSystem/tcm-observation-code",
        "constitution-assessment",
    )
    assert obs["method"]["coding"][0]["system"] == "http://fhir.telefhir.cn/CodeSystem/tcm-constitution-form"
    assert obs["method"]["coding"][0]["code"] == "zyyxh-t157-2009"
    assert obs["subject"] == {"reference": "Patient/p1"}
    assert obs["effectiveDateTime"] == "2025-03-01T10:00:00+08:00"
    assert obs["derivedFrom"] == [{"reference": "QuestionnaireResponse/qr1"}]
    assert [c["code"]["coding"][0]["code"] for c in obs["component"]] == list("ABCDEFGHI")
    b = obs["component"][1]
    assert b["code"]["coding"][0]["system"] == "http://fhir.telefhir.cn/CodeSystem/tcm-constitution"
    assert b["valueQuantity"] == {
        "value": 56.25,
        "unit": "score",
        "system": "http://unitsofmeasure.org",
        "code": "{score}",
    }
    assert b["interpretation"][0]["coding"][0] == {
        "system": "http://fhir.telefhir.cn/CodeSystem/tcm-constitution-result",
        "code": "yes",
        "display": "是",
    }
    assert obs["component"][0]["valueQuantity"]["value"] == 75.0
    assert obs["component"][0]["interpretation"][0]["coding"][0]["code"] == "no"


# ----------------------------------------------------------------------------- packaged Questionnaires
@pytest.mark.parametrize("form", ccmq.FORMS, ids=lambda f: f.key)
def test_questionnaire_file_agrees_with_the_scoring_tables(form: ccmq.Form) -> None:
    q = json.loads((ROOT / "profiles" / f"{form.questionnaire_id}.json").read_text("utf-8"))
    check_resource(q, "Questionnaire")
    assert (q["id"], q["url"]) == (form.questionnaire_id, form.questionnaire_url)
    assert [i["linkId"] for i in q["item"]] == [i.code for i in form.items]
    for item, spec in zip(q["item"], form.items, strict=True):
        assert item["code"] == [{"system": form.item_system, "code": spec.code, "display": spec.question}]
        assert item["text"] == spec.question
        assert item["required"] is (spec.sex is None)
        options = [o["valueCoding"] for o in item["answerOption"]]
        assert [(o["system"], o["code"], o["display"]) for o in options] == [
            (ccmq.ANSWER_SYSTEM, str(v), label) for v, label in ccmq.SCALE.items()
        ]


def _codesystem(cs_id: str) -> dict:
    """A CodeSystem of terminology/ (written separately, for display and search)."""
    found = sorted((ROOT / "terminology").rglob(f"{cs_id}.json")) + sorted(
        (ROOT / "terminology").rglob(f"codesystem-{cs_id}.json")
    )
    assert found, f"no CodeSystem file for {cs_id} under terminology/"
    return json.loads(found[0].read_text("utf-8"))


@pytest.mark.parametrize("form", ccmq.FORMS, ids=lambda f: f.key)
def test_item_codesystem_agrees_with_the_scoring_tables(form: ccmq.Form) -> None:
    """The item CodeSystem carries the same codes, wording, types, reverse items and sexes."""
    cs = _codesystem(form.item_system_id)
    assert cs["url"] == form.item_system
    theirs = {}
    for concept in cs["concept"]:
        props: dict[str, set[str]] = {}
        for p in concept.get("property", []):
            props.setdefault(p["code"], set()).add(p.get("valueCode") or p.get("valueString"))
        theirs[concept["code"]] = (
            concept["display"],
            props.get("type", set()),
            props.get("reverse-for", set()),
            next(iter(props.get("sex", {None}))),
        )
    ours = {}
    for item in form.items:
        types = {t for t, slots in form.types.items() if any(s.code == item.code for s in slots)}
        reverse = {t for t, slots in form.types.items() if any(s.code == item.code and s.reverse for s in slots)}
        ours[item.code] = (item.question, types, reverse, item.sex)
    assert theirs == ours


def test_answer_codesystem_agrees_with_the_scale() -> None:
    cs = _codesystem("tcm-ccmq-answer")
    assert cs["url"] == ccmq.ANSWER_SYSTEM
    assert {c["code"]: c["display"] for c in cs["concept"]} == {str(v): t for v, t in ccmq.SCALE.items()}


@pytest.mark.parametrize("year", ["2009", "2025"])
def test_examples_are_what_the_scoring_produces(year: str) -> None:
    examples = ROOT / "profiles" / "examples"
    qr = json.loads((examples / f"qr-ccmq-{year}-example.json").read_text("utf-8"))
    obs = json.loads((examples / f"obs-constitution-{year}-example.json").read_text("utf-8"))
    check_resource(qr, "QuestionnaireResponse")
    check_resource(obs, "Observation")
    # the example subject (cn-patient-example) is female
    computed = observation(
        assess_response(qr, "female"),
        subject=qr["subject"],
        effective=qr["authored"],
        derived_from={"reference": f"QuestionnaireResponse/{qr['id']}"},
    )
    assert {k: v for k, v in obs.items() if k != "id"} == computed
