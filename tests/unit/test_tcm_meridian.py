"""Meridian measurement interpretation (fhir_server/clinical/meridian.py, meridian_fhir.py).

Hand-computed: mean of the 24 values; default band mean × (1 ± 1/3), a point strictly beyond
it is 实/虚; a meridian with one side ≥ 2 × the other is imbalanced (research §4.2).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest

from fhir_server.clinical import meridian
from fhir_server.clinical.meridian import BALANCED, DEFICIENT, EXCESS, MeridianInputError, interpret
from fhir_server.clinical.meridian_fhir import interpret_observation
from fhir_server.validation import check_resource

POINT_SYSTEM = "http://fhir.telefhir.cn/CodeSystem/tcm-meridian-point"
OBS_CODE = "http://fhir.telefhir.cn/CodeSystem/tcm-observation-code"


def values(default: float = 60, **given: float) -> dict[str, float]:
    out = {p: default for p in meridian.POINTS}
    out.update({k.replace("_", "-"): v for k, v in given.items()})
    return out


def measurement(vals: dict[str, float]) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": OBS_CODE, "code": "meridian-measurement"}]},
        "subject": {"reference": "Patient/p1"},
        "component": [
            {
                "code": {"coding": [{"system": POINT_SYSTEM, "code": p}]},
                "valueQuantity": {"value": v, "unit": "µA", "system": "http://unitsofmeasure.org", "code": "uA"},
            }
            for p, v in vals.items()
        ],
    }


def test_points_are_the_24_meridian_sides() -> None:
    assert len(meridian.POINTS) == 24
    assert meridian.POINTS[:4] == ("LU-L", "LU-R", "LI-L", "LI-R")
    assert set(meridian.MERIDIANS) == {"LU", "LI", "ST", "SP", "HT", "SI", "BL", "KI", "PC", "TE", "GB", "LR"}


def test_default_band_is_a_third_either_side_of_the_mean() -> None:
    # sum = 120 + 30 + 22 × 60 = 1470 → mean 61.25; band 40.8333 … 81.6667
    r = interpret(values(LU_L=120, LU_R=30))
    assert r.band.mean == Fraction(245, 4)
    assert (r.band.low, r.band.high) == (Fraction(245, 6), Fraction(245, 3))
    assert r.points["LU-L"] == EXCESS
    assert r.points["LU-R"] == DEFICIENT
    assert {p for p, v in r.points.items() if v != BALANCED} == {"LU-L", "LU-R"}
    # 120 / 30 = 4 ≥ 2
    assert [(i.meridian, i.ratio) for i in r.imbalances] == [("LU", 4)]


def test_value_on_the_band_edge_is_balanced_and_ratio_two_is_imbalanced() -> None:
    # sum = 22 × 60 + 80 + 40 = 1440 → mean 60, band exactly 40 … 80
    r = interpret(values(ST_L=80, ST_R=40))
    assert (r.band.low, r.band.high) == (40, 80)
    assert (r.points["ST-L"], r.points["ST-R"]) == (BALANCED, BALANCED)  # "more than 1/3" only
    assert [(i.meridian, i.ratio) for i in r.imbalances] == [("ST", 2)]  # 相差1倍: ratio 2 counts
    # just beyond the edge: 80.1 against a mean of 1440.1 / 24 = 60.0042 → high 80.0056
    r = interpret(values(ST_L=80.1, ST_R=40))
    assert r.points["ST-L"] == EXCESS


def test_ratio_just_below_two_is_not_imbalanced() -> None:
    r = interpret(values(HT_L=79.9, HT_R=40))
    assert r.imbalances == ()


def test_zero_sides() -> None:
    r = interpret(values(KI_L=0, KI_R=10, PC_L=0, PC_R=0))
    assert [(i.meridian, i.ratio) for i in r.imbalances] == [("KI", None)]  # 10 vs 0: unbounded
    assert r.points["PC-L"] == DEFICIENT


def test_absolute_band_alternative() -> None:
    # all 75 except LI 91 / 59: sum = 22 × 75 + 150 = 1800 → mean 75; ±15 µA → 60 … 90
    r = interpret(values(75, LI_L=91, LI_R=59), absolute_width=15)
    assert (r.band.kind, r.band.low, r.band.high) == ("absolute", 60, 90)
    assert (r.points["LI-L"], r.points["LI-R"]) == (EXCESS, DEFICIENT)
    assert r.imbalances == ()  # 91 / 59 = 1.54
    # the same reading under the default 1/3 rule: band 50 … 100, both balanced
    r = interpret(values(75, LI_L=91, LI_R=59))
    assert (r.points["LI-L"], r.points["LI-R"]) == (BALANCED, BALANCED)


def test_relative_width_parameter() -> None:
    # mean 61.25 (as above); width 0.5 → 30.625 … 91.875: LU-R 30 still deficient, LU-L 120 excess
    r = interpret(values(LU_L=120, LU_R=30), relative_width=Decimal("0.5"))
    assert (r.band.low, r.band.high) == (Fraction(245, 8), Fraction(735, 8))
    with pytest.raises(MeridianInputError):
        interpret(values(), relative_width=1)
    with pytest.raises(MeridianInputError):
        interpret(values(), relative_width=0.2, absolute_width=10)
    with pytest.raises(MeridianInputError):
        interpret(values(), absolute_width=-1)


def test_input_errors_list_every_problem() -> None:
    vals = values(LU_L=-1)
    del vals["LR-R"]
    vals["XX-L"] = 3
    with pytest.raises(MeridianInputError) as err:
        interpret(vals)
    where = [p for _, p in err.value.problems]
    assert where == ["LU-L", "XX-L", None]
    assert "LR-R" in err.value.problems[-1][0]


def test_observation_completed() -> None:
    obs, reading = interpret_observation(measurement(values(LU_L=120, LU_R=30)))
    check_resource(obs, "Observation")
    comps = obs["component"]
    assert len(comps) == 24 + 3 + 1
    lu_l = comps[0]
    assert lu_l["interpretation"] == [
        {
            "coding": [
                {
                    "system": "http://fhir.telefhir.cn/CodeSystem/tcm-meridian-interpretation",
                    "code": "excess",
                    "display": "实",
                }
            ]
        }
    ]
    assert comps[1]["interpretation"][0]["coding"][0]["code"] == "deficient"
    assert comps[2]["interpretation"][0]["coding"][0]["code"] == "balanced"
    derived = {c["code"]["coding"][0]["code"]: c["valueQuantity"] for c in comps[24:27]}
    assert {k: v["value"] for k, v in derived.items()} == {
        "meridian-mean": 61.25,
        "meridian-band-low": 40.83,
        "meridian-band-high": 81.67,
    }
    assert derived["meridian-mean"]["code"] == "uA" and derived["meridian-mean"]["unit"] == "µA"
    flag = comps[27]
    assert flag["code"]["coding"][0]["system"] == "http://fhir.telefhir.cn/CodeSystem/tcm-meridian"
    assert flag["code"]["coding"][0]["code"] == "LU"
    assert (flag["valueRatio"]["numerator"]["value"], flag["valueRatio"]["denominator"]["value"]) == (120, 30)
    assert [(c["system"].rsplit("/", 1)[1], c["code"]) for c in flag["interpretation"][0]["coding"]] == [
        ("tcm-meridian-interpretation", "left-right-imbalance"),
        ("v3-ObservationInterpretation", "A"),
    ]
    # interpreting again replaces the derived components instead of adding more
    again, _ = interpret_observation(obs)
    assert again == obs


def test_observation_other_components_are_kept() -> None:
    src = measurement(values())
    src["component"].insert(0, {"code": {"text": "room temperature"}, "valueQuantity": {"value": 22, "unit": "Cel"}})
    obs, _ = interpret_observation(src)
    assert obs["component"][0] == src["component"][0]
    assert len(obs["component"]) == 1 + 24 + 3


def test_observation_errors_have_component_paths() -> None:
    src = measurement(values())
    src["component"][3]["valueQuantity"] = {
        "value": 5,
        "unit": "mA",
        "system": "http://unitsofmeasure.org",
        "code": "mA",
    }
    src["component"][5]["code"]["coding"][0]["code"] = "LU-X"
    src["component"].append(dict(src["component"][0]))
    src["code"]["coding"][0]["code"] = "tongue"
    with pytest.raises(MeridianInputError) as err:
        interpret_observation(src)
    assert [p for _, p in err.value.problems] == [
        "Observation.code",
        "Observation.component[3].valueQuantity",
        "Observation.component[5].code",
        "Observation.component[24]",
    ]


def test_observation_missing_points_and_negative_values() -> None:
    src = measurement(values())
    src["component"][7]["valueQuantity"]["value"] = -2
    del src["component"][0]
    with pytest.raises(MeridianInputError) as err:
        interpret_observation(src)
    assert [p for _, p in err.value.problems] == ["Observation.component[6]", None]
    assert "LU-L" in err.value.problems[1][0]


def test_example_is_what_the_interpretation_produces() -> None:
    import json
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "examples" / "obs-meridian-example.json"
    example = json.loads(path.read_text("utf-8"))
    check_resource(example, "Observation")
    again, reading = interpret_observation(example)
    assert again == example
    # six points differ from 60: 18 × 60 + 120 + 30 + 35 + 38 + 85 + 70 = 1458 → mean 60.75, band 40.5 … 81
    assert (reading.band.mean, reading.band.low, reading.band.high) == (Fraction(243, 4), Fraction(81, 2), 81)
    assert {p: v for p, v in reading.points.items() if v != BALANCED} == {
        "LU-L": EXCESS,
        "LU-R": DEFICIENT,
        "KI-L": DEFICIENT,
        "KI-R": DEFICIENT,
        "LR-L": EXCESS,
    }
    assert [i.meridian for i in reading.imbalances] == ["LU"]
