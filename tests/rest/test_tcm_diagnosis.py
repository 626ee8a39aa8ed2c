"""A TCM constitution diagnosis request (issue 6, item 3): the clinic A asks the TCM hospital B
to identify a patient's constitution; B accepts directly, scores the patient's questionnaire with
``$assess-constitution`` for that request, and the finding — an Observation basedOn the request —
reaches A, which could not see B's records about the patient otherwise. In-process, SQLite and
PostgreSQL, with real tokens of each institution."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.rest.workflow_network import A, B, Net, consent, diagnosis_request, example, network


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    yield from network(request, tmp_path_factory)


def test_a_constitution_diagnosis_goes_back_to_the_requester(net: Net) -> None:
    n = net
    patient = n.post("a-doc", {"resourceType": "Patient", "name": [{"family": "Sun"}], "gender": "female",
                               "birthDate": "1970-04-02"})["id"]  # fmt: skip
    n.post("a-doc", consent(patient, B))
    sr, task = diagnosis_request(n, "a-doc", A, B, patient)
    assert sr["identifier"][-1]["value"].startswith("ZD-")  # a diagnosis request's number
    for step in ("accepted", "scheduled", "in-progress"):  # no pre-review for a diagnosis request
        assert n.move("b-expert", task["id"], step).status_code == 200, step

    questionnaire = example("qr-ccmq-2009-example")
    questionnaire.pop("id")
    questionnaire["subject"] = {"reference": f"Patient/{patient}"}
    questionnaire["basedOn"] = [{"reference": f"ServiceRequest/{sr['id']}"}]
    scored = n.call("b-expert", "POST", "QuestionnaireResponse/$assess-constitution?persist=true", questionnaire)
    assert scored.status_code == 201, scored.get_json()
    finding = scored.get_json()
    assert finding["basedOn"] == [{"reference": f"ServiceRequest/{sr['id']}"}]
    assert n.move("b-expert", task["id"], "reported").status_code == 200

    seen = n.call("a-doc", "GET", f"Observation?based-on=ServiceRequest/{sr['id']}").get_json()
    [result] = [e["resource"] for e in seen["entry"]]
    assert result["id"] == finding["id"] and len(result["component"]) == 9
    # B's questionnaire itself is its own clinical record: not shared back
    assert n.call("a-doc", "GET", f"QuestionnaireResponse?subject=Patient/{patient}").get_json().get("entry", []) == []
