"""De-identification (脱敏, 001 §8.3.1, MISSION R25): no direct identifier survives, pseudonyms are
stable within a scope and unlinkable across scopes, Bundles still resolve, the output is still valid
FHIR R4 (and still meets the profiles it claims), and free-text scrubbing hits ID and phone numbers
but not lab values or dates.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import importlib.util
import json
import pathlib
import re
from collections.abc import Iterator
from typing import Any

import pytest

from fhir_server.model import get_model
from fhir_server.security.deidentify import (
    CONSULTATION_NUMBER,
    PSEUDED,
    REDACTED,
    REMOVED_NARRATIVE,
    RULES,
    DeidContext,
    DeidentificationError,
    deidentify,
    deidentify_bundle,
    is_resident_id_number,
    pseudonym,
    scrub_free_text,
)
from fhir_server.validation import check_resource
from fhir_server.validation.file_terminology import FileTerminology
from fhir_server.validation.profiles import Validator

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "profiles" / "examples"
KEY = bytes(range(32))
SCOPE = "ServiceRequest/consultation-request-example"
CTX = DeidContext(KEY, SCOPE)
OTHER_SCOPE = DeidContext(KEY, "ServiceRequest/another-consultation")
ID_CARD_SYSTEM = "urn:oid:2.16.156.10011.1.3"
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")
BASE = "http://hospital-a.example/fhir/"

# Valid GB 11643 numbers (both are checked by cn-pat-1 / cn-prac-1 in the profile examples).
ID_X = "11010519491231002X"
ID_DIGIT = "330106197505120019"


def example(name: str) -> dict[str, Any]:
    return json.loads((EXAMPLES / f"{name}.json").read_text(encoding="utf-8"))


def all_examples() -> list[dict[str, Any]]:
    return [json.loads(p.read_text(encoding="utf-8")) for p in sorted(EXAMPLES.glob("*.json"))]


def dumps(resource: Any) -> str:
    return json.dumps(resource, ensure_ascii=False)


def references(node: Any) -> Iterator[dict[str, Any]]:
    """Every Reference-shaped object (has a string ``reference``) in a JSON tree."""
    if isinstance(node, dict):
        if isinstance(node.get("reference"), str):
            yield node
        for value in node.values():
            yield from references(value)
    elif isinstance(node, list):
        for value in node:
            yield from references(value)


def rich_patient() -> dict[str, Any]:
    """A patient with every kind of identifying data the rules cover."""
    return {
        "resourceType": "Patient",
        "id": "pat-001",
        "text": {
            "status": "generated",
            "div": f'<div xmlns="http://www.w3.org/1999/xhtml">王秀英，身份证 {ID_X}，电话 13800000000</div>',
        },
        "extension": [
            {
                "url": "http://fhir.telefhir.cn/StructureDefinition/cn-native-place",
                "valueAddress": {"state": "浙江省", "city": "绍兴市", "district": "越城区", "line": ["鲁迅路8号"]},
            },
            {
                "url": "http://example.org/fhir/StructureDefinition/emergency-phone",
                "valueContactPoint": {"system": "phone", "value": "13912345678"},
            },
            {
                "url": "http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
                "valueString": "李桂兰",
            },
        ],
        "identifier": [
            {
                "type": {"coding": [{"system": "http://fhir.telefhir.cn/CodeSystem/cv02-01-101", "code": "01"}]},
                "system": ID_CARD_SYSTEM,
                "value": ID_X,
            },
            {"system": "urn:oid:2.16.156.10011.1.11", "value": "MZ2026110001"},
            {"system": "http://fhir.telefhir.cn/sid/mobile", "value": "13800000000"},
        ],
        "name": [
            {"use": "official", "text": "王秀英", "family": "王", "given": ["秀英"]},
            {"use": "usual", "family": "Wang", "given": ["Xiuying"]},
        ],
        "telecom": [
            {"system": "phone", "value": "13800000000", "use": "mobile"},
            {"system": "email", "value": "wxy1949@example.com"},
        ],
        "gender": "female",
        "birthDate": "1949-12-31",
        "_birthDate": {
            "extension": [
                {
                    "url": "http://hl7.org/fhir/StructureDefinition/patient-birthTime",
                    "valueDateTime": "1949-12-31T08:30:00+08:00",
                }
            ]
        },
        "deceasedDateTime": "2026-12-01T10:00:00+08:00",
        "address": [
            {
                "use": "home",
                "text": "浙江省杭州市西湖区文三路100号3幢201室",
                "line": ["文三路100号3幢201室"],
                "city": "杭州市",
                "district": "西湖区",
                "state": "浙江省",
                "postalCode": "310012",
                "country": "CN",
            },
            {"use": "old", "text": "北京市东城区某胡同7号"},
        ],
        "photo": [{"contentType": "image/jpeg", "data": base64.b64encode(b"\xff\xd8face").decode(), "title": "证件照"}],
        "contact": [
            {
                "relationship": [
                    {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0131", "code": "N"}]}
                ],
                "name": {"text": "张建国", "family": "张", "given": ["建国"]},
                "telecom": [{"system": "phone", "value": "13698765432"}],
                "address": {"line": ["文三路100号"], "city": "杭州市"},
            }
        ],
        "generalPractitioner": [{"reference": "Practitioner/cn-practitioner-example", "display": "李明华"}],
        "managingOrganization": {"reference": "Organization/cn-organization-example", "display": "示范省中医院"},
    }


RICH_SECRETS = [
    ID_X,
    "MZ2026110001",
    "13800000000",
    "13912345678",
    "13698765432",
    "wxy1949@example.com",
    "王秀英",
    "秀英",
    "Xiuying",
    "张建国",
    "建国",
    "李桂兰",
    "文三路",
    "100号",
    "310012",
    "某胡同",
    "绍兴市",
    "鲁迅路",
    "1949-12-31",
    "08:30",
    "2026-12-01",
    "pat-001",
    "/9j/",  # the photo's JPEG bytes in base64
]


@pytest.fixture(scope="module")
def profile_validator() -> Validator:
    spec = importlib.util.spec_from_file_location("gen_profiles", ROOT / "scripts" / "gen_profile_snapshots.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return Validator(gen.local_resolver(gen.profile_files()), FileTerminology(ROOT / "terminology").check)


# --------------------------------------------------------------------------- pseudonyms


def test_pseudonym_is_truncated_base32_of_hmac_sha256_over_scope_kind_value() -> None:
    digest = hmac.new(KEY, f"{SCOPE}\0Patient\0cn-patient-example".encode(), hashlib.sha256).digest()
    expected = base64.b32encode(digest).decode().lower()[:26]
    assert pseudonym(CTX, "Patient", "cn-patient-example") == expected
    assert FHIR_ID.fullmatch(expected)


def test_pseudonym_depends_on_scope_kind_value_and_key() -> None:
    base = pseudonym(CTX, "Patient", "p1")
    assert pseudonym(CTX, "Patient", "p1") == base
    assert pseudonym(OTHER_SCOPE, "Patient", "p1") != base
    assert pseudonym(CTX, "Observation", "p1") != base
    assert pseudonym(CTX, "Patient", "p2") != base
    assert pseudonym(DeidContext(b"\x01" * 32, SCOPE), "Patient", "p1") != base


def test_context_rejects_short_keys_and_bad_scopes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        DeidContext(b"short", SCOPE)
    with pytest.raises(TypeError):
        DeidContext("a string key of more than thirty-two chars", SCOPE)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="scope"):
        DeidContext(KEY, "")
    with pytest.raises(ValueError, match="NUL"):
        DeidContext(KEY, "a\0b")


# --------------------------------------------------------------------------- the rule set


def test_every_rule_names_a_real_element_datatype_or_extension() -> None:
    model = get_model()
    targets = [r.target for r in RULES]
    assert len(targets) == len(set(targets))
    for rule in RULES:
        assert rule.reason.strip(), rule.target
        if rule.target.startswith("extension:"):
            assert rule.target.removeprefix("extension:").startswith("http"), rule.target
        elif "." in rule.target:
            assert model.element_at(rule.target) is not None, rule.target
        else:
            assert rule.target in model.types, rule.target


# --------------------------------------------------------------------------- the profile examples


@pytest.mark.parametrize("resource", all_examples(), ids=lambda r: r["id"])
def test_every_example_stays_valid_labelled_and_unchanged(
    resource: dict[str, Any], profile_validator: Validator
) -> None:
    original = copy.deepcopy(resource)
    out = deidentify(resource, CTX)
    assert resource == original  # input never mutated
    check_resource(out)
    assert PSEUDED in out["meta"]["security"]
    assert out["id"] == pseudonym(CTX, resource["resourceType"], resource["id"])
    for profile in out["meta"].get("profile", []):
        errors = [i for i in profile_validator.validate(out, profile) if i.severity == "error"]
        assert not errors, (profile, [e.diagnostics for e in errors])
    text = dumps(out)
    for ident in resource.get("identifier", []):
        if ident.get("system") == CONSULTATION_NUMBER:  # names a consultation, not a person: kept
            assert ident["value"] in text
        elif resource["resourceType"] != "Organization":  # the institution's USCC is kept (public)
            assert ident["value"] not in text
    for ref in references(resource):
        if ref["reference"].startswith("Patient/"):
            assert ref["reference"] not in text
            assert ref.get("display", "\0") not in text


def test_patient_example_loses_its_identity_but_keeps_clinical_demographics() -> None:
    patient = example("cn-patient-example")
    out = deidentify(patient, CTX)
    text = dumps(out)
    for secret in ("11010519491231002X", "MZ2026110001", "13800000000", "王秀英", "秀英", "1949-12-31", "北京市朝阳区"):
        assert secret not in text, secret
    token = pseudonym(CTX, "Patient", "cn-patient-example")
    assert out["name"] == [{"use": "anonymous", "text": f"患者-{token[:8].upper()}"}]
    assert out["birthDate"] == "1949"
    assert out["gender"] == "female"
    assert "telecom" not in out
    assert out["address"] == [{"state": "北京市", "district": "朝阳区"}]
    assert [i["system"] for i in out["identifier"]] == [ID_CARD_SYSTEM, "urn:oid:2.16.156.10011.1.11"]
    assert out["identifier"][0]["type"] == patient["identifier"][0]["type"]
    assert out["identifier"][0]["value"] == pseudonym(CTX, f"Identifier|{ID_CARD_SYSTEM}", ID_X)
    native = [e for e in out["extension"] if e["url"].endswith("cn-native-place")]
    assert native == [
        {"url": "http://fhir.telefhir.cn/StructureDefinition/cn-native-place", "valueAddress": {"state": "浙江省"}}
    ]
    ethnicity = [e for e in out["extension"] if e["url"].endswith("cn-ethnicity")]
    assert ethnicity == [e for e in patient["extension"] if e["url"].endswith("cn-ethnicity")]
    # cn-pat-1 cannot hold for a pseudonymous ID card value, so the claim is dropped
    assert "profile" not in out["meta"]


def test_same_patient_same_pseudonym_across_resources_within_a_scope_and_not_across_scopes() -> None:
    patient = deidentify(example("cn-patient-example"), CTX)
    request = deidentify(example("consultation-request-example"), CTX)
    task = deidentify(example("consultation-task-example"), CTX)
    tongue = deidentify(example("tcm-tongue-example"), CTX)
    target = f"Patient/{patient['id']}"
    assert request["subject"]["reference"] == target
    assert task["for"]["reference"] == target
    assert tongue["subject"]["reference"] == target
    # the display of a reference to the patient is the patient's label, never the name
    label = patient["name"][0]["text"]
    assert request["subject"]["display"] == task["for"]["display"] == label
    # the same consultation request is the same pseudonym from the Task
    assert task["basedOn"][0]["reference"] == f"ServiceRequest/{request['id']}"

    elsewhere = deidentify(example("cn-patient-example"), OTHER_SCOPE)
    assert elsewhere["id"] != patient["id"]
    assert elsewhere["identifier"][0]["value"] != patient["identifier"][0]["value"]
    assert elsewhere["name"][0]["text"] != label
    assert deidentify(example("consultation-request-example"), OTHER_SCOPE)["subject"]["reference"] != target


def test_practitioners_keep_their_names_but_not_their_id_card_phone_or_birthday() -> None:
    practitioner = example("cn-practitioner-example")
    practitioner["telecom"] = [{"system": "phone", "value": "13511112222", "use": "mobile"}]
    practitioner["address"] = [{"line": ["教工路18号"], "city": "杭州市", "state": "浙江省"}]
    out = deidentify(practitioner, CTX)
    check_resource(out)
    text = dumps(out)
    assert out["name"] == practitioner["name"]
    for secret in (ID_DIGIT, "110330000012345", "13511112222", "教工路", "1975-05-12"):
        assert secret not in text, secret
    assert out["birthDate"] == "1975"
    assert out["address"] == [{"city": "杭州市", "state": "浙江省"}]
    assert "cn-practitioner" not in dumps(out.get("meta"))

    role = example("cn-practitionerrole-example")
    role["telecom"] = [{"system": "phone", "value": "0571-87654321", "use": "work"}]
    assert deidentify(role, CTX)["telecom"] == role["telecom"]  # the role's work line coordinates the consultation


def test_institutions_keep_their_registration_address_and_switchboard() -> None:
    org = example("cn-organization-example")
    org["contact"] = [{"name": {"text": "赵主任"}, "telecom": [{"system": "phone", "value": "13712345678"}]}]
    out = deidentify(org, CTX)
    check_resource(out)
    for key in ("identifier", "name", "telecom", "address"):
        assert out[key] == org[key], key
    assert out["contact"][0]["name"]["text"].startswith("人员-")
    assert "telecom" not in out["contact"][0]
    assert "赵主任" not in dumps(out) and "13712345678" not in dumps(out)


# --------------------------------------------------------------------------- a patient with everything


def test_rich_patient_leaks_nothing() -> None:
    patient = rich_patient()
    original = copy.deepcopy(patient)
    out = deidentify(patient, CTX)
    assert patient == original
    check_resource(out)
    text = dumps(out)
    for secret in RICH_SECRETS:
        assert secret not in text, secret
    assert out["text"] == {"status": "generated", "div": REMOVED_NARRATIVE}
    assert out["birthDate"] == "1949" and "_birthDate" not in out
    assert out["deceasedDateTime"] == "2026"
    # two names, one label (use "anonymous": a pseudonym for privacy)
    assert out["name"] == [{"use": "anonymous", "text": "患者-" + pseudonym(CTX, "Patient", "pat-001")[:8].upper()}]
    assert "telecom" not in out and "photo" not in out
    # city and district kept, street and postcode gone; an address with only a street disappears
    assert out["address"] == [
        {"use": "home", "country": "CN", "state": "浙江省", "city": "杭州市", "district": "西湖区"}
    ]
    # the extension whose value was removed goes too (ext-1); mothersMaidenName removed
    assert [e["url"].rsplit("/", 1)[-1] for e in out["extension"]] == ["cn-native-place"]
    assert out["extension"][0]["valueAddress"] == {"state": "浙江省"}
    contact = out["contact"][0]
    assert contact["name"]["text"].startswith("联系人-")
    assert contact["address"] == {"city": "杭州市"}
    assert "telecom" not in contact and contact["relationship"] == patient["contact"][0]["relationship"]
    # the mobile number used as an identifier becomes a pseudonym under its own system
    mobile = [i for i in out["identifier"] if i["system"].endswith("/mobile")][0]
    assert mobile["value"] == pseudonym(CTX, "Identifier|http://fhir.telefhir.cn/sid/mobile", "13800000000")
    # the practitioner is not the protected subject: their name stays on the reference
    assert out["generalPractitioner"][0]["display"] == "李明华"


def test_known_values_are_scrubbed_from_free_text_of_the_same_resource() -> None:
    obs = example("tcm-tongue-example")
    obs["note"] = [{"text": "王秀英自述舌痛三日，门诊号 MZ2026110001，家属电话 136-9876-5432"}]
    out = deidentify(obs, CTX)
    note = out["note"][0]["text"]
    # the name is known only from subject.display, the record number from nowhere but the pattern-free text
    assert "王秀英" not in note and "136-9876-5432" not in note
    assert note.startswith(REDACTED + "自述舌痛三日")
    assert out["valueString"] == obs["valueString"]  # clinical text untouched


# --------------------------------------------------------------------------- Bundles


def consultation_bundle() -> dict[str, Any]:
    names = [
        "cn-patient-example",
        "consultation-request-example",
        "consultation-task-example",
        "consultation-report-example",
        "tcm-tongue-example",
        "tcm-diagnosis-example",
        "cn-practitioner-example",
        "cn-practitionerrole-example",
        "cn-practitionerrole-example-requester",
        "cn-organization-example",
    ]
    entries = []
    for name in names:
        res = example(name)
        entries.append({"fullUrl": f"{BASE}{res['resourceType']}/{res['id']}", "resource": res})
    tongue = entries[4]["resource"]
    tongue["note"] = [{"text": "门诊号 MZ2026110001，王秀英本人拍摄"}]
    return {
        "resourceType": "Bundle",
        "id": "exchange-1",
        "type": "collection",
        "link": [{"relation": "self", "url": f"{BASE}Patient?identifier={ID_CARD_SYSTEM}|{ID_X}"}],
        "entry": entries,
    }


def resolvable(bundle: dict[str, Any]) -> list[str]:
    """References of the Bundle that point at one of its entries (relative to the entry's base)."""
    full_urls = {e["fullUrl"] for e in bundle["entry"]}
    out = []
    for entry in bundle["entry"]:
        for ref in references(entry["resource"]):
            target = ref["reference"]
            absolute = target if "://" in target or target.startswith("urn:") else BASE + target
            if absolute in full_urls:
                out.append(absolute)
    return out


def test_bundle_references_still_resolve_and_nothing_leaks() -> None:
    bundle = consultation_bundle()
    original = copy.deepcopy(bundle)
    out = deidentify_bundle(bundle, CTX)
    assert bundle == original
    check_resource(out)
    before, after = resolvable(bundle), resolvable(out)
    assert len(before) >= 15
    assert len(after) == len(before)
    for entry in out["entry"]:
        res = entry["resource"]
        assert entry["fullUrl"] == f"{BASE}{res['resourceType']}/{res['id']}"
        assert PSEUDED in res["meta"]["security"]
    assert PSEUDED in out["meta"]["security"] and "link" not in out
    text = dumps(out)
    for secret in (ID_X, ID_DIGIT, "MZ2026110001", "13800000000", "王秀英", "cn-patient-example", "1949-12-31"):
        assert secret not in text, secret
    # the note that repeats the record number and name is scrubbed with values from the Patient entry
    tongue = next(e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Observation")
    assert tongue["note"][0]["text"] == f"门诊号 {REDACTED}，{REDACTED}本人拍摄"


def test_bundle_and_single_resources_agree_on_pseudonyms() -> None:
    out = deidentify_bundle(consultation_bundle(), CTX)
    patient = next(e["resource"] for e in out["entry"] if e["resource"]["resourceType"] == "Patient")
    alone = deidentify(example("cn-patient-example"), CTX)
    assert patient["id"] == alone["id"]
    assert patient["identifier"] == alone["identifier"]
    assert patient["name"] == alone["name"]
    assert deidentify(consultation_bundle(), CTX) == out  # deidentify() hands a Bundle to deidentify_bundle
    assert deidentify_bundle(consultation_bundle(), OTHER_SCOPE)["entry"][0]["resource"]["id"] != patient["id"]


def test_transaction_bundle_uuid_and_conditional_references_stay_consistent() -> None:
    patient_uuid = "urn:uuid:0c3151bd-1cbf-4d64-b04d-cd9187a4c6e0"
    obs_uuid = "urn:uuid:9f0a2b1e-7c6d-4e5f-8a9b-0c1d2e3f4a5b"
    search = f"identifier={ID_CARD_SYSTEM}|{ID_X}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": patient_uuid,
                "resource": {
                    "resourceType": "Patient",
                    "identifier": [{"system": ID_CARD_SYSTEM, "value": ID_X}],
                    "name": [{"text": "王秀英"}],
                },
                "request": {"method": "POST", "url": "Patient", "ifNoneExist": search},
            },
            {
                "fullUrl": obs_uuid,
                "resource": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "舌诊"},
                    "subject": {"reference": patient_uuid, "display": "王秀英"},
                    "note": [{"text": "王秀英 诉口干"}],
                },
                "request": {"method": "POST", "url": "Observation"},
            },
            {
                "fullUrl": f"{BASE}Observation/obs-1",
                "resource": {
                    "resourceType": "Observation",
                    "id": "obs-1",
                    "status": "final",
                    "code": {"text": "脉诊"},
                    "subject": {"reference": f"Patient?{search}"},
                    "note": [{"text": "final diagnosis pending"}],
                },
                "request": {"method": "PUT", "url": "Observation/obs-1"},
            },
        ],
    }
    out = deidentify_bundle(bundle, CTX)
    check_resource(out)
    text = dumps(out)
    assert ID_X not in text and "王秀英" not in text and patient_uuid not in text
    patient_entry, obs_entry, put_entry = out["entry"]
    assert re.fullmatch(
        r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", patient_entry["fullUrl"]
    )
    assert obs_entry["resource"]["subject"]["reference"] == patient_entry["fullUrl"]
    assert obs_entry["resource"]["subject"]["display"] == REDACTED
    assert obs_entry["resource"]["note"][0]["text"] == f"{REDACTED} 诉口干"
    # the conditional reference and ifNoneExist search for the pseudonymized identifier, so they still match
    pseudo_id_card = patient_entry["resource"]["identifier"][0]["value"]
    assert put_entry["resource"]["subject"]["reference"] == f"Patient?identifier={ID_CARD_SYSTEM}|{pseudo_id_card}"
    assert patient_entry["request"]["ifNoneExist"] == f"identifier={ID_CARD_SYSTEM}|{pseudo_id_card}"
    obs_id = pseudonym(CTX, "Observation", "obs-1")
    assert put_entry["resource"]["id"] == obs_id
    assert put_entry["request"]["url"] == f"Observation/{obs_id}"
    assert put_entry["fullUrl"] == f"{BASE}Observation/{obs_id}"


def test_search_values_other_than_identifiers_are_pseudonymized_but_not_hunted_in_text() -> None:
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "舌诊"},
        "basedOn": [{"reference": "ServiceRequest?status=active&_count=1&subject=Patient/cn-patient-example"}],
        "note": [{"text": "active treatment"}],
    }
    out = deidentify(obs, CTX)
    patient = pseudonym(CTX, "Patient", "cn-patient-example")
    active = pseudonym(CTX, "search|ServiceRequest|status", "active")
    assert out["basedOn"][0]["reference"] == f"ServiceRequest?status={active}&_count=1&subject=Patient/{patient}"
    assert out["note"][0]["text"] == "active treatment"


# --------------------------------------------------------------------------- free text


@pytest.mark.parametrize(
    "text",
    [
        f"身份证号{ID_X}。",
        f"身份证号 {ID_X.lower()}",
        f"ID:{ID_DIGIT}",
        "旧身份证 110105491231002 已换发",
        "手机13800000000",
        "手机 138-0000-0000",
        "联系 +86 139 1234 5678",
        "电话0571-87654321转8",
        "电话 (010)12345678",
        "座机 02887654321",
        "邮箱 wang.xy+1@example.com.cn",
    ],
)
def test_free_text_scrubbing_catches_id_numbers_phones_and_email(text: str) -> None:
    scrubbed = scrub_free_text(text)
    assert REDACTED in scrubbed
    assert not re.search(r"\d{7,}", scrubbed), scrubbed
    assert "@" not in scrubbed


@pytest.mark.parametrize(
    "text",
    [
        "血红蛋白 128 g/L，血糖 5.6 mmol/L，白细胞 6.5×10^9/L",
        "2026-11-26 14:00 复诊；2026年11月26日",
        "检验条码 12345678901234567",  # 17 digits: no check character
        "编号 110105194912310021",  # 18 digits with a wrong check character (the right one is X)
        "编号 110105194913310021",  # check character right, month 13
        "旧号 110105491331002",  # 15 digits, month 13
        "浓度 0.00123456789 mol/L",  # decimal fraction, not a landline
        "订单 12345678901",  # 11 digits but 12x is no mobile prefix
        "血压 138/88 mmHg，心率 76 次/分",
    ],
)
def test_free_text_scrubbing_leaves_ordinary_numbers_alone(text: str) -> None:
    assert scrub_free_text(text) == text


def test_the_wrong_check_character_test_really_is_wrong() -> None:
    assert is_resident_id_number(ID_X) and is_resident_id_number(ID_X.lower()) and is_resident_id_number(ID_DIGIT)
    assert not is_resident_id_number("110105194912310021")
    assert not is_resident_id_number("110105194913310021")
    weights = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
    assert "10X98765432"[sum(int(d) * w for d, w in zip("11010519491331002", weights, strict=True)) % 11] == "1"


def test_known_values_are_scrubbed_as_whole_words() -> None:
    assert scrub_free_text("Wang Xiuying came; Wangfujing clinic", known=["Wang Xiuying", "Wang"]) == (
        f"{REDACTED} came; Wangfujing clinic"
    )
    assert scrub_free_text("住址文三路100号", known=["文三路100号", "1"]) == f"住址{REDACTED}"


def test_section_narrative_is_scrubbed_not_removed_and_markup_survives() -> None:
    report = example("consultation-report-example")
    report["text"] = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">王秀英的会诊报告</div>'}
    report["section"][0]["text"]["div"] = (
        '<div xmlns="http://www.w3.org/1999/xhtml"><p title="电话13800000000">女，76岁，'
        "反复失眠半年。家属电话 &#49;3912345678 &amp; 邮箱 a.b@example.org</p><!-- 王秀英 --></div>"
    )
    out = deidentify(report, CTX)
    check_resource(out)
    div = out["section"][0]["text"]["div"]
    assert "女，76岁，反复失眠半年。" in div
    for secret in ("13800000000", "3912345678", "a.b@example.org", "王秀英"):
        assert secret not in div, secret
    assert div.startswith('<div xmlns="http://www.w3.org/1999/xhtml"><p title="电话[已脱敏]">')
    assert out["text"] == {"status": "generated", "div": REMOVED_NARRATIVE}


def test_text_attachments_are_scrubbed_binary_ones_passed_through() -> None:
    note = f"患者身份证{ID_X}，手机13800000000。睡眠差。".encode()
    doc = {
        "resourceType": "DocumentReference",
        "id": "case-summary-example",
        "status": "current",
        "subject": {"reference": "Patient/cn-patient-example"},
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(note).decode(),
                    "size": len(note),
                    "hash": base64.b64encode(hashlib.sha1(note).digest()).decode(),
                    "title": "病例摘要 13800000000",
                }
            },
            {"attachment": {"contentType": "application/pdf", "data": base64.b64encode(b"%PDF-1.7").decode()}},
            {"attachment": {"contentType": "image/jpeg", "url": "Binary/bin-1"}},
            {"attachment": {"contentType": "image/jpeg", "url": "https://pacs.example/img?mrn=13800000000"}},
        ],
    }
    out = deidentify(doc, CTX)
    check_resource(out)
    text_att, pdf_att, binary_att, external_att = (c["attachment"] for c in out["content"])
    decoded = base64.b64decode(text_att["data"]).decode()
    assert decoded == f"患者身份证{REDACTED}，手机{REDACTED}。睡眠差。"
    assert text_att["size"] == len(decoded.encode()) and "hash" not in text_att
    assert text_att["title"] == f"病例摘要 {REDACTED}"
    assert pdf_att == doc["content"][1]["attachment"]
    binary = {
        "resourceType": "Binary",
        "id": "bin-1",
        "contentType": "text/plain",
        "data": base64.b64encode(note).decode(),
    }
    binary_out = deidentify(binary, CTX)
    assert binary_att["url"] == f"Binary/{binary_out['id']}"  # still names the (pseudonymized) Binary
    assert external_att["url"] == f"https://pacs.example/img?mrn={REDACTED}"
    assert base64.b64decode(binary_out["data"]).decode() == decoded


# --------------------------------------------------------------------------- other rules


def test_contained_resources_keep_local_ids_and_no_security_label() -> None:
    obs = {
        "resourceType": "Observation",
        "id": "o1",
        "contained": [{"resourceType": "Patient", "id": "p1", "name": [{"text": "王秀英"}], "birthDate": "1949-12-31"}],
        "status": "final",
        "code": {"text": "舌诊"},
        "subject": {"reference": "#p1", "display": "王秀英"},
    }
    out = deidentify(obs, CTX)
    check_resource(out)  # dom-5: no meta.security on a contained resource
    contained = out["contained"][0]
    assert contained["id"] == "p1" and "meta" not in contained
    assert contained["birthDate"] == "1949" and contained["name"][0]["text"].startswith("患者-")
    assert out["subject"] == {"reference": "#p1", "display": REDACTED}
    assert "王秀英" not in dumps(out)


def test_imaging_uids_become_2_25_uids_consistently() -> None:
    study_uid = "1.2.840.113619.2.55.3.604688119.969.1268071029.320"
    series_uid = study_uid + ".1"
    study = {
        "resourceType": "ImagingStudy",
        "id": "img-1",
        "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{study_uid}"}],
        "status": "available",
        "subject": {"reference": "Patient/cn-patient-example"},
        "series": [
            {
                "uid": series_uid,
                "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"},
                "instance": [
                    {"uid": series_uid + ".7", "sopClass": {"system": "urn:ietf:rfc:3986", "code": "urn:oid:1.2"}}
                ],
            }
        ],
    }
    out = deidentify(study, CTX)
    check_resource(out)
    assert study_uid not in dumps(out)
    new_study = out["identifier"][0]["value"]
    new_series = out["series"][0]["uid"]
    assert re.fullmatch(r"urn:oid:2\.25\.[1-9]\d*", new_study)
    assert re.fullmatch(r"2\.25\.[1-9]\d*", new_series) and len(new_series) <= 64
    # the same UID gets the same replacement wherever it appears
    assert (
        deidentify({**study, "identifier": [{"system": "urn:dicom:uid", "value": f"urn:oid:{series_uid}"}]}, CTX)[
            "identifier"
        ][0]["value"]
        == f"urn:oid:{new_series}"
    )


def test_family_history_names_and_dates_of_relatives() -> None:
    history = {
        "resourceType": "FamilyMemberHistory",
        "id": "fh-1",
        "status": "completed",
        "patient": {"reference": "Patient/cn-patient-example"},
        "relationship": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "code": "MTH"}]},
        "name": "李桂兰",
        "bornDate": "1925-03-08",
        "note": [{"text": "李桂兰 65 岁时确诊高血压"}],
    }
    out = deidentify(history, CTX)
    check_resource(out)
    assert "name" not in out and out["bornDate"] == "1925"
    assert out["note"][0]["text"] == f"{REDACTED} 65 岁时确诊高血压"


def test_bad_input_raises_clear_errors() -> None:
    with pytest.raises(DeidentificationError, match="unknown resource type"):
        deidentify({"resourceType": "Patient2"}, CTX)
    with pytest.raises(DeidentificationError, match=r"Patient\.nickname: not an element"):
        deidentify({"resourceType": "Patient", "nickname": "小王"}, CTX)
    with pytest.raises(DeidentificationError, match="expected a resource"):
        deidentify(["not", "a", "resource"], CTX)  # type: ignore[arg-type]
    with pytest.raises(DeidentificationError, match="expects a Bundle"):
        deidentify_bundle(example("cn-patient-example"), CTX)
    with pytest.raises(DeidentificationError, match=r"Observation\.subject\.reference: cannot de-identify"):
        deidentify({"resourceType": "Observation", "subject": {"reference": "not a reference"}}, CTX)
    with pytest.raises(DeidentificationError, match="not a FHIR date"):
        deidentify({"resourceType": "Patient", "birthDate": "31/12/1949"}, CTX)
    with pytest.raises(TypeError):
        deidentify(example("cn-patient-example"), "key")  # type: ignore[arg-type]
