"""The consultation report (issue 6, item 1): drafted from the request and the experts' opinions,
reviewed, published as a signed document Bundle with its DocumentReference and Provenance in one
transaction, versioned on amendment, and received by the requesting institution exactly as
signed. In-process, SQLite and PostgreSQL, with real tokens of the requester A and the expert's
institution B."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
from joserfc.jwk import KeySet

from fhir_server.security.document_signature import SignatureInvalid, verify
from tests.rest.workflow_network import B, Net, consultation, evaluation, example, network

REPORT = "http://fhir.telefhir.cn/StructureDefinition/consultation-report"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def net(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    for n in network(request, tmp_path_factory):
        expert = {"resourceType": "Practitioner", "id": "b-expert", "name": [{"text": "李明华"}]}
        assert n.call("plat", "PUT", "Practitioner/b-expert", expert).status_code == 201  # the expert's fhirUser
        role = {"resourceType": "PractitionerRole", "id": "b-expert-role", "practitioner": {"reference":
                "Practitioner/b-expert"}, "organization": {"reference": f"Organization/{B}"}}  # fmt: skip
        assert n.call("plat", "PUT", "PractitionerRole/b-expert-role", role).status_code == 201
        yield n


def _keys(n: Net) -> KeySet:
    resp = n.client.get("/document-keys")  # public: a recipient verifies without an account here
    assert resp.status_code == 200 and resp.content_type == "application/jwk-set+json"
    return KeySet.import_key_set(resp.get_json())


def _opinion(n: Net, request: dict[str, Any]) -> str:
    opinion = example("consultation-opinion-example")
    opinion.pop("id")
    opinion["basedOn"] = [{"reference": f"ServiceRequest/{request['id']}"}]
    opinion["subject"] = request["subject"]
    opinion["performer"] = [{"reference": "PractitionerRole/b-expert-role"}]
    opinion.pop("derivedFrom")
    return str(n.post("b-expert", opinion)["id"])


def _finalize(n: Net, composition_id: str, conclusion: str) -> dict[str, Any]:
    composition = n.call("b-expert", "GET", f"Composition/{composition_id}").get_json()
    for section in composition["section"]:
        if section["title"] in ("会诊结论", "诊疗建议"):
            section["text"]["div"] = f'<div xmlns="http://www.w3.org/1999/xhtml">{conclusion}</div>'
    composition["status"] = "final"
    composition["attester"] = [{"mode": "professional", "time": "2026-12-07T10:00:00Z",
                                "party": {"reference": "PractitionerRole/b-expert-role"}}]  # fmt: skip
    resp = n.call("b-expert", "PUT", f"Composition/{composition_id}", composition)
    assert resp.status_code == 200, resp.get_json()
    return dict(resp.get_json())


def test_draft_review_publish_and_receive_the_report(net: Net) -> None:
    n = net
    _, request = consultation(n)
    refused = n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$draft-report")
    assert refused.status_code == 409 and "no expert opinion" in refused.get_json()["issue"][0]["diagnostics"]
    opinion = _opinion(n, request)
    assert n.call("a-doc", "GET", f"Observation/{opinion}").status_code == 200  # opinions reach the requester

    drafted = n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$draft-report")
    assert drafted.status_code == 201, [(i["diagnostics"], i.get("expression")) for i in drafted.get_json()["issue"]]
    draft = drafted.get_json()
    assert draft["status"] == "preliminary" and draft["meta"]["profile"] == [REPORT]
    assert draft["author"] == [{"reference": "PractitionerRole/b-expert-role"}]
    opinions = next(s for s in draft["section"] if s["title"] == "专家意见")
    assert opinions["entry"] == [{"reference": f"Observation/{opinion}"}]
    assert draft["event"][0]["detail"] == [{"reference": f"ServiceRequest/{request['id']}"}]

    early = n.call("b-expert", "POST", f"Composition/{draft['id']}/$document?persist=true")
    assert early.status_code == 422 and "once final" in early.get_json()["issue"][0]["diagnostics"]
    preview = n.call("b-expert", "GET", f"Composition/{draft['id']}/$document")
    assert preview.status_code == 200 and "signature" not in preview.get_json()

    _finalize(n, draft["id"], "不寐，心脾两虚证。")
    assert n.call("a-doc", "POST", f"Composition/{draft['id']}/$document?persist=true").status_code == 403
    published = n.call("b-expert", "POST", f"Composition/{draft['id']}/$document?persist=true")
    assert published.status_code == 200, published.get_json()
    bundle = published.get_json()
    assert bundle["type"] == "document" and bundle["entry"][0]["resource"]["resourceType"] == "Composition"
    included = {e["resource"]["resourceType"] for e in bundle["entry"]}
    assert included == {"Composition", "Patient", "PractitionerRole", "Organization", "ServiceRequest", "Observation"}
    # (the opinion's performer is not a reference of the Composition's: a document holds what it references)
    assert verify(bundle, _keys(n))
    bundle_path = published.headers["Location"].split("/fhir/")[1].split("/_history")[0]

    # the requester receives the document exactly as signed, and finds it by its index entry
    received = n.call("a-doc", "GET", bundle_path)
    assert received.status_code == 200
    assert received.get_json() == bundle
    verify(received.get_json(), _keys(n))
    refs = n.call("a-doc", "GET", f"DocumentReference?related=Composition/{draft['id']}").get_json()
    [reference] = [e["resource"] for e in refs["entry"]]
    assert reference["status"] == "current" and reference["content"][0]["attachment"]["url"] == bundle_path
    assert reference["authenticator"] == {"reference": "PractitionerRole/b-expert-role"}
    provenance = n.call("plat", "GET", f"Provenance?target={bundle_path}").get_json()["entry"][0]["resource"]
    assert provenance["activity"]["coding"][0]["code"] == "published"
    assert provenance["signature"][0]["data"] == bundle["signature"]["data"]

    tampered = copy.deepcopy(bundle)
    tampered["entry"][0]["resource"]["section"][2]["text"]["div"] = '<div xmlns="http://www.w3.org/1999/xhtml">x</div>'
    with pytest.raises(SignatureInvalid):
        verify(tampered, _keys(n))

    # an amendment is published as a new version that replaces the first
    amended = _finalize(n, draft["id"], "不寐，心脾两虚证；兼肝郁。")
    amended["status"] = "amended"
    assert n.call("b-expert", "PUT", f"Composition/{draft['id']}", amended).status_code == 200
    again = n.call("b-expert", "POST", f"Composition/{draft['id']}/$document?persist=true")
    assert again.status_code == 200, again.get_json()
    versions = n.call("a-doc", "GET", f"DocumentReference?related=Composition/{draft['id']}&_sort=date").get_json()
    first, second = [e["resource"] for e in versions["entry"]]
    assert first["status"] == "superseded" and second["status"] == "current" and second["docStatus"] == "amended"
    assert second["relatesTo"] == [{"code": "replaces", "target": {"reference": f"DocumentReference/{first['id']}"}}]
    assert n.call("a-doc", "GET", bundle_path).get_json() == bundle  # the first publication stays as it was


def test_document_refuses_what_it_does_not_do(net: Net) -> None:
    n = net
    resp = n.call("b-expert", "GET", "Composition/nope/$document")
    assert resp.status_code == 404
    _, request = consultation(n)
    _opinion(n, request)
    draft = n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$draft-report").get_json()
    graph = n.call("b-expert", "GET", f"Composition/{draft['id']}/$document?graph=GraphDefinition/x")
    assert graph.status_code == 400 and "not supported" in graph.get_json()["issue"][0]["diagnostics"]


def test_publishing_moves_the_reviewed_task_to_published(net: Net) -> None:
    n = net
    task, request = consultation(n)
    assert n.move("p-sched", task, "pre-reviewed").status_code == 200
    for step in ("accepted", "scheduled", "in-progress", "reported", "reviewed"):
        assert n.move("b-expert", task, step).status_code == 200, step
    _opinion(n, request)
    draft = n.call("b-expert", "POST", f"ServiceRequest/{request['id']}/$draft-report").get_json()
    _finalize(n, draft["id"], "不寐。")
    assert n.call("b-expert", "POST", f"Composition/{draft['id']}/$document?persist=true").status_code == 200
    moved = n.call("a-doc", "GET", f"Task/{task}").get_json()  # the requester sees it published
    assert moved["businessStatus"]["coding"][0]["code"] == "published" and moved["status"] == "completed"
    [output] = [o for o in moved["output"] if o["type"]["coding"][0]["code"] == "report"]
    reference = n.call("a-doc", "GET", output["valueReference"]["reference"]).get_json()
    assert reference["status"] == "current" and reference["context"]["related"][0] == {
        "reference": f"Composition/{draft['id']}"
    }

    # the requester evaluates: the step carries a complete evaluation (R3)
    bare = n.move("a-doc", task, "evaluated")
    assert bare.status_code == 422 and "carries the evaluation" in bare.get_json()["issue"][0]["diagnostics"]
    output = evaluation(n, "a-doc", request["subject"], rating=9)
    wrong = n.move("a-doc", task, "evaluated", output=[*moved["output"], output])
    assert (
        wrong.status_code == 422 and "rating as an integer from 1 to 5" in wrong.get_json()["issue"][0]["diagnostics"]
    )
    done = n.move("a-doc", task, "evaluated", output=[*moved["output"], evaluation(n, "a-doc", request["subject"])])
    assert done.status_code == 200, done.get_json()
