"""Global ECG measurements (heart rate, P, PR, QRS, QT, QTc, frontal axes) read from an aECG's
annotation sets.

Where they are (HL7 aECG Implementation Guide, annotations): an ``annotationSet`` under the
rhythm ``series`` holds, per beat, ``MDC_ECG_BEAT`` annotations whose components carry interval
and axis annotations (``MDC_ECG_TIME_PD_PR`` = PQ 148 ms); an ``annotationSet`` under a
``derivedSeries`` (the ``REPRESENTATIVE_BEAT`` median beat) carries the same codes once, for the
whole record. An annotation whose ``supportingROI`` names a lead is a per-lead measurement and
is not a global one.

Which value is reported: the representative beat's, when the document has one (that is what
the device or reader measured for the record); otherwise the median over the beats of the
rhythm series' first annotation set that has the code. Later annotation sets (a second reader,
say) are not merged: one reader's values are not averaged with another's.

Codes: each measurement keeps the aECG's MDC code (system ``urn:oid:2.16.840.1.113883.6.24``, as
written in the document) and adds LOINC where LOINC has the same global measurement (research
§7: "measurements by LOINC"); units become UCUM.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from decimal import Decimal

from lxml import etree

#: MDC code -> (LOINC code or None, display, UCUM unit, factor by aECG unit)
_MS = {"ms": Decimal(1), "s": Decimal(1000), "us": Decimal("0.001")}
_DEG = {"deg": Decimal(1)}
_PER_MIN = {"bpm": Decimal(1), "/min": Decimal(1), "1/min": Decimal(1)}
MEASUREMENTS: dict[str, tuple[str | None, str, str, dict[str, Decimal]]] = {
    "MDC_ECG_HEART_RATE": ("8867-4", "Heart rate", "/min", _PER_MIN),
    "MDC_ECG_TIME_PD_P": (None, "P wave duration", "ms", _MS),
    "MDC_ECG_TIME_PD_PR": ("8625-6", "P-R Interval", "ms", _MS),
    "MDC_ECG_TIME_PD_QRS": ("8633-0", "QRS duration", "ms", _MS),
    "MDC_ECG_TIME_PD_QT": ("8634-8", "Q-T interval", "ms", _MS),
    "MDC_ECG_TIME_PD_QTc": ("8636-3", "Q-T interval corrected", "ms", _MS),
    "MDC_ECG_ANGLE_P_FRONT": ("8626-4", "P wave axis", "deg", _DEG),
    "MDC_ECG_ANGLE_QRS_FRONT": ("8632-2", "QRS axis", "deg", _DEG),
    "MDC_ECG_ANGLE_T_FRONT": ("8638-9", "T wave axis", "deg", _DEG),
}
_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"


@dataclass(frozen=True)
class Measurement:
    #: MDC code as written in the aECG
    code: str
    value: Decimal
    #: where it came from: ``representative beat`` or ``median of N beats``
    source: str

    @property
    def loinc(self) -> str | None:
        return MEASUREMENTS[self.code][0]

    @property
    def display(self) -> str:
        return MEASUREMENTS[self.code][1]

    @property
    def ucum(self) -> str:
        return MEASUREMENTS[self.code][2]


def _local(tag: object) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _names_a_lead(annotation: etree._Element) -> bool:
    """Whether the annotation's own ``support/supportingROI`` has a boundary coded with a lead."""
    for support in annotation:
        if _local(support.tag) != "support":
            continue
        for node in support.iter():
            if _local(node.tag) == "code" and (node.get("code") or "").startswith("MDC_ECG_LEAD_"):
                return True
    return False


def _value(annotation: etree._Element, units: dict[str, Decimal]) -> Decimal | None:
    value_node = next((c for c in annotation if _local(c.tag) == "value"), None)
    if value_node is None or not value_node.get(_XSI_TYPE, "").endswith("PQ"):
        return None
    unit = value_node.get("unit") or ""
    try:
        number = Decimal((value_node.get("value") or "").strip())
    except ArithmeticError:
        return None
    if not number.is_finite() or unit not in units:
        return None
    return number * units[unit]


def read_annotation_set(annotation_set: etree._Element) -> dict[str, list[Decimal]]:
    """MDC code -> the global values (converted to the UCUM unit) found anywhere in the set."""
    found: dict[str, list[Decimal]] = {}
    for annotation in annotation_set.iter("{*}annotation"):
        code_node = next((c for c in annotation if _local(c.tag) == "code"), None)
        code = code_node.get("code") if code_node is not None else None
        if code not in MEASUREMENTS or _names_a_lead(annotation):
            continue
        value = _value(annotation, MEASUREMENTS[code][3])
        if value is not None:
            found.setdefault(code, []).append(value)
    return found


class MeasurementCollector:
    """Gathers the annotation sets of the first rhythm series as the parser streams them, and
    picks one value per code (see the module docstring)."""

    def __init__(self) -> None:
        self._representative: dict[str, list[Decimal]] = {}
        self._rhythm: dict[str, list[Decimal]] = {}

    def add(self, annotation_set: etree._Element, representative_beat: bool) -> None:
        target = self._representative if representative_beat else self._rhythm
        for code, values in read_annotation_set(annotation_set).items():
            target.setdefault(code, values)  # the first set with the code wins

    def result(self) -> list[Measurement]:
        out = []
        for code in MEASUREMENTS:
            if code in self._representative:
                out.append(Measurement(code, _median(self._representative[code]), "representative beat"))
            elif code in self._rhythm:
                values = self._rhythm[code]
                out.append(Measurement(code, _median(values), f"median of {len(values)} beats"))
        return out


def _median(values: list[Decimal]) -> Decimal:
    return Decimal(statistics.median(values))
