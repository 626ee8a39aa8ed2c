"""FHIR date/dateTime/instant text to the inclusive range of microseconds it denotes.

Why ranges: ``2020`` means the whole year and ``2020-03-01T10:00`` the whole minute
(http://hl7.org/fhir/R4/search.html#date). Indexing, date search and history ``_at``/``_since``
all compare these ranges, so there is one parser, here. A value without a timezone is taken as
UTC (docs/conformance.md). Pure integer arithmetic: it runs for every date of every resource
indexed.
"""

from __future__ import annotations

import re

_DATE_RE = re.compile(
    r"(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d+))?)?"
    r"\s*(Z|[+-]\d{2}:?\d{2})?)?)?)?"
)
_US_PER_DAY = 86_400_000_000
_MONTH_DAYS = (31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


def _month_len(y: int, m: int) -> int:
    if m == 2 and (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)):
        return 29
    return _MONTH_DAYS[m - 1]


def date_range(text: str) -> tuple[int, int] | None:
    """Inclusive µs range of a FHIR date/dateTime/instant string, or None if it is not one."""
    if type(text) is not str:
        return None
    m = _DATE_RE.fullmatch(text.strip())
    if not m:
        return None
    year, month, day, hh, mi, ss, frac, tz = m.groups()
    y = int(year)
    if y < 1:
        return None
    if month is None:
        lo = _days_from_civil(y, 1, 1) * _US_PER_DAY
        return lo, _days_from_civil(y + 1, 1, 1) * _US_PER_DAY - 1
    mo = int(month)
    if not 1 <= mo <= 12:
        return None
    if day is None:
        lo = _days_from_civil(y, mo, 1) * _US_PER_DAY
        nxt = _days_from_civil(y + (mo == 12), 1 if mo == 12 else mo + 1, 1) * _US_PER_DAY
        return lo, nxt - 1
    d = int(day)
    if not 1 <= d <= _month_len(y, mo):
        return None
    lo = _days_from_civil(y, mo, d) * _US_PER_DAY
    if hh is None:
        return lo, lo + _US_PER_DAY - 1
    h, mn = int(hh), int(mi)
    if h > 24 or mn > 59:
        return None
    lo += (h * 3600 + mn * 60) * 1_000_000
    if ss is None:
        width = 60_000_000
    else:
        lo += min(int(ss), 59) * 1_000_000
        if frac:
            digits = frac[:6]
            lo += int(digits.ljust(6, "0"))
            width = 10 ** (6 - len(digits))
        else:
            width = 1_000_000
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        tzd = tz[1:].replace(":", "")
        lo -= sign * (int(tzd[:2]) * 3600 + int(tzd[2:]) * 60) * 1_000_000
    return lo, lo + width - 1


def parse_range(text: str) -> tuple[int, int]:
    """Like :func:`date_range` but raises ``ValueError`` for text that is not a FHIR date."""
    found = date_range(text)
    if found is None:
        raise ValueError(f"not a FHIR date/dateTime/instant: {text!r}")
    return found
