"""Interpretation of a 24-point meridian (经络) conductance measurement in µA.

The device measures one point per meridian on each side (12 × left/right, research
``tcm_standards.md`` §4.2). The reading is judged against the person's own mean:

- **band**: by default the Chinese 经穴测定 rule [V: newton.com.tw]: a point more than 1/3 above
  the mean is 实 (excess), more than 1/3 below is 虚 (deficient), otherwise 平 (balanced); i.e.
  the band is ``mean × (1 ± 1/3)`` and a value *on* the edge is still balanced ("more than").
  ``relative_width`` changes the fraction. The alternative Ryodoraku-style report uses a fixed
  band ``mean ± 15 µA`` (example: mean 75, band 60–90) [U: one source, chiro.org; vendors
  differ]; pass ``absolute_width`` (µA) for it.
- **left/right imbalance**: a meridian whose larger side is at least twice its smaller side
  (相差1倍以上) is flagged. A side reading 0 µA against a non-zero other side counts as
  imbalanced (the ratio is unbounded); both sides 0 is not.

Why exact fractions: the band edges are ``mean × 2/3`` and ``mean × 4/3``, and whether a point on
the edge is 平 must not depend on binary rounding. Values are rounded (2 decimals) only for display.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from types import MappingProxyType
from typing import Literal

#: the twelve meridians (WHO codes, TE = 三焦 SJ) in the order of §4.1
MERIDIANS: MappingProxyType[str, str] = MappingProxyType(
    {
        "LU": "手太阴肺经",
        "LI": "手阳明大肠经",
        "ST": "足阳明胃经",
        "SP": "足太阴脾经",
        "HT": "手少阴心经",
        "SI": "手太阳小肠经",
        "BL": "足太阳膀胱经",
        "KI": "足少阴肾经",
        "PC": "手厥阴心包经",
        "TE": "手少阳三焦经",
        "GB": "足少阳胆经",
        "LR": "足厥阴肝经",
    }
)
SIDES = ("L", "R")
#: the 24 measuring points, ``<meridian>-<side>`` (codes of tcm-meridian-point)
POINTS: tuple[str, ...] = tuple(f"{m}-{s}" for m in MERIDIANS for s in SIDES)

DEFICIENT, BALANCED, EXCESS = "deficient", "balanced", "excess"
#: interpretation code (tcm-meridian-interpretation) -> display
INTERPRETATIONS: MappingProxyType[str, str] = MappingProxyType({DEFICIENT: "虚", BALANCED: "平", EXCESS: "实"})

DEFAULT_RELATIVE_WIDTH = Fraction(1, 3)
#: 相差1倍以上: larger side ≥ 2 × smaller side
IMBALANCE_RATIO = Fraction(2)

Value = int | float | Fraction | Decimal


class MeridianInputError(ValueError):
    """The measurement cannot be interpreted; ``problems`` lists ``(message, point code or None)``."""

    def __init__(self, problems: list[tuple[str, str | None]]) -> None:
        super().__init__("; ".join(m for m, _ in problems))
        self.problems = problems


@dataclass(frozen=True)
class Band:
    mean: Fraction
    low: Fraction
    high: Fraction
    kind: Literal["relative", "absolute"]
    width: Fraction

    def judge(self, value: Fraction) -> str:
        if value > self.high:
            return EXCESS
        if value < self.low:
            return DEFICIENT
        return BALANCED


@dataclass(frozen=True)
class Imbalance:
    meridian: str
    left: Fraction
    right: Fraction

    @property
    def ratio(self) -> Fraction | None:
        """Larger side / smaller side; None when the smaller side is 0 (unbounded)."""
        low, high = sorted((self.left, self.right))
        return None if low == 0 else high / low


@dataclass(frozen=True)
class Reading:
    band: Band
    #: point code -> interpretation code, in :data:`POINTS` order
    points: Mapping[str, str]
    imbalances: tuple[Imbalance, ...]


def exact(value: Value) -> Fraction:
    if isinstance(value, float):
        return Fraction(Decimal(repr(value)))
    return Fraction(value)


def rounded(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"), ROUND_HALF_UP)


def make_band(mean: Fraction, relative_width: Value | None = None, absolute_width: Value | None = None) -> Band:
    if relative_width is not None and absolute_width is not None:
        raise MeridianInputError([("Give either a relative or an absolute band width, not both", None)])
    if absolute_width is not None:
        width = exact(absolute_width)
        if width < 0:
            raise MeridianInputError([(f"The absolute band width must not be negative, not {absolute_width}", None)])
        return Band(mean, max(mean - width, Fraction(0)), mean + width, "absolute", width)
    width = DEFAULT_RELATIVE_WIDTH if relative_width is None else exact(relative_width)
    if not 0 <= width < 1:
        raise MeridianInputError([(f"The relative band width must be at least 0 and below 1, not {width}", None)])
    return Band(mean, mean * (1 - width), mean * (1 + width), "relative", width)


def check_values(values: Mapping[str, Value]) -> dict[str, Fraction]:
    problems: list[tuple[str, str | None]] = []
    out: dict[str, Fraction] = {}
    for code, value in values.items():
        if code not in POINTS:
            problems.append((f"{code!r} is not one of the 24 meridian points", code))
        elif isinstance(value, bool) or not isinstance(value, int | float | Fraction | Decimal):
            problems.append((f"{code}: the value must be a number of µA, not {value!r}", code))
        elif value < 0:
            problems.append((f"{code}: a conductance cannot be negative ({value} µA)", code))
        else:
            out[code] = exact(value)
    missing = [p for p in POINTS if p not in values]
    if missing:
        problems.append((f"{len(missing)} of the 24 points are not measured: {', '.join(missing)}", None))
    if problems:
        raise MeridianInputError(problems)
    return out


def interpret(
    values: Mapping[str, Value], *, relative_width: Value | None = None, absolute_width: Value | None = None
) -> Reading:
    """Judge each of the 24 points against the band around their mean; flag left/right imbalance."""
    exact_values = check_values(values)
    mean = sum(exact_values.values(), Fraction(0)) / len(POINTS)
    band = make_band(mean, relative_width, absolute_width)
    points = {p: band.judge(exact_values[p]) for p in POINTS}
    imbalances = []
    for m in MERIDIANS:
        left, right = exact_values[f"{m}-L"], exact_values[f"{m}-R"]
        low, high = sorted((left, right))
        if high > 0 and (low == 0 or high >= IMBALANCE_RATIO * low):
            imbalances.append(Imbalance(m, left, right))
    return Reading(band, MappingProxyType(points), tuple(imbalances))
