"""UCUM canonical units for quantity search (``fhir_server.search.ucum``).

Exact conversion values from the UCUM definitions (ucum-essence.xml v2.2), equivalent spellings,
invalid codes, special (temperature) units, arbitrary units, ranges, caching and speed.
"""

from __future__ import annotations

import math
import time
from decimal import Decimal

import pytest

from fhir_server.search import ucum
from fhir_server.search.ucum import canonical, canonical_range, canonical_unit, unit_info

approx = pytest.approx


def value(v, code):
    r = canonical(v, code)
    assert r is not None, code
    return r[0]


def same(a: tuple, b: tuple) -> None:
    """``a`` and ``b`` are ``(value, code)`` quantities that are equal after conversion."""
    ca, cb = canonical(*a), canonical(*b)
    assert ca is not None and cb is not None, (a, b)
    assert ca[1] == cb[1], (a, b, ca, cb)
    assert ca[0] == approx(cb[0], rel=1e-12), (a, b, ca, cb)


# --------------------------------------------------------------------------- concrete conversions


def test_mass_prefixes():
    assert canonical(5.4, "mg") == (approx(0.0054, rel=1e-15), "g")
    assert canonical(0.0054, "g") == (0.0054, "g")
    assert canonical(2, "kg") == (2000.0, "g")
    assert canonical(3, "ug") == (approx(3e-6, rel=1e-15), "g")
    assert canonical(7, "ng") == (approx(7e-9, rel=1e-15), "g")
    assert unit_info("mg") == (0.001, 0.0, "g")
    assert unit_info("kg") == (1000.0, 0.0, "g")
    same((5.4, "mg"), (0.0054, "g"))
    same((1.5, "kg"), (1500000, "mg"))


def test_case_sensitive():
    assert canonical(1, "Mg") == (1e6, "g")  # megagram, not milligram
    assert canonical(1, "mg") == (0.001, "g")
    assert canonical_unit("MG") == "g.C-1.s-1"  # megagauss
    assert canonical(1, "ML") == (1000.0, "m3")  # megalitre
    assert canonical(1, "KG") is None
    assert canonical(1, "MMOL/L") is None
    assert canonical(1, "Kg") is None
    assert canonical(1, "mL") == (approx(1e-6, rel=1e-15), "m3")
    assert canonical(1, "ml") == canonical(1, "mL")  # "l" and "L" are both the litre


def test_substance_concentration():
    assert canonical_unit("mmol/L") == "mol.m-3"
    assert value(5.5, "mmol/L") == approx(5.5)
    assert value(5500, "umol/L") == approx(5.5)
    assert value(1, "umol/L") == approx(0.001, rel=1e-15)
    same((5.5, "mmol/L"), (5500, "umol/L"))
    same((140, "meq/L"), (140, "mmol/L"))  # eq is 1 mol in UCUM
    same((290, "mosm/kg"), (0.29, "osm/kg"))


def test_mass_concentration():
    assert unit_info("mg/dL") == (10.0, 0.0, "g.m-3")  # exact, not 9.999999999999998
    assert unit_info("g/L") == (1000.0, 0.0, "g.m-3")
    assert value(100, "mg/dL") == 1000.0
    assert value(1, "g/L") == 1000.0
    same((100, "mg/dL"), (1, "g/L"))
    same((14, "g/dL"), (140, "g/L"))
    same((14, "g%"), (14, "g/dL"))  # g% is g/dL in UCUM (pint reads gram·percent)
    same((3.2, "ng/mL"), (3.2, "ug/L"))


def test_counts_per_volume():
    assert unit_info("10*3/uL") == (1e12, 0.0, "m-3")
    assert unit_info("10*9/L") == (1e12, 0.0, "m-3")
    same((7.2, "10*3/uL"), (7.2, "10*9/L"))
    same((4.5, "10*6/uL"), (4.5, "10*12/L"))
    same((250, "10^3/uL"), (250, "10*3/uL"))
    same((7.2, "10*3{cells}/uL"), (7.2, "10*9/L"))
    # counts are not amounts of substance: mol stays a dimension
    assert canonical_unit("10*9/L") != canonical_unit("mmol/L")


def test_bmi():
    assert canonical(25, "kg/m2") == (25000.0, "g.m-2")
    same((25, "kg/m2"), (2.5, "g/cm2"))
    same((25, "kg.m-2"), (25, "kg/m2"))


def test_pressure():
    # m[Hg] is a ratio unit in UCUM (133.3220 kPa), so mm[Hg] and kPa are commensurable
    assert canonical(1, "mm[Hg]") == (approx(133322.0, rel=1e-15), "g.m-1.s-2")
    assert canonical(1, "kPa") == (1e6, "g.m-1.s-2")
    assert canonical(1, "Pa") == (1000.0, "g.m-1.s-2")  # kg base -> g base: 1 Pa = 1000 g/(m.s2)
    same((120, "mm[Hg]"), (15.99864, "kPa"))
    same((1, "bar"), (100, "kPa"))
    same((10, "cm[H2O]"), (0.980665, "kPa"))


def test_percent_and_dimensionless():
    assert canonical(5, "%") == (0.05, "1")
    assert canonical(5, "1") == (5.0, "1")
    assert canonical(5, "{score}") == (5.0, "1")
    assert canonical(2, "[ppm]") == (approx(2e-6, rel=1e-15), "1")
    same((50, "[ppth]"), (5, "%"))
    same((0.05, "{ratio}"), (5, "%"))
    same((1, "mol/mol"), (100, "%"))


def test_time():
    assert canonical(90, "min") == (5400.0, "s")
    assert canonical(1.5, "h") == (5400.0, "s")
    assert canonical(5400, "s") == (5400.0, "s")
    assert canonical(2, "d") == (172800.0, "s")
    assert canonical(1, "wk") == (604800.0, "s")
    assert canonical(1, "a") == (31557600.0, "s")  # Julian year, 365.25 d
    assert canonical(1, "mo") == (2629800.0, "s")  # a_j/12
    same((90, "min"), (1.5, "h"))
    same((250, "ms"), (0.25, "s"))


def test_rates_and_annotations():
    assert canonical(72, "/min") == (approx(1.2, rel=1e-15), "s-1")
    assert canonical(72, "{beats}/min") == canonical(72, "/min")
    assert canonical(72, "/min{beats}") == canonical(72, "/min")
    assert canonical(72, "min-1") == canonical(72, "/min")
    same((60, "/min"), (1, "Hz"))
    same((16, "{breaths}/min"), (16, "/min"))
    same((90, "mL/min/{1.73_m2}"), (1.5, "mL/s"))
    assert canonical(1, "{#}/[LPF]") == (0.01, "1")  # [LPF] is 100 (pint reads 1)


def test_imperial():
    assert canonical(12, "[in_i]") == (approx(0.3048, rel=1e-15), "m")
    assert canonical(1, "[lb_av]") == (453.59237, "g")
    same((12, "[in_i]"), (1, "[ft_i]"))
    same((1, "[lb_av]"), (16, "[oz_av]"))
    same((1, "[cft_i]"), (1728, "[cin_i]"))  # cubic foot (pint reads centi-foot)
    assert canonical(1, "[Cal]") == (approx(4184e3, rel=1e-15), "g.m2.s-2")  # nutrition Calorie = kcal
    same((1, "[Cal]"), (4.184, "kJ"))


def test_arbitrary_units_are_their_own_dimension():
    assert canonical(5, "[IU]/L") == (5000.0, "[iU].m-3")
    same((5, "[IU]/L"), (5, "[iU]/L"))
    same((5, "m[IU]/mL"), (5, "[IU]/L"))
    # not commensurable with counts, other arbitrary units or enzyme units
    units = {canonical_unit(c) for c in ("[IU]/L", "/L", "[arb'U]/L", "[CFU]/L", "U/L", "10*3/uL")}
    assert len(units) == 5  # "/L" and "10*3/uL" share "m-3"
    assert canonical_unit("U/L") == "mol.m-3.s-1"  # U is umol/min
    same((1, "U/L"), (1, "umol/min/L"))


# --------------------------------------------------------------------------- equivalent spellings


@pytest.mark.parametrize(
    "codes",
    [
        ("mg/dL", "mg.dL-1", "10*-3.g/dL", "mg/(dL)", "(mg/dL)", "mg{total}/dL", "10*-2.g/L", "10.mg/L", "cg/L"),
        ("mmol/L", "mol/m3", "umol/mL", "10*-3.mol/L", "mmol.L-1", "nmol/uL"),
        ("10*3/uL", "10*9/L", "10^9/L", "10*3.uL-1", "/nL", "10*6/mL"),
        ("/min", "{beats}/min", "min-1", "1/min", "{count}/min"),
        ("kg/m2", "kg.m-2", "g/(dm.cm)", "10*3.g/m2"),
        ("m/s2", "m.s-2", "m/s/s", "cm/(s.cs)"),
        ("[IU]/L", "[iU]/L", "m[IU]/mL", "u[IU]/uL"),
    ],
)
def test_equivalent_spellings(codes):
    infos = [unit_info(c) for c in codes]
    assert all(i is not None for i in infos), dict(zip(codes, infos, strict=True))
    assert len({i.unit for i in infos}) == 1, dict(zip(codes, infos, strict=True))
    for c, i in zip(codes, infos, strict=True):
        assert i.factor == approx(infos[0].factor, rel=1e-12), c


def test_commensurable_units_share_the_canonical_unit():
    assert {canonical_unit(c) for c in ("mg", "g", "kg", "ug", "[lb_av]", "[oz_av]", "t")} == {"g"}
    assert {canonical_unit(c) for c in ("s", "min", "h", "d", "wk", "mo", "a")} == {"s"}
    assert {canonical_unit(c) for c in ("mL", "L", "dL", "[cin_i]", "[gal_us]", "m3")} == {"m3"}
    assert {canonical_unit(c) for c in ("K", "Cel", "[degF]", "[degR]")} == {"K"}
    assert canonical_unit("g") != canonical_unit("mol")
    assert canonical_unit("g/L") != canonical_unit("mol/L")


def test_canonical_units_are_valid_and_idempotent():
    for code in ("mg/dL", "mmol/L", "10*9/L", "kg/m2", "mm[Hg]", "%", "/min", "[IU]/L", "U/L", "Cel", "sr", "[Cal]"):
        unit = canonical_unit(code)
        assert unit is not None
        assert canonical(3.5, unit) == (3.5, unit), (code, unit)


# --------------------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    "code",
    [
        "",
        "foo",
        "mg/",
        "/",
        "mg /dL",
        " mg",
        "mg//dL",
        "KG",
        "MOL",
        "Torr",  # not a UCUM atom
        "mm Hg",
        "mmHg",
        "10**3/uL",
        "{score",
        "{分}",  # UCUM annotations are ASCII
        "[iu]",
        "kgm2",
        "m0",
        "x" * 500,
    ],
)
def test_invalid_codes(code):
    assert canonical(1, code) is None
    assert canonical_range(0.5, 1.5, code) is None
    assert canonical_unit(code) is None
    assert unit_info(code) is None


def test_non_string_codes_and_bad_values():
    assert canonical(1, None) is None  # type: ignore[arg-type]
    assert canonical(1, 42) is None  # type: ignore[arg-type]
    assert canonical(1, b"mg") is None  # type: ignore[arg-type]
    assert canonical(float("nan"), "mg") is None
    assert canonical(float("inf"), "mg") is None
    assert canonical(Decimal("NaN"), "mg") is None
    assert canonical(1e306, "Mg") is None  # overflows
    assert canonical(None, "mg") is None  # type: ignore[arg-type]
    assert canonical_range(float("nan"), 1, "mg") is None


def test_decimal_and_int_values():
    assert canonical(Decimal("5.4"), "mg") == (approx(0.0054, rel=1e-15), "g")
    assert canonical(Decimal("120"), "mm[Hg]") == (approx(15998640.0, rel=1e-15), "g.m-1.s-2")
    assert canonical(3, "kg") == (3000.0, "g")


# --------------------------------------------------------------------------- special units


def test_temperatures():
    assert unit_info("Cel") == (1.0, 273.15, "K")
    assert canonical(37, "Cel") == (approx(310.15, rel=1e-15), "K")
    assert canonical(0, "Cel") == (273.15, "K")
    assert canonical(-273.15, "Cel") == (approx(0.0, abs=1e-12), "K")
    assert canonical(98.6, "[degF]") == (approx(310.15, rel=1e-14), "K")
    assert canonical(32, "[degF]") == (approx(273.15, rel=1e-15), "K")
    assert canonical(-40, "[degF]")[0] == approx(canonical(-40, "Cel")[0], rel=1e-15)
    assert canonical(80, "[degRe]") == (approx(373.15, rel=1e-15), "K")
    assert canonical(310.15, "K") == (310.15, "K")
    assert canonical(491.67, "[degR]") == (approx(273.15, rel=1e-15), "K")  # Rankine is a ratio unit
    assert canonical(37, "Cel{body}") == canonical(37, "Cel")
    same((37, "Cel"), (98.6, "[degF]"))
    same((37, "Cel"), (310.15, "K"))
    same((100, "mK"), (0.1, "K"))


@pytest.mark.parametrize("code", ["mCel", "Cel/h", "Cel2", "Cel.s", "/Cel", "[degF]/min", "2.Cel"])
def test_special_units_in_compounds_are_refused(code):
    assert canonical(1, code) is None


@pytest.mark.parametrize("code", ["[pH]", "dB", "B", "B[SPL]", "Np", "%[slope]", "[p'diop]", "[hp'_X]", "bit_s"])
def test_other_special_units_are_refused(code):
    assert canonical(1, code) is None


def test_temperature_range_is_shifted():
    lo, hi, unit = canonical_range(36.95, 37.05, "Cel")
    assert unit == "K"
    assert lo == approx(310.1, rel=1e-15)
    assert hi == approx(310.2, rel=1e-15)
    lo, hi, unit = canonical_range(98.55, 98.65, "[degF]")
    assert (lo, hi) == (approx(310.122222222222, rel=1e-12), approx(310.177777777778, rel=1e-12))


# --------------------------------------------------------------------------- ranges


def test_range():
    assert canonical_range(5.35, 5.45, "mg") == (approx(0.00535, rel=1e-15), approx(0.00545, rel=1e-15), "g")
    assert canonical_range(Decimal("0.95"), Decimal("1.05"), "g/L") == (950.0, 1050.0, "g.m-3")
    lo, hi, unit = canonical_range(115, 125, "mm[Hg]")
    assert unit == "g.m-1.s-2" and lo < hi
    assert (lo, hi) == (approx(115 * 133322.0), approx(125 * 133322.0))


def test_range_open_bounds():
    # index.NUM_MIN / NUM_MAX are open bounds: kept as they are, not scaled to inf or to a finite value
    assert canonical_range(-1.0e308, 5.45, "kg") == (-1.0e308, 5450.0, "g")
    assert canonical_range(5.35, 1.0e308, "mg") == (approx(0.00535, rel=1e-15), 1.0e308, "g")
    assert canonical_range(-math.inf, math.inf, "Cel") == (-math.inf, math.inf, "K")
    # a finite bound that overflows is clamped to the open bound
    assert canonical_range(1.0e300, 1.0e307, "Mg") == (1.0e306, 1.0e308, "g")


def test_search_example_from_the_spec():
    """5.4 mg (implied range [5.35, 5.45] mg) matches 0.0054 g, and 5.5 mg does not."""
    lo, hi, unit = canonical_range(5.35, 5.45, "mg")
    v, u = canonical(0.0054, "g")
    assert u == unit and lo <= v <= hi
    v, _ = canonical(0.0055, "g")
    assert not lo <= v <= hi


# --------------------------------------------------------------------------- cross-check, cache, speed


def test_agrees_with_ucumvert_pint_conversion():
    """Where ucumvert's pint registry is right, both give the same factors (kg base there, g here)."""
    pytest.importorskip("pint")
    from ucumvert import PintUcumRegistry

    ureg = PintUcumRegistry()
    codes = [
        "mg/dL", "mmol/L", "umol/L", "10*9/L", "10*3/uL", "kg/m2", "kPa", "%", "/min", "{beats}/min",
        "mL/min/{1.73_m2}", "ug/(kg.min)", "[in_i]", "[lb_av]", "fL", "pg", "meq/L", "mosm/kg", "U/L", "ng/mL",
        "L/min", "cm", "[ft_i]", "[oz_av]", "wk", "mo", "a", "m2", "mg/(24.h)", "10.L/min",
    ]  # fmt: skip
    for code in codes:
        base = ureg.from_ucum(code).to_base_units()
        factor = base.magnitude * 1000 ** dict(base.units._units).get("kilogram", 0)
        assert unit_info(code).factor == approx(factor, rel=1e-12), code


def test_unit_analysis_is_cached():
    unit_info.cache_clear()
    assert canonical(1, "mg/dL") == (10.0, "g.m-3")
    misses = unit_info.cache_info().misses
    for _ in range(100):
        canonical(1, "mg/dL")
    info = unit_info.cache_info()
    assert info.misses == misses and info.hits >= 100
    assert unit_info("mg/dL") is unit_info("mg/dL")


def test_cached_call_is_fast():
    codes = ["mg/dL", "mmol/L", "10*9/L", "Cel", "kg/m2", "/min"]
    for c in codes:
        canonical(1.0, c)
    n = 20000
    t = time.perf_counter()
    for i in range(n):
        canonical(1.5, codes[i % 6])
    per_call = (time.perf_counter() - t) / n
    # about 0.3 µs here; an uncached parse is 0.5-6 ms, so this fails only if the cache is broken
    assert per_call < 20e-6, per_call


@pytest.mark.parametrize("code", ["10*999999999", "m-99999999", "10*300.10*300", "10*-300.10*-300", "10*401"])
def test_out_of_range_factors(code):
    t = time.perf_counter()
    assert canonical(1, code) is None
    assert time.perf_counter() - t < 1.0


def test_large_but_representable_factors():
    assert canonical(1, "10*300") == (1e300, "1")
    assert canonical(1, "10*-300") == (approx(1e-300, rel=1e-15), "1")


def test_max_code_length():
    long_ok = "m" + ".m" * 20
    assert canonical(1, long_ok) == (1.0, "m21")
    assert canonical(1, "m" + ".m" * ucum.MAX_CODE_LENGTH) is None
