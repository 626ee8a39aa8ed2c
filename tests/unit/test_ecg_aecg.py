"""HL7 aECG reading and the ECG minimums (fhir_server/clinical/ecg.py, ecg_fhir.py).

Uses the FDA aecg-python samples in ../shared/data/aecg/fda-aecg-python: ``subject1_0.xml`` is a
12-lead, 500 Hz, 10 s rhythm series with a 1.2 s representative-beat derived series and
annotation sets; ``minimum_aecg*.xml`` hold one 13-sample lead; ``empty.xml`` no series.
"""

from __future__ import annotations

import io
import pathlib
from decimal import Decimal

import pytest
from lxml import etree

from fhir_server.clinical import ecg
from fhir_server.clinical.ecg import AecgFormatError, parse_aecg, violations
from fhir_server.clinical.ecg_fhir import document_reference, fhir_datetime, identifier, observation
from fhir_server.validation import check_resource
from tests.conftest import shared_data

V3 = "{urn:hl7-org:v3}"


def sample(name: str) -> bytes:
    return (shared_data("aecg", "fda-aecg-python") / name).read_bytes()


def variant(xml: bytes, *, drop: tuple[str, ...] = (), keep: int | None = None, increment: str | None = None,
            rename: dict[str, str] | None = None) -> bytes:  # fmt: skip
    """The sample with rhythm leads dropped, renamed or cut to ``keep`` samples, or another increment."""
    root = etree.fromstring(xml)
    series = root.find(f"{V3}component/{V3}series")
    assert series is not None
    sequence_set = series.find(f"{V3}component/{V3}sequenceSet")
    assert sequence_set is not None
    for comp in list(sequence_set):
        seq = comp.find(f"{V3}sequence")
        code = seq.find(f"{V3}code")
        name = code.get("code")
        if name in drop:
            sequence_set.remove(comp)
            continue
        if rename and name in rename:
            code.set("code", rename[name])
        value = seq.find(f"{V3}value")
        if name.startswith("TIME") and increment is not None:
            value.find(f"{V3}increment").set("value", increment)
        digits = value.find(f"{V3}digits")
        if digits is not None and keep is not None:
            digits.text = " ".join(digits.text.split()[:keep])
    return etree.tostring(root)


def test_full_sample_reads_the_rhythm_series() -> None:
    doc = parse_aecg(sample("subject1_0.xml"))
    assert doc.has_rhythm
    assert doc.period_ms == Decimal("2.000") and doc.rate_hz == 500
    names = [lead.name for lead in doc.leads]
    assert names == ["I", "II", "V1", "V2", "V3", "V4", "V5", "V6", "III", "aVR", "aVL", "aVF"]
    # the derived representative beat has 599 samples per lead: it must not have been read
    assert {lead.count for lead in doc.leads} == {5000}
    assert all(lead.origin_uv == 0 and lead.factor_uv == Decimal("2.5") for lead in doc.leads)
    assert doc.series_time == "20021122091000" and doc.document_time == "20021122091000"
    assert (doc.id_root, doc.id_extension) == ("61d1a24f-b47e-41aa-ae95-f8ac302f4eeb", "subject1_0")
    assert doc.device.describe() == "Mortara Instrument, Inc. ELI250 software 5.3"
    assert (doc.subject.id_extension, doc.subject.gender, doc.subject.birth_time) == ("subject1", "M", "19530508")
    assert violations(doc) == []


def test_digits_are_kept_exactly() -> None:
    xml = sample("subject1_0.xml")
    root = etree.fromstring(xml)
    first = root.find(f".//{V3}series/{V3}component/{V3}sequenceSet/{V3}component[2]/{V3}sequence")
    expected = first.find(f"{V3}value/{V3}digits").text.split()
    doc = parse_aecg(io.BytesIO(xml))  # a stream works as well as bytes
    assert doc.leads[0].code == "MDC_ECG_LEAD_I"
    assert doc.leads[0].data.split() == expected


def test_minimal_document_violates_leads_and_duration() -> None:
    doc = parse_aecg(sample("minimum_aecg.xml"))
    found = violations(doc)
    assert found == [
        "lead II lasts 0.026 s (13 samples); at least 10 s is required",
        "1 of the 12 standard leads are present; missing: I, III, aVR, aVL, aVF, V1, V2, V3, V4, V5, V6",
    ]


def test_empty_document_violates_everything() -> None:
    found = violations(parse_aecg(sample("empty.xml")))
    assert len(found) == 3
    assert "rhythm series" in found[0] and "sampling increment" in found[1] and "0 of the 12" in found[2]


def test_truncated_variant_reports_every_violation() -> None:
    xml = variant(sample("subject1_0.xml"), drop=("MDC_ECG_LEAD_V4", "MDC_ECG_LEAD_V5"), keep=2000, increment="0.004")
    found = violations(parse_aecg(xml))
    assert found[0] == "the sampling rate is 250 Hz; at least 500 Hz is required"
    # 2000 samples × 4 ms = 8 s, for each of the 10 leads left
    short = [v for v in found if "lasts 8 s (2000 samples)" in v]
    assert len(short) == 10
    assert found[-1] == "10 of the 12 standard leads are present; missing: V4, V5"
    assert len(found) == 12


def test_exactly_ten_seconds_at_500_hz_passes_and_one_sample_less_fails() -> None:
    assert violations(parse_aecg(variant(sample("subject1_0.xml"), keep=5000))) == []
    found = violations(parse_aecg(variant(sample("subject1_0.xml"), keep=4999)))
    assert len(found) == 12 and all("lasts 9.998 s" in v for v in found)


def test_unrecognised_and_duplicate_leads() -> None:
    xml = variant(
        sample("subject1_0.xml"), rename={"MDC_ECG_LEAD_V6": "MDC_ECG_LEAD_V7", "MDC_ECG_LEAD_V5": "MDC_ECG_LEAD_V4"}
    )
    found = violations(parse_aecg(xml))
    assert found == [
        "lead V4 appears more than once in the sequence set",
        "lead code 'MDC_ECG_LEAD_V7' is not recognised (expected MDC_ECG_LEAD_I … MDC_ECG_LEAD_V6)",
        "10 of the 12 standard leads are present; missing: V5, V6",
    ]


def test_units_are_normalised_to_microvolts_and_milliseconds() -> None:
    xml = sample("subject1_0.xml").replace(b'<scale value="2.5" unit="uV"/>', b'<scale value="0.0025" unit="mV"/>')
    xml = xml.replace(b'<increment value="0.002" unit="s"/>', b'<increment value="2" unit="ms"/>', 1)
    doc = parse_aecg(xml)
    assert doc.period_ms == 2
    assert {lead.factor_uv for lead in doc.leads} == {Decimal("2.5")}
    bad = parse_aecg(
        sample("subject1_0.xml").replace(b'<scale value="2.5" unit="uV"/>', b'<scale value="1" unit="furlong"/>', 1)
    )
    assert violations(bad) == ["lead I: scale unit 'furlong' is not supported (use one of uV, mV, V, nV)"]


def test_non_integer_digits_are_a_violation() -> None:
    xml = sample("minimum_aecg.xml").replace(b"-2 -2 -2", b"-2 x -2")
    assert "lead II: the digits must be integers, found 'x'" in violations(parse_aecg(xml))


@pytest.mark.parametrize(
    "xml",
    [b"<AnnotatedECG xmlns='urn:hl7-org:v3'><component>", b"not xml at all", b""],
    ids=["truncated", "text", "empty"],
)
def test_malformed_xml(xml: bytes) -> None:
    with pytest.raises(AecgFormatError, match="malformed XML"):
        parse_aecg(xml)


def test_other_documents_are_refused() -> None:
    with pytest.raises(AecgFormatError, match="root element is <Patient>"):
        parse_aecg(b"<Patient xmlns='http://hl7.org/fhir'/>")
    bomb = b'<?xml version="1.0"?><!DOCTYPE AnnotatedECG [<!ENTITY a "aaaa">]><AnnotatedECG>&a;</AnnotatedECG>'
    with pytest.raises(AecgFormatError, match="DOCTYPE"):
        parse_aecg(bomb)


def test_hl7_timestamps() -> None:
    assert fhir_datetime("20021122091000", "+08:00") == "2002-11-22T09:10:00+08:00"
    assert fhir_datetime("20021122091000.123-0500", "+08:00") == "2002-11-22T09:10:00.123-05:00"
    assert fhir_datetime("200211220737", "Z") == "2002-11-22T07:37:00Z"
    assert fhir_datetime("19530508", "+08:00") == "1953-05-08"
    assert fhir_datetime("2002", "+08:00") == "2002"
    assert fhir_datetime("yesterday", "+08:00") is None


def test_identifiers() -> None:
    assert identifier("61D1A24F-b47e-41aa-ae95-f8ac302f4eeb", None) == {
        "system": "urn:ietf:rfc:3986",
        "value": "urn:uuid:61d1a24f-b47e-41aa-ae95-f8ac302f4eeb",
    }
    assert identifier("2.16.840.1.113883.3.400", "subject1") == {
        "system": "urn:oid:2.16.840.1.113883.3.400",
        "value": "subject1",
    }
    assert identifier(None, "x") is None


def test_fhir_resources_from_the_sample() -> None:
    xml = sample("subject1_0.xml")
    doc = parse_aecg(xml)
    obs = observation(doc, subject="Patient/p1", document_reference_id="d1", default_offset="+08:00")
    check_resource(obs, "Observation")
    assert obs["code"]["coding"][0] == {"system": "http://loinc.org", "code": "11524-6", "display": "EKG study"}
    assert obs["effectiveDateTime"] == "2002-11-22T09:10:00+08:00"
    assert obs["derivedFrom"] == [{"reference": "DocumentReference/d1"}]
    assert obs["device"] == {"display": "Mortara Instrument, Inc. ELI250 software 5.3"}
    assert obs["identifier"] == [{"system": "urn:uuid:61d1a24f-b47e-41aa-ae95-f8ac302f4eeb", "value": "subject1_0"}]
    codes = [c["code"]["coding"][0]["code"] for c in obs["component"]]
    assert codes[:12] == [ecg.LEADS[k][0] for k in ecg.LEADS]  # I II III aVR aVL aVF V1–V6
    # then the representative beat's measurements: P duration (MDC only), PR, QRS, QT, QTc, axes
    assert codes[12:] == ["MDC_ECG_TIME_PD_P", "8625-6", "8633-0", "8634-8", "8636-3", "8626-4", "8632-2", "8638-9"]
    assert codes[:3] == ["131329", "131330", "131389"]
    sd = obs["component"][0]["valueSampledData"]
    assert {k: v for k, v in sd.items() if k != "data"} == {
        "origin": {"value": 0, "unit": "µV", "system": "http://unitsofmeasure.org", "code": "uV"},
        "period": 2,
        "factor": 2.5,
        "dimensions": 1,
    }
    assert len(sd["data"].split(" ")) == 5000
    assert "born 1953-05-08" in obs["note"][0]["text"]

    docref = document_reference(
        doc, xml, subject="Patient/p1", binary_id="b1", indexed="2025-01-01T00:00:00Z", default_offset="+08:00"
    )
    check_resource(docref, "DocumentReference")
    att = docref["content"][0]["attachment"]
    assert att["url"] == "Binary/b1" and att["size"] == len(xml) and att["contentType"] == "application/hl7-v3+xml"
    import base64
    import hashlib

    assert base64.b64decode(att["hash"]) == hashlib.sha1(xml).digest()
    assert docref["type"]["coding"][0]["code"] == "11524-6"


def test_large_document_is_streamed(tmp_path: pathlib.Path) -> None:
    """A 10-minute, 12-lead recording (300,000 samples a lead) parses from a file without trouble."""
    xml = sample("subject1_0.xml")
    root = etree.fromstring(xml)
    for digits in root.iterfind(f".//{V3}series/{V3}component/{V3}sequenceSet//{V3}digits"):
        digits.text = (digits.text.strip() + " ") * 60
    path = tmp_path / "long.xml"
    path.write_bytes(etree.tostring(root))
    with path.open("rb") as f:
        doc = parse_aecg(f)
    assert {lead.count for lead in doc.leads} == {300_000}
    assert violations(doc) == []


def test_example_is_what_the_import_produces() -> None:
    import json

    path = pathlib.Path(__file__).resolve().parents[2] / "profiles" / "examples" / "obs-ecg-example.json"
    example = json.loads(path.read_text("utf-8"))
    check_resource(example, "Observation")
    computed = observation(
        parse_aecg(sample("subject1_0.xml")),
        subject=example["subject"]["reference"],
        document_reference_id="docref-ecg-example",
        default_offset="+08:00",
    )
    assert {k: v for k, v in example.items() if k != "id"} == computed


# -- global measurements from the annotation sets ---------------------------------------------
def _measured(xml: bytes) -> dict[str, tuple[Decimal, str]]:
    return {m.code: (m.value, m.source) for m in parse_aecg(xml).measurements}


def test_measurements_come_from_the_representative_beat() -> None:
    found = _measured(sample("subject1_0.xml"))
    assert found["MDC_ECG_TIME_PD_PR"] == (Decimal(148), "representative beat")
    assert found["MDC_ECG_TIME_PD_QTc"] == (Decimal(443), "representative beat")
    assert found["MDC_ECG_ANGLE_QRS_FRONT"] == (Decimal(-61), "representative beat")
    assert "MDC_ECG_HEART_RATE" not in found  # the sample does not state one


def _without_derived_series(xml: bytes) -> etree._Element:
    root = etree.fromstring(xml)
    for derived in root.iter(f"{V3}derivedSeries"):
        derived.getparent().remove(derived)
    return root


def _beat_values(root: etree._Element, code: str) -> list[etree._Element]:
    """The value elements of ``code`` in the rhythm series' first annotation set."""
    first = next(root.iter(f"{V3}annotationSet"))
    return [a.find(f"{V3}value") for a in first.iter(f"{V3}annotation") if a.find(f"{V3}code").get("code") == code]


def test_without_a_representative_beat_the_median_of_the_beats_is_taken() -> None:
    root = _without_derived_series(sample("subject1_0.xml"))
    values = _beat_values(root, "MDC_ECG_TIME_PD_QRS")
    assert len(values) == 12
    for node, ms in zip(values, [90, 100, 110, 120, 130, 140, 150, 160, 170, 180, 190, 1000], strict=True):
        node.set("value", str(ms))
    values[0].set("value", "0.09")  # 90 ms written in seconds
    values[0].set("unit", "s")
    found = _measured(etree.tostring(root))
    assert found["MDC_ECG_TIME_PD_QRS"] == (Decimal(145), "median of 12 beats")


def test_per_lead_and_unusable_annotations_are_not_global_measurements() -> None:
    root = _without_derived_series(sample("subject1_0.xml"))
    values = _beat_values(root, "MDC_ECG_TIME_PD_PR")
    for node in values[1:]:
        node.set("unit", "furlong")  # a unit that cannot be converted is left out
    first_pr = values[0].getparent()
    roi = etree.SubElement(etree.SubElement(first_pr, f"{V3}support"), f"{V3}supportingROI")
    boundary = etree.SubElement(etree.SubElement(roi, f"{V3}component"), f"{V3}boundary")
    etree.SubElement(boundary, f"{V3}code", code="MDC_ECG_LEAD_II")  # a lead II measurement only
    assert "MDC_ECG_TIME_PD_PR" not in _measured(etree.tostring(root))


def test_measurement_components_are_coded_in_loinc_and_mdc_with_ucum_units() -> None:
    obs = observation(
        parse_aecg(sample("subject1_0.xml")), subject="Patient/p1", document_reference_id="d1", default_offset="+08:00"
    )
    qt = next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == "8634-8")
    assert qt["code"]["coding"] == [
        {"system": "http://loinc.org", "code": "8634-8", "display": "Q-T interval"},
        {"system": "urn:oid:2.16.840.1.113883.6.24", "code": "MDC_ECG_TIME_PD_QT", "display": "Q-T interval"},
    ]
    assert qt["valueQuantity"] == {"value": 420, "unit": "ms", "system": "http://unitsofmeasure.org", "code": "ms"}
    axis = next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == "8632-2")
    assert axis["valueQuantity"]["value"] == -61 and axis["valueQuantity"]["code"] == "deg"
    assert obs["note"][-1]["text"] == "Measurements from the aECG annotations: representative beat"
