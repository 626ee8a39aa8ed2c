"""Constitution scoring (中医体质分类与判定): answers → transformed scores → 是/基本是/倾向是/否.

The rules (research ``tcm_standards.md`` §1.2, the same for ZYYXH/T157-2009 and GB/T 46939-2025):

- answers are 1–5; a reverse-scored item counts ``6 − answer``;
- a question shared by two types counts in each;
- 原始分 (raw) = sum of the type's item scores; 转化分 = (raw − n) / (4n) × 100, where n is the
  number of the type's items that apply to this person: 湿热质 lists 带下色黄 (women only) and
  阴囊潮湿 (men only), so it has one item fewer than listed for everybody;
- 平和质 (A): ≥60 and every biased type <30 → 是; ≥60 and every biased type <40 → 基本是; else 否;
- each biased type (B–I): ≥40 → 是; ≥30 and <40 → 倾向是 (the standard writes "30～39"; a score
  such as 39.29 falls between its rows, and implementations use <40, as we do); <30 → 否.
  Several biased types can be 是 at once (兼夹体质).

Why scores are exact fractions: the thresholds are compared to ``k / (4n) × 100`` values, and a
float such as 29.999999 must not turn a 30 into 否. Rounding (to 2 decimals) is for display only
and happens after the decision.

Decided here (the standards do not say):
- An answer to the other sex's item (a man answering 带下色黄) is **ignored**: that item is not
  part of the instrument for this person, and paper forms are often ticked 没有 throughout. The
  ignored codes are reported in :attr:`Assessment.ignored` so a caller can show them.
- A missing answer to an applicable item, an answer outside 1–5, an unknown item and a second
  answer to the same item are errors: every problem is collected and raised together in one
  :class:`ConstitutionInputError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from fractions import Fraction
from types import MappingProxyType

from fhir_server.clinical.ccmq import BALANCED, BIASED, TYPES, Form, Sex

YES, BASICALLY_YES, TENDENCY, NO = "yes", "basically-yes", "tendency", "no"
#: result code (tcm-constitution-result) -> display
RESULTS: MappingProxyType[str, str] = MappingProxyType(
    {YES: "是", BASICALLY_YES: "基本是", TENDENCY: "倾向是", NO: "否"}
)
MIN_ANSWER, MAX_ANSWER = 1, 5

_30, _40, _60 = Fraction(30), Fraction(40), Fraction(60)

#: a transformed score as callers may hold it; compared exactly (a float by its decimal repr)
Score = int | float | Fraction | Decimal


@dataclass(frozen=True)
class Problem:
    """One thing wrong with the answers; ``location`` is the item's linkId (or a FHIRPath)."""

    message: str
    location: str | None = None


class ConstitutionInputError(ValueError):
    """The answers cannot be scored; ``problems`` lists every reason found."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__("; ".join(p.message for p in problems))
        self.problems = problems


@dataclass(frozen=True)
class TypeScore:
    type: str
    raw: int
    #: number of the type's items that apply to this person
    n: int
    score: Fraction
    result: str

    @property
    def rounded(self) -> Decimal:
        """The transformed score rounded half-up to 2 decimals (for display; decided unrounded)."""
        return round_score(self.score)


@dataclass(frozen=True)
class Assessment:
    form: Form
    sex: Sex
    #: type code (A–I) -> its score, in A–I order
    scores: Mapping[str, TypeScore]
    #: item codes answered although they do not apply to this sex (not scored)
    ignored: tuple[str, ...] = ()


def round_score(value: Fraction) -> Decimal:
    return (Decimal(value.numerator) / Decimal(value.denominator)).quantize(Decimal("0.01"), ROUND_HALF_UP)


def transformed_score(raw: int, n: int) -> Fraction:
    """转化分 = (原始分 − 条目数) / (条目数 × 4) × 100, exact."""
    if n <= 0:
        raise ValueError("a type needs at least one applicable item")
    return Fraction(raw - n, 4 * n) * 100


def _exact(value: Score) -> Fraction:
    if isinstance(value, float):
        # a float written as 39.99 means 39.99, not the binary number nearest to it
        return Fraction(Decimal(repr(value)))
    return Fraction(value)


def biased_result(score: Score) -> str:
    s = _exact(score)
    if s >= _40:
        return YES
    if s >= _30:
        return TENDENCY
    return NO


def balanced_result(balanced: Score, biased: Mapping[str, Score]) -> str:
    """平和质 from its own score and the eight biased scores."""
    if _exact(balanced) < _60:
        return NO
    highest = max((_exact(v) for v in biased.values()), default=Fraction(0))
    if highest < _30:
        return YES
    if highest < _40:
        return BASICALLY_YES
    return NO


def classify(scores: Mapping[str, Score]) -> dict[str, str]:
    """Result code per type from the nine transformed scores (keys A–I)."""
    missing = [t for t in TYPES if t not in scores]
    if missing:
        raise ValueError(f"scores missing for types {', '.join(missing)}")
    biased = {t: scores[t] for t in BIASED}
    out = {BALANCED: balanced_result(scores[BALANCED], biased)}
    out.update({t: biased_result(v) for t, v in biased.items()})
    return out


def check_answers(form: Form, answers: Mapping[str, object], sex: Sex) -> tuple[dict[str, int], tuple[str, ...]]:
    """The answers that count, as integers, and the ignored other-sex codes; raises on problems."""
    problems: list[Problem] = []
    counted: dict[str, int] = {}
    ignored: list[str] = []
    for code, value in answers.items():
        item = form.item(code)
        if item is None:
            problems.append(Problem(f"Item {code!r} is not an item of the {form.key} questionnaire", code))
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not MIN_ANSWER <= value <= MAX_ANSWER:
            problems.append(
                Problem(f"Item {code} ({item.label}): the answer must be an integer from 1 to 5, not {value!r}", code)
            )
            continue
        if not form.applies(item, sex):
            ignored.append(code)
            continue
        counted[code] = value
    for item in form.items:
        if form.applies(item, sex) and item.code not in answers:
            problems.append(Problem(f"Item {item.code} ({item.label}) is not answered", item.code))
    if problems:
        raise ConstitutionInputError(problems)
    return counted, tuple(ignored)


def assess(form: Form, answers: Mapping[str, object], sex: Sex) -> Assessment:
    """Score every type of ``form`` for a person of ``sex`` and decide each type's result.

    ``answers`` maps item codes (``q01``…, ``s01``…) to the chosen scale value 1–5.
    """
    if sex not in ("female", "male"):
        raise ConstitutionInputError([Problem(f"sex must be 'female' or 'male', not {sex!r}")])
    counted, ignored = check_answers(form, answers, sex)
    raw_and_n: dict[str, tuple[int, int]] = {}
    for type_code in TYPES:
        raw = n = 0
        for slot in form.types[type_code]:
            if slot.code not in counted:  # only other-sex items are absent once checked
                continue
            value = counted[slot.code]
            raw += 6 - value if slot.reverse else value
            n += 1
        raw_and_n[type_code] = (raw, n)
    scores = {t: transformed_score(raw, n) for t, (raw, n) in raw_and_n.items()}
    results = classify(scores)
    typed = {t: TypeScore(t, raw_and_n[t][0], raw_and_n[t][1], scores[t], results[t]) for t in TYPES}
    return Assessment(form, sex, MappingProxyType(typed), ignored)
