"""FHIR XML <-> JSON conversion (fhir_server.formats.xml) against the official examples."""

from __future__ import annotations

import pathlib
from decimal import Decimal
from typing import Any

import orjson
import pytest
from lxml import etree

from fhir_server.errors import FhirError
from fhir_server.formats.json import dumps, loads
from fhir_server.formats.xml import json_to_xml, xml_to_json

DATA = pathlib.Path(__file__).resolve().parents[3] / "shared" / "data" / "fhir"
R4_EXAMPLES = DATA / "r4-examples"
TEST_CASES = DATA / "fhir-test-cases" / "r4" / "examples"

XHTML = "http://www.w3.org/1999/xhtml"
FHIR = "http://hl7.org/fhir"

#: Example pairs whose XML and JSON files genuinely differ: property to drop before comparing.
KNOWN_PAIR_DIFFERENCES = {"observation-example": "extension"}  # only the XML has patient-age


def _files(folder: pathlib.Path, pattern: str) -> list[Any]:
    """Parameters for the files, or one skipped parameter saying why there are none."""
    if not folder.is_dir():
        reason = f"test data folder {folder} is absent"
        print(reason)
        return [pytest.param(None, marks=pytest.mark.skip(reason=reason))]
    return [pytest.param(path, id=path.name) for path in sorted(folder.glob(pattern))]


def _canonical(resource: dict[str, Any]) -> bytes:
    """orjson form with sorted keys; decimals keep their written digits."""
    return orjson.dumps(
        resource,
        default=lambda value: orjson.Fragment(str(value)),
        option=orjson.OPT_SORT_KEYS,
    )


def _xml(body: str, root: str = "Patient") -> bytes:
    return f'<?xml version="1.0" encoding="UTF-8"?><{root} xmlns="{FHIR}">{body}</{root}>'.encode()


def _malformed(data: bytes) -> FhirError:
    with pytest.raises(FhirError) as info:
        xml_to_json(data)
    assert info.value.kind == "malformed"
    return info.value


# --------------------------------------------------------------------------- corpora


@pytest.mark.parametrize("path", _files(R4_EXAMPLES, "*.json"))
def test_official_json_examples_round_trip_through_xml(path: pathlib.Path) -> None:
    resource = loads(path.read_bytes())
    assert _canonical(xml_to_json(json_to_xml(resource))) == _canonical(resource)


@pytest.mark.parametrize("path", _files(TEST_CASES, "*.xml"))
def test_official_xml_examples_round_trip_through_json(path: pathlib.Path) -> None:
    resource = xml_to_json(path.read_bytes())
    assert resource["resourceType"]
    assert _canonical(xml_to_json(json_to_xml(resource))) == _canonical(resource)
    assert _canonical(xml_to_json(json_to_xml(resource, pretty=True))) == _canonical(resource)


@pytest.mark.parametrize(
    "path", [p for p in _files(TEST_CASES, "*.xml") if p.values[0] is None or p.values[0].with_suffix(".json").exists()]
)
def test_official_xml_equals_official_json(path: pathlib.Path) -> None:
    json_path = path.with_suffix(".json")
    converted = xml_to_json(path.read_bytes())
    converted.pop(KNOWN_PAIR_DIFFERENCES.get(path.stem, ""), None)
    assert _canonical(converted) == _canonical(loads(json_path.read_bytes()))


# --------------------------------------------------------------------------- primitives


def test_repeating_primitive_with_extension_only_entry_uses_null_placeholders() -> None:
    ext = '<extension url="http://x/e"><valueString value="v"/></extension>'
    xml = _xml(f'<name><given value="A"/><given id="g2">{ext}</given><given value="C"/></name>')
    resource = xml_to_json(xml)
    assert resource["name"] == [
        {
            "given": ["A", None, "C"],
            "_given": [None, {"id": "g2", "extension": [{"url": "http://x/e", "valueString": "v"}]}, None],
        }
    ]
    assert xml_to_json(json_to_xml(resource)) == resource


def test_repeating_primitive_with_only_extensions_omits_the_value_array() -> None:
    ext = '<extension url="http://x/e"><valueCode value="c"/></extension>'
    resource = xml_to_json(_xml(f"<name><given>{ext}</given><given>{ext}</given></name>"))
    assert resource["name"][0] == {"_given": [{"extension": [{"url": "http://x/e", "valueCode": "c"}]}] * 2}
    assert xml_to_json(json_to_xml(resource)) == resource


def test_single_primitive_extension_and_element_id() -> None:
    ext = '<extension url="http://x/t"><valueDateTime value="1974-12-25T14:35:45-05:00"/></extension>'
    xml = _xml(f'<name id="n1"><family value="F"/></name><birthDate value="1974-12-25">{ext}</birthDate>')
    resource = xml_to_json(xml)
    assert resource["name"] == [{"id": "n1", "family": "F"}]
    assert resource["birthDate"] == "1974-12-25"
    assert resource["_birthDate"] == {
        "extension": [{"url": "http://x/t", "valueDateTime": "1974-12-25T14:35:45-05:00"}]
    }
    written = json_to_xml(resource)
    assert b'<name id="n1">' in written
    assert b'<extension url="http://x/t">' in written


def test_json_types_of_primitives() -> None:
    xml = _xml('<active value="true"/><multipleBirthInteger value="2"/><contact><gender value="female"/></contact>')
    resource = xml_to_json(xml)
    assert resource["active"] is True
    assert resource["multipleBirthInteger"] == 2 and type(resource["multipleBirthInteger"]) is int
    assert b'<active value="true"/><multipleBirthInteger value="2"/>' in json_to_xml(resource)


def test_resource_id_is_an_element_but_datatype_id_an_attribute() -> None:
    resource = {"resourceType": "Patient", "id": "p1", "identifier": [{"id": "i1", "value": "x"}]}
    written = json_to_xml(resource)
    assert b'<id value="p1"/>' in written
    assert b'<identifier id="i1"><value value="x"/></identifier>' in written


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1.50", "1.50"), ("0.0001000", "0.0001000"), ("1.0", "1.0"), ("100", "100"), ("-2.5", "-2.5")],
)
def test_decimal_keeps_written_precision(text: str, expected: str) -> None:
    xml = _xml(f'<valueQuantity><value value="{text}"/><unit value="kg"/></valueQuantity>', "Observation")
    resource = xml_to_json(xml.replace(b"<valueQuantity>", b'<status value="final"/><valueQuantity>'))
    value = resource["valueQuantity"]["value"]
    assert dumps(value).decode() == expected
    assert f'<value value="{expected}"/>'.encode() in json_to_xml(resource)


def test_decimal_written_from_json_numbers() -> None:
    resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "w"},
        "component": [
            {"code": {"text": "a"}, "valueQuantity": {"value": 1.0}},
            {"code": {"text": "b"}, "valueQuantity": {"value": Decimal("2.50")}},
            {"code": {"text": "c"}, "valueQuantity": {"value": 3}},
            {"code": {"text": "d"}, "valueQuantity": {"value": 0.1}},
        ],
    }
    written = json_to_xml(resource)
    for text in (b"1.0", b"2.50", b"3", b"0.1"):
        assert b'<value value="' + text + b'"/>' in written
    assert _canonical(xml_to_json(written)) == _canonical(resource)


def test_strings_are_escaped() -> None:
    text = 'a "quoted" <tag> & ampersand\nnew line\ttab \u00e9\u4e2d'
    resource = {"resourceType": "Patient", "name": [{"text": text}]}
    written = json_to_xml(resource)
    assert b"&quot;quoted&quot; &lt;tag&gt; &amp; ampersand&#10;new line&#9;tab" in written
    assert xml_to_json(written) == resource


# --------------------------------------------------------------------------- narrative


def test_xhtml_narrative_becomes_a_json_string_and_back() -> None:
    div = f'<div xmlns="{XHTML}"><p>Hello <b>world</b> &amp; &lt;more&gt;</p><br/></div>'
    resource = xml_to_json(_xml(f'<text><status value="generated"/>{div}</text>'))
    assert resource["text"] == {"status": "generated", "div": div}
    root = etree.fromstring(json_to_xml(resource))
    written = root.find(f"{{{FHIR}}}text/{{{XHTML}}}div")
    assert written is not None
    assert written.find(f"{{{XHTML}}}p/{{{XHTML}}}b").text == "world"
    assert xml_to_json(json_to_xml(resource)) == resource


def test_xhtml_does_not_inherit_namespace_declarations_or_prefixes() -> None:
    xml = (
        f'<Patient xmlns="{FHIR}" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
        f'<text><status value="generated"/><h:div xmlns:h="{XHTML}"><h:p>x</h:p></h:div></text></Patient>'
    ).encode()
    assert xml_to_json(xml)["text"]["div"] == f'<div xmlns="{XHTML}"><p>x</p></div>'


def test_narrative_without_xhtml_namespace_is_written_in_it() -> None:
    resource = {"resourceType": "Patient", "text": {"status": "generated", "div": "<div><p>x</p></div>"}}
    root = etree.fromstring(json_to_xml(resource))
    assert root.find(f"{{{FHIR}}}text/{{{XHTML}}}div/{{{XHTML}}}p") is not None


def test_narrative_that_is_not_xhtml_is_rejected() -> None:
    for div in ("just text", "<div><p>unclosed</div>", '<p xmlns="http://www.w3.org/1999/xhtml"/>'):
        with pytest.raises(FhirError) as info:
            json_to_xml({"resourceType": "Patient", "text": {"status": "generated", "div": div}})
        assert info.value.issues[0].expression == ["Patient.text.div"]


# --------------------------------------------------------------------------- nested resources


def test_contained_resources_are_wrapped() -> None:
    xml = _xml(
        '<id value="o1"/><contained><Patient><id value="p1"/><active value="true"/></Patient></contained>'
        '<contained><Organization><id value="org"/><name value="Acme"/></Organization></contained>'
        '<status value="final"/><code><text value="t"/></code><subject><reference value="#p1"/></subject>',
        "Observation",
    )
    resource = xml_to_json(xml)
    assert resource["contained"] == [
        {"resourceType": "Patient", "id": "p1", "active": True},
        {"resourceType": "Organization", "id": "org", "name": "Acme"},
    ]
    written = json_to_xml(resource)
    assert b'<contained><Patient><id value="p1"/>' in written
    assert xml_to_json(written) == resource


def test_bundle_with_entries() -> None:
    resource = {
        "resourceType": "Bundle",
        "type": "transaction-response",
        "entry": [
            {
                "fullUrl": "urn:uuid:1",
                "resource": {"resourceType": "Patient", "id": "a", "name": [{"family": "X"}]},
                "response": {"status": "201 Created", "location": "Patient/a/_history/1"},
            },
            {
                "response": {
                    "status": "400 Bad Request",
                    "outcome": {
                        "resourceType": "OperationOutcome",
                        "issue": [{"severity": "error", "code": "invalid", "diagnostics": "bad"}],
                    },
                }
            },
        ],
    }
    written = json_to_xml(resource, pretty=True)
    assert b"\n    <resource>\n      <Patient>" in written
    assert b"<outcome>" in written
    assert xml_to_json(written) == resource


def test_pretty_and_compact_forms_carry_the_same_content() -> None:
    resource = {"resourceType": "Patient", "id": "p", "name": [{"given": ["A", "B"]}]}
    pretty = json_to_xml(resource, pretty=True)
    compact = json_to_xml(resource)
    assert pretty.startswith(b'<?xml version="1.0" encoding="UTF-8"?>\n<Patient')
    assert b"\n" not in compact
    assert xml_to_json(pretty) == xml_to_json(compact) == resource


# --------------------------------------------------------------------------- errors


def test_malformed_xml_is_rejected() -> None:
    error = _malformed(b"<Patient xmlns='http://hl7.org/fhir'><id value='x'></Patient>")
    assert error.status == 400
    assert "well-formed" in error.diagnostics


@pytest.mark.parametrize(
    "data",
    [
        b'<?xml version="1.0"?><!DOCTYPE Patient [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&xxe;"/></Patient>',
        b'<!DOCTYPE Patient [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;">]>'
        b'<Patient xmlns="http://hl7.org/fhir"><id value="&b;"/></Patient>',
        '<?xml version="1.0" encoding="UTF-16"?><!DOCTYPE Patient><Patient xmlns="http://hl7.org/fhir"/>'.encode(
            "utf-16"
        ),
    ],
    ids=["external-entity", "entity-expansion", "utf16-doctype"],
)
def test_doctype_and_entities_are_rejected(data: bytes) -> None:
    assert "DOCTYPE" in _malformed(data).diagnostics


@pytest.mark.parametrize(
    "div",
    [
        f'<!DOCTYPE div [<!ENTITY x SYSTEM "file:///etc/passwd">]><div xmlns="{XHTML}">&x;</div>',
        f'<div xmlns="{XHTML}">&nbsp;</div>',
    ],
)
def test_entities_in_narrative_are_rejected(div: str) -> None:
    with pytest.raises(FhirError) as info:
        json_to_xml({"resourceType": "Patient", "text": {"status": "generated", "div": div}})
    assert info.value.kind == "malformed"


def test_too_deep_nesting_is_rejected() -> None:
    extension: dict[str, Any] = {"url": "u", "valueString": "x"}
    for _ in range(1000):
        extension = {"url": "u", "extension": [extension]}
    with pytest.raises(FhirError) as info:
        json_to_xml({"resourceType": "Patient", "extension": [extension]})
    assert info.value.kind == "malformed"
    depth = 300
    xml = _xml('<extension url="u">' * depth + '<valueString value="x"/>' + "</extension>" * depth)
    _malformed(xml)


def test_unknown_element_is_rejected_with_its_location() -> None:
    error = _malformed(_xml('<name><family value="A"/></name><name><given value="B"/><nickname value="C"/></name>'))
    assert error.issues[0].expression == ["Patient.name[1].nickname"]
    assert "nickname" in error.diagnostics and "line 1" in error.diagnostics


def test_unknown_element_inside_nested_resource_and_extension() -> None:
    xml = _xml(
        '<type value="collection"/><entry><resource><Patient><birthDate value="2000-01-01">'
        '<extension url="u"><valueString value="v"/><bogus/></extension></birthDate></Patient></resource></entry>',
        "Bundle",
    )
    error = _malformed(xml)
    assert error.issues[0].expression == ["Bundle.entry[0].resource.birthDate.extension[0].bogus"]


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        ('<active value="yes"/>', "Patient.active"),
        ('<multipleBirthInteger value="1.5"/>', "Patient.multipleBirthInteger"),
        ('<active value="true"/><active value="false"/>', "Patient.active"),
        ("<name><given/></name>", "Patient.name[0].given[0]"),
        ('<name><family value="x">text</family></name>', "Patient.name[0].family"),
        ('<name foo="bar"/>', "Patient.name[0]"),
        ("<contained><Patient/><Patient/></contained>", "Patient.contained[0]"),
        ("<contained><Bogus/></contained>", "Patient.contained[0]"),
    ],
)
def test_invalid_values_are_rejected_with_location(body: str, expression: str) -> None:
    assert _malformed(_xml(body)).issues[0].expression == [expression]


def test_decimal_value_that_is_not_a_number_is_rejected() -> None:
    xml = _xml('<status value="final"/><code/><valueQuantity><value value="1,5"/></valueQuantity>', "Observation")
    assert _malformed(xml).issues[0].expression == ["Observation.valueQuantity.value"]


def test_wrong_namespace_and_unknown_resource_type_are_rejected() -> None:
    assert "namespace" in _malformed(b'<Patient xmlns="urn:other"/>').diagnostics
    assert "namespace" in _malformed(b"<Patient/>").diagnostics
    assert "NotAResource" in _malformed(_xml("", "NotAResource")).diagnostics
    assert "DomainResource" in _malformed(_xml("", "DomainResource")).diagnostics


def test_json_that_cannot_be_written_is_rejected_with_location() -> None:
    cases = [
        ({"resourceType": "Patient", "name": [{"family": "A"}, {"nick": "B"}]}, "Patient.name[1].nick"),
        ({"resourceType": "Patient", "active": "yes"}, "Patient.active"),
        ({"resourceType": "Patient", "name": {"family": "A"}}, "Patient.name"),
        ({"resourceType": "Patient", "name": [{"given": ["A", None]}]}, "Patient.name[0].given[1]"),
        ({"resourceType": "Patient", "contained": [{"resourceType": "Nope"}]}, "Patient.contained[0].resourceType"),
        ({"resourceType": "Patient", "name": [{"text": "bell \x07"}]}, "Patient.name[0].text"),
        ({"resourceType": "Nope"}, "Nope.resourceType"),
    ]
    for resource, expression in cases:
        with pytest.raises(FhirError) as info:
            json_to_xml(resource)
        assert info.value.kind == "malformed"
        assert info.value.issues[0].expression == [expression], resource
