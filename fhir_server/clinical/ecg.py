"""HL7 aECG (v3 AnnotatedECG, PORT_MT020001) reading and the minimums a diagnostic ECG must meet.

What is read: the **first rhythm series** (``series`` coded ``RHYTHM``) and, within it, its first
``sequenceSet``: the time sequence (``GLIST_TS``, or ``GLIST_PQ`` for relative time) gives the
sampling increment, each ``SLIST_PQ`` lead sequence gives origin, scale and the digits.
Derived series (``derivation/derivedSeries``, e.g. the ``REPRESENTATIVE_BEAT`` median beat, 1.2 s)
are not read as waveforms: they are computed from the rhythm and are far shorter than 10 s.
Annotation sets (``subjectOf/annotationSet``) give the global measurements
(``ecg_measurements``); they also carry lead codes, in ROI boundaries, which is why sequences
are matched by their position under the series and not by code alone.
Further rhythm series or sequence sets are counted (``ignored_series``/``ignored_sets``), not
merged: their timing is independent of the first.

Why streaming (``lxml.etree.iterparse``): an aECG holds tens of thousands of digits per lead and
Holter-length files are large; each sequence is read when its end tag arrives and then freed,
so the tree is never built whole. DOCTYPEs are refused and entities are not resolved (no XXE,
no entity expansion); ``huge_tree`` allows a long digits text node.

Minimums (research §7, "Minimum practice"): the 12 standard leads (I, II, III, aVR, aVL, aVF,
V1–V6), sampling ≥ 500 Hz [U: AHA/ACCF/HRS 2007 wording unchecked], ≥ 10 s per lead. Every
violation is reported, not only the first.

Amplitudes are normalised to µV and the sampling period to ms, exactly (``Decimal``), so the
FHIR ``SampledData`` (value = origin + factor × digit) is the aECG's (value = origin + scale ×
digit) without rounding.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import IO

from lxml import etree

from fhir_server.clinical.ecg_measurements import Measurement, MeasurementCollector

#: aECG lead code -> (MDC per-lead potential code, short name). The numeric codes are 131328 +
#: the lead number of ISO/IEEE 11073 (DICOM CID 3001); the sums are computed [U] (research §7).
LEADS: dict[str, tuple[str, str]] = {
    "MDC_ECG_LEAD_I": ("131329", "I"),
    "MDC_ECG_LEAD_II": ("131330", "II"),
    "MDC_ECG_LEAD_III": ("131389", "III"),
    "MDC_ECG_LEAD_AVR": ("131390", "aVR"),
    "MDC_ECG_LEAD_AVL": ("131391", "aVL"),
    "MDC_ECG_LEAD_AVF": ("131392", "aVF"),
    "MDC_ECG_LEAD_V1": ("131331", "V1"),
    "MDC_ECG_LEAD_V2": ("131332", "V2"),
    "MDC_ECG_LEAD_V3": ("131333", "V3"),
    "MDC_ECG_LEAD_V4": ("131334", "V4"),
    "MDC_ECG_LEAD_V5": ("131335", "V5"),
    "MDC_ECG_LEAD_V6": ("131336", "V6"),
}
MIN_RATE_HZ = Decimal(500)
MIN_DURATION_MS = Decimal(10_000)

_XSI_TYPE = "{http://www.w3.org/2001/XMLSchema-instance}type"
#: amplitude unit -> factor to µV
_VOLTS = {"uV": Decimal(1), "mV": Decimal(1000), "V": Decimal(1_000_000), "nV": Decimal("0.001")}
#: time unit -> factor to ms
_SECONDS = {"s": Decimal(1000), "ms": Decimal(1), "us": Decimal("0.001")}


class AecgFormatError(ValueError):
    """Not a readable aECG document (not XML, or not an AnnotatedECG)."""


@dataclass
class Lead:
    #: aECG code, e.g. ``MDC_ECG_LEAD_II``
    code: str
    origin_uv: Decimal | None
    factor_uv: Decimal | None
    #: the digits, single-space separated
    data: str
    count: int
    #: what was wrong while reading this lead (unit, digits), if anything
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return LEADS[self.code][1] if self.code in LEADS else self.code


@dataclass
class Device:
    model: str | None = None
    software: str | None = None
    manufacturer: str | None = None

    def describe(self) -> str | None:
        parts = [p for p in (self.manufacturer, self.model) if p]
        if self.software:
            parts.append(f"software {self.software}")
        return " ".join(parts) if parts else None


@dataclass
class Subject:
    id_root: str | None = None
    id_extension: str | None = None
    name: str | None = None
    gender: str | None = None
    birth_time: str | None = None

    def present(self) -> bool:
        return any((self.id_root, self.id_extension, self.name, self.gender, self.birth_time))


@dataclass
class AecgDocument:
    id_root: str | None = None
    id_extension: str | None = None
    #: HL7 TS of the document (``effectiveTime`` low or center)
    document_time: str | None = None
    #: HL7 TS of the rhythm series (``effectiveTime`` low or center)
    series_time: str | None = None
    has_rhythm: bool = False
    period_ms: Decimal | None = None
    leads: list[Lead] = field(default_factory=list)
    device: Device = field(default_factory=Device)
    subject: Subject = field(default_factory=Subject)
    #: global measurements from the annotation sets (``ecg_measurements``)
    measurements: list[Measurement] = field(default_factory=list)
    ignored_series: int = 0
    ignored_sets: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def effective(self) -> str | None:
        return self.series_time or self.document_time

    @property
    def rate_hz(self) -> Decimal | None:
        return None if not self.period_ms else Decimal(1000) / self.period_ms


def _local(tag: object) -> str:
    if not isinstance(tag, str):
        return ""  # comments and processing instructions
    return tag.rsplit("}", 1)[-1]


def _decimal(text: str | None) -> Decimal | None:
    if text is None:
        return None
    try:
        value = Decimal(text.strip())
    except InvalidOperation:
        return None
    return value if value.is_finite() else None


def _scaled(node: etree._Element | None, units: dict[str, Decimal], what: str) -> tuple[Decimal | None, str | None]:
    """A PQ's value converted by ``units``, or the reason it cannot be."""
    if node is None:
        return None, f"no {what}"
    value = _decimal(node.get("value"))
    if value is None:
        return None, f"{what} value {node.get('value')!r} is not a number"
    unit = node.get("unit") or ""
    if unit not in units:
        return None, f"{what} unit {unit!r} is not supported (use one of {', '.join(units)})"
    return value * units[unit], None


def _child(node: etree._Element, name: str) -> etree._Element | None:
    for c in node:
        if _local(c.tag) == name:
            return c
    return None


def _read_time_sequence(doc: AecgDocument, value: etree._Element) -> None:
    period, why = _scaled(_child(value, "increment"), _SECONDS, "time increment")
    if why is not None:
        doc.problems.append(f"the time sequence has {why}")
    elif period is not None and period <= 0:
        doc.problems.append(f"the time increment must be positive, not {period} ms")
    else:
        doc.period_ms = period


def _read_lead(code: str, value: etree._Element) -> Lead:
    problems = []
    origin, why = _scaled(_child(value, "origin"), _VOLTS, "origin")
    if why:
        problems.append(why)
    factor, why = _scaled(_child(value, "scale"), _VOLTS, "scale")
    if why:
        problems.append(why)
    digits_node = _child(value, "digits")
    tokens = (digits_node.text or "").split() if digits_node is not None else []
    bad = next((t for t in tokens if not t.lstrip("+-").isdigit()), None)
    if bad is not None:
        problems.append(f"the digits must be integers, found {bad!r}")
    return Lead(code, origin, factor, " ".join(tokens), len(tokens), problems)


def _ts(node: etree._Element | None) -> str | None:
    """The ``low`` (else ``center``) value of an IVL_TS ``effectiveTime``."""
    if node is None:
        return None
    for name in ("low", "center"):
        child = _child(node, name)
        if child is not None and child.get("value"):
            return child.get("value")
    return node.get("value")


def parse_aecg(source: bytes | IO[bytes]) -> AecgDocument:
    """Read what the FHIR import needs from an aECG document; see the module docstring."""
    stream = io.BytesIO(source) if isinstance(source, bytes | bytearray) else source
    doc = AecgDocument()
    stack: list[str] = []
    series_seen = 0  # rhythm series seen so far; only the first is read
    sets_in_series = 0
    reading = False  # inside the first sequenceSet of the first rhythm series
    measurements = MeasurementCollector()
    context = etree.iterparse(
        stream,
        events=("start", "end"),
        resolve_entities=False,
        no_network=True,
        huge_tree=True,
        remove_comments=True,
        remove_pis=True,
        load_dtd=False,
    )
    try:
        for event, elem in context:
            name = _local(elem.tag)
            if event == "start":
                if not stack:
                    if name != "AnnotatedECG":
                        raise AecgFormatError(f"not an HL7 aECG document: the root element is <{name}>")
                    if elem.getroottree().docinfo.doctype:
                        raise AecgFormatError("DOCTYPE declarations are not accepted in aECG documents")
                stack.append(name)
                if name == "sequenceSet" and len(stack) >= 3 and stack[-3] == "series" and series_seen == 1:
                    sets_in_series += 1
                    reading = sets_in_series == 1
                    if sets_in_series > 1:
                        doc.ignored_sets += 1
                continue
            stack.pop()
            parent = stack[-1] if stack else ""
            if name == "code" and parent == "series":
                if elem.get("code") == "RHYTHM":
                    series_seen += 1
                    if series_seen == 1:
                        doc.has_rhythm = True
                    else:
                        doc.ignored_series += 1
            elif name == "sequenceSet":
                reading = False
            elif name == "sequence" and reading and "derivedSeries" not in stack:
                _read_sequence(doc, elem)
                _free(elem)
            elif name == "annotationSet":
                if series_seen == 1 and "series" in stack:
                    measurements.add(elem, representative_beat="derivedSeries" in stack)
                _free(elem)
            elif name == "derivedSeries":
                _free(elem)
            elif name == "effectiveTime":
                if parent == "series" and series_seen == 1 and doc.series_time is None:
                    doc.series_time = _ts(elem)
                elif parent == "AnnotatedECG":
                    doc.document_time = _ts(elem)
            elif name == "id" and parent == "AnnotatedECG":
                doc.id_root, doc.id_extension = elem.get("root"), elem.get("extension")
            elif series_seen == 1 and "derivedSeries" not in stack and parent == "manufacturedSeriesDevice":
                _read_device(doc.device, name, elem)
            elif parent == "manufacturerOrganization" and name == "name" and "seriesAuthor" in stack:
                if series_seen == 1 and doc.device.manufacturer is None:
                    doc.device.manufacturer = (elem.text or "").strip() or None
            elif "trialSubject" in stack:
                _read_subject(doc.subject, name, parent, elem)
    except etree.XMLSyntaxError as exc:
        raise AecgFormatError(f"malformed XML: {exc}") from None
    doc.measurements = measurements.result()
    return doc


def _read_sequence(doc: AecgDocument, sequence: etree._Element) -> None:
    code_node, value = _child(sequence, "code"), _child(sequence, "value")
    code = code_node.get("code") if code_node is not None else None
    if value is None or code is None:
        doc.problems.append("a sequence has no code or no value")
        return
    xsi_type = value.get(_XSI_TYPE, "")
    if code in ("TIME_ABSOLUTE", "TIME_RELATIVE"):
        if xsi_type.endswith(("GLIST_TS", "GLIST_PQ")):
            _read_time_sequence(doc, value)
        else:
            doc.problems.append(f"the time sequence is {xsi_type or 'untyped'}; only GLIST_TS/GLIST_PQ are read")
        return
    if not xsi_type.endswith("SLIST_PQ"):
        doc.problems.append(f"sequence {code} is {xsi_type or 'untyped'}; only SLIST_PQ waveforms are read")
        return
    doc.leads.append(_read_lead(code, value))


def _read_device(device: Device, name: str, elem: etree._Element) -> None:
    text = (elem.text or "").strip() or None
    if name == "manufacturerModelName" and device.model is None:
        device.model = text
    elif name == "softwareName" and device.software is None:
        device.software = text


def _read_subject(subject: Subject, name: str, parent: str, elem: etree._Element) -> None:
    if name == "id" and parent == "trialSubject":
        subject.id_root, subject.id_extension = elem.get("root"), elem.get("extension")
    elif parent == "subjectDemographicPerson":
        if name == "name":
            subject.name = (elem.text or "").strip() or None
        elif name == "administrativeGenderCode":
            subject.gender = elem.get("code")
        elif name == "birthTime":
            subject.birth_time = elem.get("value")


def _free(elem: etree._Element) -> None:
    """Drop a processed element and its earlier siblings: keeps memory flat while streaming."""
    elem.clear(keep_tail=False)
    parent = elem.getparent()
    if parent is not None:
        while elem.getprevious() is not None:
            del parent[0]


def violations(doc: AecgDocument) -> list[str]:
    """Every way ``doc`` falls short of the diagnostic minimums (empty: it meets them)."""
    out = list(doc.problems)
    if not doc.has_rhythm:
        out.append("the document has no rhythm series (a <series> coded RHYTHM)")
    if doc.period_ms is None:
        out.append("no sampling increment found (a TIME_ABSOLUTE GLIST_TS or TIME_RELATIVE GLIST_PQ sequence)")
    elif doc.rate_hz is not None and doc.rate_hz < MIN_RATE_HZ:
        out.append(f"the sampling rate is {_fmt(doc.rate_hz)} Hz; at least {MIN_RATE_HZ} Hz is required")
    seen: set[str] = set()
    for lead in doc.leads:
        if lead.code not in LEADS:
            out.append(f"lead code {lead.code!r} is not recognised (expected MDC_ECG_LEAD_I … MDC_ECG_LEAD_V6)")
            continue
        if lead.code in seen:
            out.append(f"lead {lead.name} appears more than once in the sequence set")
            continue
        seen.add(lead.code)
        out += [f"lead {lead.name}: {p}" for p in lead.problems]
        if doc.period_ms is not None:
            duration = lead.count * doc.period_ms
            if duration < MIN_DURATION_MS:
                out.append(
                    f"lead {lead.name} lasts {_fmt(duration / 1000)} s ({lead.count} samples); "
                    f"at least {_fmt(MIN_DURATION_MS / 1000)} s is required"
                )
    missing = [name for code, (_, name) in LEADS.items() if code not in seen]
    if missing:
        out.append(f"{12 - len(missing)} of the 12 standard leads are present; missing: {', '.join(missing)}")
    return out


def _fmt(value: Decimal) -> str:
    text = f"{value:.3f}".rstrip("0").rstrip(".")
    return text or "0"
