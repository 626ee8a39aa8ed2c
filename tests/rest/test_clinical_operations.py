"""The clinical operations over HTTP (Flask test client), on SQLite and PostgreSQL.

``$assess-constitution`` (QuestionnaireResponse, type and instance level), ``$interpret-meridian``
and ``$import-aecg`` (Observation): end to end, persist true/false, errors with FHIRPath
locations, and that nothing is stored when the answer is 422.
"""

from __future__ import annotations

import base64
import json
import uuid

import pytest
from lxml import etree

from fhir_server.clinical.ccmq import CCMQ_2009, CCMQ_2025
from tests.conftest import shared_data
from tests.unit.test_tcm_meridian import measurement as _measurement
from tests.unit.test_tcm_meridian import values as _point_values

JSON = "application/fhir+json"
QR_URL = "/fhir/QuestionnaireResponse/$assess-constitution"
V3 = "{urn:hl7-org:v3}"


def _post(client, url: str, resource: dict | None = None, **kw):  # type: ignore[no-untyped-def]
    data = json.dumps(resource) if resource is not None else None
    return client.post(url, data=data, content_type=JSON, **kw)


def _patient(client, gender: str | None) -> str:  # type: ignore[no-untyped-def]
    body: dict = {"resourceType": "Patient", "name": [{"family": "张", "given": ["三"]}]}
    if gender:
        body["gender"] = gender
    resp = _post(client, "/fhir/Patient", body)
    assert resp.status_code == 201
    return resp.get_json()["id"]


def _count(client, query: str) -> int:  # type: ignore[no-untyped-def]
    resp = client.get(f"/fhir/{query}{'&' if '?' in query else '?'}_summary=count")
    assert resp.status_code == 200, resp.get_json()
    return resp.get_json()["total"]


def _response(subject: str, answers: dict[str, int], form=CCMQ_2009, **extra) -> dict:  # type: ignore[no-untyped-def]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": form.questionnaire_url,
        "status": "completed",
        "subject": {"reference": subject},
        "authored": "2025-03-01T10:00:00+08:00",
        "item": [{"linkId": c, "answer": [{"valueCoding": {"code": str(v)}}]} for c, v in answers.items()],
        **extra,
    }


def _answers_2009(sex: str, **given: int) -> dict[str, int]:
    skip = "q41" if sex == "male" else "q42"
    out = {i.code: 1 for i in CCMQ_2009.items if i.code != skip}
    out.update(given)
    return out


# 平和 75, 气虚 56.25 (see tests/unit/test_tcm_constitution.py for the arithmetic)
QI_DEFICIENT = dict(q01=4, q02=4, q03=3, q06=3, q09=4, q10=3, q11=3, q12=3, q13=4, q14=2)


def _scores(obs: dict) -> dict[str, tuple[float, str]]:
    return {
        c["code"]["coding"][0]["code"]: (c["valueQuantity"]["value"], c["interpretation"][0]["coding"][0]["code"])
        for c in obs["component"]
    }


def _issues(resp) -> list[tuple[str, list[str]]]:  # type: ignore[no-untyped-def]
    return [(i["diagnostics"], i.get("expression", [])) for i in resp.get_json()["issue"]]


# ----------------------------------------------------------------------------- Questionnaires
def test_questionnaires_are_installed(client) -> None:
    for form, n in ((CCMQ_2009, 61), (CCMQ_2025, 27)):
        resp = client.get(f"/fhir/Questionnaire/{form.questionnaire_id}")
        assert resp.status_code == 200
        assert resp.get_json()["url"] == form.questionnaire_url
        assert len(resp.get_json()["item"]) == n
    found = client.get("/fhir/Questionnaire", query_string={"url": CCMQ_2025.questionnaire_url}).get_json()
    assert found["total"] == 1 if "total" in found else len(found["entry"]) == 1


# ----------------------------------------------------------------------------- $assess-constitution
def test_assess_without_persist_stores_nothing(client) -> None:
    pid = _patient(client, "male")
    resp = _post(client, QR_URL, _response(f"Patient/{pid}", _answers_2009("male", **QI_DEFICIENT)))
    assert resp.status_code == 200, resp.get_json()
    obs = resp.get_json()
    assert "id" not in obs
    assert obs["code"]["coding"][0]["code"] == "constitution-assessment"
    assert obs["method"]["coding"][0]["code"] == "zyyxh-t157-2009"
    assert obs["subject"] == {"reference": f"Patient/{pid}"}
    assert obs["effectiveDateTime"] == "2025-03-01T10:00:00+08:00"
    assert "derivedFrom" not in obs  # an unstored response without identifier cannot be referenced
    assert _scores(obs) == {
        "A": (75.0, "no"),
        "B": (56.25, "yes"),
        "C": (7.14, "no"),
        **{t: (0.0, "no") for t in "DEFGHI"},
    }
    assert _count(client, f"Observation?subject=Patient/{pid}") == 0
    assert _count(client, f"QuestionnaireResponse?subject=Patient/{pid}") == 0


def test_assess_persist_stores_response_and_observation(client) -> None:
    pid = _patient(client, "female")
    qr = _response(f"Patient/{pid}", _answers_2009("female", **QI_DEFICIENT), identifier={"value": "form-7"})
    params = {
        "resourceType": "Parameters",
        "parameter": [{"name": "questionnaireResponse", "resource": qr}, {"name": "persist", "valueBoolean": True}],
    }
    resp = _post(client, QR_URL, params)
    assert resp.status_code == 201, resp.get_json()
    obs = resp.get_json()
    assert resp.headers["Location"].startswith(f"http://testserver/fhir/Observation/{obs['id']}/_history/1")
    assert client.get(f"/fhir/Observation/{obs['id']}").get_json() == obs
    qr_ref = obs["derivedFrom"][0]["reference"]
    stored_qr = client.get(f"/fhir/{qr_ref}").get_json()
    assert stored_qr["item"] == qr["item"] and stored_qr["identifier"] == {"value": "form-7"}
    assert _count(client, f"QuestionnaireResponse?subject=Patient/{pid}") == 1
    assert _scores(obs)["B"] == (56.25, "yes")


def test_assess_instance_level_uses_the_stored_response(client) -> None:
    pid = _patient(client, "male")
    created = _post(client, "/fhir/QuestionnaireResponse", _response(f"Patient/{pid}", _answers_2009("male")))
    qr_id = created.get_json()["id"]
    url = f"/fhir/QuestionnaireResponse/{qr_id}/$assess-constitution"
    resp = client.post(url, query_string={"persist": "true"})
    assert resp.status_code == 201, resp.get_json()
    obs = resp.get_json()
    assert obs["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{qr_id}"}]
    # all answers 1: 平和 = 4 forward items... q01 1, q06 1 and six reversed 5s: 32 → 75, biased all 0
    assert _scores(obs)["A"] == (75.0, "yes")
    assert _count(client, f"QuestionnaireResponse?subject=Patient/{pid}") == 1  # not stored twice
    # without persist, the stored response is referenced too
    resp = client.post(url)
    assert resp.status_code == 200 and resp.get_json()["derivedFrom"] == obs["derivedFrom"]
    assert client.post("/fhir/QuestionnaireResponse/nope/$assess-constitution").status_code == 404


def test_assess_body_matching_a_stored_response_is_not_stored_again(client) -> None:
    pid = _patient(client, "male")
    stored = _post(client, "/fhir/QuestionnaireResponse", _response(f"Patient/{pid}", _answers_2009("male")))
    resp = _post(client, QR_URL + "?persist=true", stored.get_json())
    assert resp.status_code == 201
    assert resp.get_json()["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{stored.get_json()['id']}"}]
    assert _count(client, f"QuestionnaireResponse?subject=Patient/{pid}") == 1


def test_assess_2025_short_form(client) -> None:
    pid = _patient(client, "female")
    answers = {i.code: 1 for i in CCMQ_2025.items if i.code != "s18"}
    answers.update(s01=5, s15=3, s16=3, s17=2)  # 湿热 (8−3)/12 = 41.67 是
    resp = _post(client, QR_URL, _response(f"Patient/{pid}", answers, form=CCMQ_2025))
    assert resp.status_code == 200, resp.get_json()
    obs = resp.get_json()
    assert obs["method"]["coding"][0]["code"] == "gbt-46939-2025"
    assert _scores(obs)["F"] == (41.67, "yes")
    assert _scores(obs)["A"] == (100.0, "no")


def test_assess_sex_comes_from_the_patient(client) -> None:
    pid = _patient(client, "female")
    # a woman must answer q41; the answers omit it (they were filled in as for a man)
    resp = _post(client, QR_URL + "?persist=true", _response(f"Patient/{pid}", _answers_2009("male")))
    assert resp.status_code == 422
    assert _issues(resp) == [
        ("Item q41 (带下色黄(白带颜色发黄)) is not answered", ["QuestionnaireResponse.item.where(linkId='q41')"])
    ]
    assert _count(client, f"QuestionnaireResponse?subject=Patient/{pid}") == 0
    # contradicting the Patient is refused
    resp = _post(client, QR_URL + "?sex=male", _response(f"Patient/{pid}", _answers_2009("male")))
    assert resp.status_code == 422
    assert "contradicts" in resp.get_json()["issue"][0]["diagnostics"]


def test_assess_sex_parameter_when_the_subject_cannot_be_read(client) -> None:
    qr = _response(f"Patient/{uuid.uuid4()}", _answers_2009("male", q41=5))  # man who also answered q41
    resp = _post(client, QR_URL, qr)
    assert resp.status_code == 422
    assert "sex" in resp.get_json()["issue"][0]["diagnostics"]
    assert resp.get_json()["issue"][0]["expression"] == ["QuestionnaireResponse.subject"]
    resp = _post(client, QR_URL + "?sex=male", qr)
    assert resp.status_code == 200
    assert _scores(resp.get_json())["F"] == (0.0, "no")  # q41 ignored for a man
    pid = _patient(client, "unknown")  # readable, but neither male nor female
    resp = _post(client, QR_URL, _response(f"Patient/{pid}", _answers_2009("male")))
    assert resp.status_code == 422 and "unknown" in resp.get_json()["issue"][0]["diagnostics"]


def test_assess_errors_locate_the_item_and_store_nothing(client) -> None:
    pid = _patient(client, "male")
    answers = _answers_2009("male")
    answers["q04"] = 6
    del answers["q10"]
    before = (_count(client, "QuestionnaireResponse"), _count(client, "Observation"))
    resp = _post(client, QR_URL + "?persist=true", _response(f"Patient/{pid}", answers))
    assert resp.status_code == 422
    assert resp.get_json()["resourceType"] == "OperationOutcome"
    issues = _issues(resp)
    assert [e for _, e in issues] == [
        ["QuestionnaireResponse.item[3].answer[0]"],
        ["QuestionnaireResponse.item.where(linkId='q10')"],
    ]
    assert "from 1 to 5" in issues[0][0]
    assert (_count(client, "QuestionnaireResponse"), _count(client, "Observation")) == before


@pytest.mark.parametrize(
    ("query", "body_change", "status"),
    [
        ("?sex=other", None, 400),
        ("?persist=maybe", None, 400),
        ("?color=red", None, 400),
        ("", {"questionnaire": "http://example.org/Questionnaire/x"}, 422),
        ("", {"status": "not-a-status"}, 422),
    ],
)
def test_assess_bad_requests(client, query: str, body_change: dict | None, status: int) -> None:
    qr = _response("Patient/x", _answers_2009("male"))
    qr.update(body_change or {})
    resp = _post(client, QR_URL + query, qr)
    assert resp.status_code == status, resp.get_json()


def test_assess_needs_a_response(client) -> None:
    assert _post(client, QR_URL).status_code == 400
    assert _post(client, QR_URL, {"resourceType": "Patient"}).status_code == 400
    assert client.post("/fhir/Patient/$assess-constitution").status_code == 404


# ----------------------------------------------------------------------------- $interpret-meridian


def test_interpret_meridian(client) -> None:
    before = _count(client, "Observation")
    resp = _post(client, "/fhir/Observation/$interpret-meridian", _measurement(_point_values(LU_L=120, LU_R=30)))
    assert resp.status_code == 200, resp.get_json()
    comps = resp.get_json()["component"]
    interp = {c["code"]["coding"][0]["code"]: c["interpretation"][0]["coding"][0]["code"] for c in comps[:24]}
    assert interp["LU-L"] == "excess" and interp["LU-R"] == "deficient" and interp["HT-L"] == "balanced"
    summary = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in comps[24:27]}
    assert summary == {"meridian-mean": 61.25, "meridian-band-low": 40.83, "meridian-band-high": 81.67}
    assert [c["code"]["coding"][0]["code"] for c in comps[27:]] == ["LU"]
    assert _count(client, "Observation") == before  # nothing stored


def test_interpret_meridian_absolute_band_in_parameters(client) -> None:
    params = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "observation", "resource": _measurement(_point_values(LI_L=91, LI_R=59))},
            {"name": "absoluteWidth", "valueDecimal": 15},
        ],
    }
    # all points 60 except LI: sum = 22 × 60 + 150 = 1470 → mean 61.25; ±15 → 46.25 … 76.25
    resp = _post(client, "/fhir/Observation/$interpret-meridian", params)
    assert resp.status_code == 200, resp.get_json()
    comps = resp.get_json()["component"]
    summary = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in comps[24:27]}
    assert summary == {"meridian-mean": 61.25, "meridian-band-low": 46.25, "meridian-band-high": 76.25}
    interp = {c["code"]["coding"][0]["code"]: c["interpretation"][0]["coding"][0]["code"] for c in comps[:24]}
    assert (interp["LI-L"], interp["LI-R"]) == ("excess", "balanced")


def test_interpret_meridian_errors(client) -> None:
    obs = _measurement(_point_values())
    obs["component"][2]["valueQuantity"]["value"] = -5
    del obs["component"][10]
    resp = _post(client, "/fhir/Observation/$interpret-meridian", obs)
    assert resp.status_code == 422
    issues = _issues(resp)
    assert issues[0][1] == ["Observation.component[2]"]
    assert "SI-L" in issues[1][0]  # POINTS[10] is SI-L
    resp = _post(client, "/fhir/Observation/$interpret-meridian?relativeWidth=2", _measurement(_point_values()))
    assert resp.status_code == 422
    resp = _post(client, "/fhir/Observation/$interpret-meridian?relativeWidth=abc", _measurement(_point_values()))
    assert resp.status_code == 400


# ----------------------------------------------------------------------------- $import-aecg
def _aecg(name: str = "subject1_0.xml") -> bytes:
    return (shared_data("aecg", "fda-aecg-python") / name).read_bytes()


def _import(client, xml: bytes, subject: str | None, content_type: str = "application/hl7-v3+xml"):  # type: ignore[no-untyped-def]
    query = {"subject": subject} if subject else {}
    return client.post("/fhir/Observation/$import-aecg", data=xml, content_type=content_type, query_string=query)


def _stored_counts(services) -> tuple[int, int, int]:  # type: ignore[no-untyped-def]
    return tuple(services.repo.count(t) for t in ("Binary", "DocumentReference", "Observation"))  # type: ignore[return-value]


@pytest.mark.parametrize("content_type", ["application/hl7-v3+xml", "application/xml"])
def test_import_aecg_stores_binary_document_and_observation(client, services, content_type: str) -> None:
    xml = _aecg()
    pid = _patient(client, "male")
    before = _stored_counts(services)
    resp = _import(client, xml, f"Patient/{pid}", content_type)
    assert resp.status_code == 201, resp.get_json()
    obs = resp.get_json()
    assert resp.headers["Location"].startswith(f"http://testserver/fhir/Observation/{obs['id']}/")
    assert obs["code"]["coding"][0]["code"] == "11524-6"
    assert obs["subject"] == {"reference": f"Patient/{pid}"}
    assert obs["effectiveDateTime"] == "2002-11-22T09:10:00+08:00"
    assert sum("valueSampledData" in c for c in obs["component"]) == 12
    assert obs["component"][0]["valueSampledData"]["period"] == 2
    measured = {c["code"]["coding"][0]["code"]: c["valueQuantity"]["value"] for c in obs["component"][12:]}
    assert measured["8625-6"] == 148 and measured["8636-3"] == 443  # PR and QTc of the representative beat
    docref = client.get(f"/fhir/{obs['derivedFrom'][0]['reference']}").get_json()
    assert docref["resourceType"] == "DocumentReference"
    assert docref["subject"] == {"reference": f"Patient/{pid}"}
    attachment = docref["content"][0]["attachment"]
    assert attachment["size"] == len(xml)
    stored = client.get(f"/fhir/{attachment['url']}").get_json()
    assert stored["contentType"] == "application/hl7-v3+xml"
    assert base64.b64decode(stored["data"]) == xml
    assert _stored_counts(services) == tuple(n + 1 for n in before)
    # the Observation is found by patient and code
    found = client.get("/fhir/Observation", query_string={"subject": f"Patient/{pid}", "code": "11524-6"})
    assert [e["resource"]["id"] for e in found.get_json()["entry"]] == [obs["id"]]


def test_import_aecg_below_the_minimums_is_422_and_stores_nothing(client, services) -> None:
    root = etree.fromstring(_aecg())
    sequence_set = root.find(f"{V3}component/{V3}series/{V3}component/{V3}sequenceSet")
    for comp in list(sequence_set)[-3:]:  # drop aVR, aVL, aVF
        sequence_set.remove(comp)
    for value in sequence_set.iter(f"{V3}value"):
        increment = value.find(f"{V3}increment")
        if increment is not None:
            increment.set("value", "0.004")  # 250 Hz
        digits = value.find(f"{V3}digits")
        if digits is not None:
            digits.text = " ".join(digits.text.split()[:1000])  # 4 s
    pid = _patient(client, "male")
    before = _stored_counts(services)
    resp = _import(client, etree.tostring(root), f"Patient/{pid}")
    assert resp.status_code == 422
    diagnostics = [d for d, _ in _issues(resp)]
    assert diagnostics[0] == "the sampling rate is 250 Hz; at least 500 Hz is required"
    assert sum("lasts 4 s" in d for d in diagnostics) == 9
    assert diagnostics[-1] == "9 of the 12 standard leads are present; missing: aVR, aVL, aVF"
    assert _stored_counts(services) == before


def test_import_aecg_minimal_documents_are_422(client) -> None:
    pid = _patient(client, None)
    for name in ("minimum_aecg.xml", "empty.xml"):
        resp = _import(client, _aecg(name), f"Patient/{pid}")
        assert resp.status_code == 422, name


def test_import_aecg_request_errors(client, services) -> None:
    pid = _patient(client, "male")
    before = _stored_counts(services)
    assert _import(client, b"<AnnotatedECG xmlns='urn:hl7-org:v3'><component>", f"Patient/{pid}").status_code == 400
    assert _import(client, b"<Patient xmlns='http://hl7.org/fhir'/>", f"Patient/{pid}").status_code == 400
    assert _import(client, _aecg(), None).status_code == 400
    assert _import(client, _aecg(), "Group/1").status_code == 400
    missing = _import(client, _aecg(), f"Patient/{uuid.uuid4()}")
    assert missing.status_code == 422 and "subject" in missing.get_json()["issue"][0]["diagnostics"]
    assert _import(client, _aecg(), f"Patient/{pid}", content_type="text/plain").status_code == 415
    assert _import(client, _aecg(), f"Patient/{pid}", content_type=JSON).status_code == 400  # not JSON
    assert _import(client, b"", f"Patient/{pid}").status_code == 400
    resp = client.post(
        "/fhir/Observation/$import-aecg",
        data=_aecg(),
        content_type="application/hl7-v3+xml",
        query_string={"subject": f"Patient/{pid}", "timezone": "Beijing"},
    )
    assert resp.status_code == 400
    assert _stored_counts(services) == before


def _import_parameters(subject: str, xml: bytes, content_type: str = "application/hl7-v3+xml") -> dict:
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "subject", "valueReference": {"reference": subject}},
            {
                "name": "document",
                "valueAttachment": {"contentType": content_type, "data": base64.b64encode(xml).decode()},
            },
        ],
    }


def test_import_aecg_from_a_parameters_body(client, services) -> None:
    pid = _patient(client, "male")
    resp = client.post("/fhir/Observation/$import-aecg", json=_import_parameters(f"Patient/{pid}", _aecg()))
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["subject"] == {"reference": f"Patient/{pid}"}
    before = _stored_counts(services)
    for body in (
        _import_parameters(f"Patient/{pid}", _aecg(), content_type="text/plain"),
        {**_import_parameters(f"Patient/{pid}", _aecg()), "parameter": [{"name": "subject", "valueReference": {}}]},
        {"resourceType": "Parameters", "parameter": [{"name": "document", "valueString": "x"}]},
        {"resourceType": "Observation"},
    ):
        assert client.post("/fhir/Observation/$import-aecg", json=body).status_code == 400, body
    assert _stored_counts(services) == before


def test_import_aecg_inside_a_transaction_with_the_patient_it_creates(client, services) -> None:
    patient_url = f"urn:uuid:{uuid.uuid4()}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"fullUrl": patient_url, "resource": {"resourceType": "Patient", "gender": "male"},
             "request": {"method": "POST", "url": "Patient"}},
            {"resource": _import_parameters(patient_url, _aecg()),
             "request": {"method": "POST", "url": "Observation/$import-aecg"}},
        ],
    }  # fmt: skip
    resp = client.post("/fhir", json=bundle)
    assert resp.status_code == 200, resp.get_json()
    patient, observation = (
        e["response"]["location"].split("/fhir/")[1].split("/_history")[0] for e in resp.get_json()["entry"]
    )
    assert client.get(f"/fhir/{observation}").get_json()["subject"]["reference"] == patient
    # a failing import rolls the whole transaction back, the Patient too
    before = services.repo.count("Patient"), _stored_counts(services)
    bundle["entry"][1]["resource"] = _import_parameters(patient_url, _aecg("minimum_aecg.xml"))
    assert client.post("/fhir", json=bundle).status_code == 422
    assert (services.repo.count("Patient"), _stored_counts(services)) == before


# ----------------------------------------------------------------------------- CapabilityStatement
def test_operations_are_declared_on_their_types(client) -> None:
    statement = client.get("/fhir/metadata").get_json()
    ops = {
        r["type"]: {o["name"]: o["definition"] for o in r.get("operation", [])}
        for r in statement["rest"][0]["resource"]
    }
    base = "http://fhir.telefhir.cn/OperationDefinition/"
    assert ops["QuestionnaireResponse"]["assess-constitution"] == base + "assess-constitution"
    assert ops["Observation"]["interpret-meridian"] == base + "interpret-meridian"
    assert ops["Observation"]["import-aecg"] == base + "import-aecg"
    assert "assess-constitution" not in ops["Patient"] and "import-aecg" not in ops["Patient"]
    for op in ("assess-constitution", "interpret-meridian", "import-aecg"):
        definition = client.get(f"/fhir/OperationDefinition/{op}")
        assert definition.status_code == 200 and definition.get_json()["url"] == base + op
