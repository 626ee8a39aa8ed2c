"""A cross-institution examination (issue 6, item 5; R10 跨院医技检查): the clinic A asks the
hospital B for a chest CT, B accepts directly and performs it, and the report and the images come
back to A through the request — not to an institution outside it. In-process, SQLite and
PostgreSQL, with real tokens."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rest.workflow_network import A, B, Net, consent, network, requested

SERVICE = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"
OUTSIDER = "wf-outsider"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory, joined=((OUTSIDER, "outsider-doc", "requesting-doctor"),))


def test_an_exam_at_another_institution_comes_back_with_its_images(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Zheng"}], "gender": "male"})["id"]
    n.post("a-doc", consent(patient, B))
    exam = {"coding": [{"system": SERVICE, "code": "cross-institution-exam", "display": "跨院医技检查"}],
            "text": "胸部CT平扫 Chest CT without contrast"}  # fmt: skip
    sr, task = requested(n, "a-doc", {
        "resourceType": "ServiceRequest", "status": "active", "intent": "order",
        "category": [{"coding": [{"system": SERVICE, "code": "cross-institution-exam"}]}], "code": exam,
        "subject": {"reference": f"Patient/{patient}"}, "requester": {"reference": f"Organization/{A}"},
        "performer": [{"reference": f"Organization/{B}"}], "reasonCode": [{"text": "咳嗽三周 Cough for 3 weeks"}],
    })  # fmt: skip
    for step in ("accepted", "scheduled", "in-progress"):  # no pre-review: B answers directly
        assert n.move("b-expert", task["id"], step).status_code == 200, step
    basis = {"basedOn": [{"reference": f"ServiceRequest/{sr['id']}"}], "subject": {"reference": f"Patient/{patient}"}}
    study = n.post("b-expert", {
        "resourceType": "ImagingStudy", "status": "available", **basis, "started": "2026-12-07T10:00:00+08:00",
        "numberOfSeries": 1, "numberOfInstances": 120,
        "series": [{"uid": "1.2.826.0.1.3680043.8.498.1", "number": 1, "numberOfInstances": 120,
                    "modality": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "CT"}}],
    })  # fmt: skip
    report = n.post("b-expert", {
        "resourceType": "DiagnosticReport", "status": "final", **basis,
        "code": {"coding": [{"system": "http://loinc.org", "code": "24627-2", "display": "Chest CT"}]},
        "effectiveDateTime": "2026-12-07T10:00:00+08:00", "performer": [{"reference": f"Organization/{B}"}],
        "imagingStudy": [{"reference": f"ImagingStudy/{study['id']}"}], "conclusion": "双肺未见明显异常。",
    })  # fmt: skip
    assert n.move("b-expert", task["id"], "reported").status_code == 200

    reports = n.call("a-doc", "GET", f"DiagnosticReport?based-on=ServiceRequest/{sr['id']}").get_json()
    assert [e["resource"]["id"] for e in reports["entry"]] == [report["id"]]
    studies = n.call("a-doc", "GET", f"ImagingStudy?basedon=ServiceRequest/{sr['id']}").get_json()
    assert [e["resource"]["id"] for e in studies["entry"]] == [study["id"]]
    assert n.call("a-doc", "GET", f"ImagingStudy/{study['id']}").get_json()["series"][0]["modality"]["code"] == "CT"
    for kind, res_id in (("DiagnosticReport", report["id"]), ("ImagingStudy", study["id"])):
        assert n.call("outsider-doc", "GET", f"{kind}/{res_id}").status_code == 404  # not a party to it
