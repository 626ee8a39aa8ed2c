"""Custom SearchParameter resources and ``$reindex`` through the REST API, on SQLite and PostgreSQL.

Specs: http://hl7.org/fhir/R4/searchparameter.html (the resource), http://hl7.org/fhir/R4/async.html
(kick-off 202 + Content-Location, status 202 + X-Progress / 200 when done, DELETE cancels).
Every test uses its own code and url and deletes its SearchParameters again, because the
registry is process-wide.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

JSON = "application/fhir+json"
EXT = "http://example.org/fhir/StructureDefinition/tcm-constitution"
CS = "http://example.org/fhir/CodeSystem/tcm-constitution"


def _post(client, resource: dict, path: str | None = None):  # type: ignore[no-untyped-def]
    return client.post(path or f"/fhir/{resource['resourceType']}", data=json.dumps(resource), content_type=JSON)


def _search_parameter(code: str, **extra: object) -> dict:
    sp = {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/fhir/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "TCM constitution type of the patient (中医体质)",
        "code": code,
        "base": ["Observation"],
        "type": "token",
        "expression": f"Observation.extension('{EXT}').value",
    }
    sp.update(extra)
    return sp


def _observation(constitution: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "TCM constitution assessment"},
        "extension": [{"url": EXT, "valueCodeableConcept": {"coding": [{"system": CS, "code": constitution}]}}],
    }


def _ids(client, query: str) -> set[str]:  # type: ignore[no-untyped-def]
    resp = client.get(f"/fhir/{query}")
    assert resp.status_code == 200, resp.get_json()
    return {e["resource"]["id"] for e in resp.get_json().get("entry", []) if e["search"]["mode"] == "match"}


@contextmanager
def registered(client, sp: dict) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """POST ``sp``; yields its id; deletes it afterwards (the registry outlives the test)."""
    resp = _post(client, sp)
    assert resp.status_code == 201, resp.get_json()
    sp_id = resp.get_json()["id"]
    try:
        yield sp_id
    finally:
        client.delete(f"/fhir/SearchParameter/{sp_id}")


def _local(url: str) -> str:
    return url.replace("http://testserver", "")


def _wait_done(client, status_url: str, timeout: float = 60.0) -> tuple[list, object]:  # type: ignore[no-untyped-def]
    """Poll the status URL until it stops answering 202; returns (X-Progress values, last response)."""
    progress = []
    deadline = time.time() + timeout
    while time.time() < deadline:
        resp = client.get(_local(status_url))
        if resp.status_code != 202:
            return progress, resp
        assert resp.headers["Retry-After"]
        progress.append(resp.headers["X-Progress"])
        time.sleep(0.1)
    raise AssertionError(f"reindex job not done after {timeout} s: {progress[-3:]}")


def test_resource_stored_before_is_found_only_after_reindex(client) -> None:  # type: ignore[no-untyped-def]
    code = f"constitution-{uuid.uuid4().hex[:8]}"
    value = f"qi-deficiency-{uuid.uuid4().hex[:6]}"
    before = _post(client, _observation(value)).get_json()["id"]
    with registered(client, _search_parameter(code)):
        after = _post(client, _observation(value)).get_json()["id"]
        # new writes are indexed at once; the older resource is not yet
        assert _ids(client, f"Observation?{code}={value}") == {after}
        assert _ids(client, f"Observation?{code}={CS}|{value}") == {after}

        kickoff = client.post("/fhir/Observation/$reindex", headers={"Prefer": "respond-async"})
        assert kickoff.status_code == 202, kickoff.get_json()
        status_url = kickoff.headers["Content-Location"]
        assert status_url.startswith("http://testserver/fhir/$reindex/")
        assert kickoff.get_json()["resourceType"] == "OperationOutcome"

        progress, done = _wait_done(client, status_url)
        assert progress, "the first poll comes before the job starts (it waits for the workers to settle)"
        assert all(len(p) < 100 for p in progress) and "Observation" in progress[0]
        assert done.status_code == 200, done.get_json()
        summary = {
            p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in done.get_json()["parameter"]
        }
        assert summary["state"] == "completed" and summary["type"] == "Observation"
        assert summary["processed"] >= 2 and summary["errors"] == 0
        assert _ids(client, f"Observation?{code}={value}") == {before, after}
        assert _ids(client, f"Observation?{code}:not={value}&_id={before}") == set()
        # the status URL goes on answering 200 with the summary
        assert client.get(_local(status_url)).status_code == 200


def test_capability_statement_lists_custom_parameter_and_reindex(client) -> None:  # type: ignore[no-untyped-def]
    code = f"constitution-{uuid.uuid4().hex[:8]}"

    def observation_params() -> dict[str, dict]:
        meta = client.get("/fhir/metadata").get_json()
        (obs,) = [r for r in meta["rest"][0]["resource"] if r["type"] == "Observation"]
        assert {"name": "reindex", "definition": "urn:telefhir:OperationDefinition:reindex"} in obs["operation"]
        assert "reindex" in [op["name"] for op in meta["rest"][0]["operation"]]
        assert "$reindex" not in json.dumps(meta["rest"][0]["interaction"])
        return {p["name"]: p for p in obs["searchParam"]}

    assert code not in observation_params()
    sp = _search_parameter(code)
    with registered(client, sp):
        listed = observation_params()[code]
        assert listed == {"name": code, "definition": sp["url"], "type": "token", "documentation": sp["description"]}
    assert code not in observation_params()


def test_delete_and_retire_unregister(client) -> None:  # type: ignore[no-untyped-def]
    code = f"constitution-{uuid.uuid4().hex[:8]}"
    created = _post(client, _search_parameter(code))
    assert created.status_code == 201
    sp = created.get_json()
    assert client.get(f"/fhir/Observation?{code}=x").status_code == 200
    retired = client.put(
        f"/fhir/SearchParameter/{sp['id']}", data=json.dumps({**sp, "status": "retired"}), content_type=JSON
    )
    assert retired.status_code == 200
    unknown = client.get(f"/fhir/Observation?{code}=x")
    assert unknown.status_code == 400 and code in unknown.get_json()["issue"][0]["diagnostics"]
    # active again, with another expression: new writes follow the new expression
    changed = {**sp, "status": "active", "type": "string", "expression": "Observation.code.text"}
    assert (
        client.put(f"/fhir/SearchParameter/{sp['id']}", data=json.dumps(changed), content_type=JSON).status_code == 200
    )
    text = f"Pulse diagnosis {uuid.uuid4().hex[:6]}"
    obs = _post(client, {"resourceType": "Observation", "status": "final", "code": {"text": text}}).get_json()
    assert _ids(client, f"Observation?{code}={text[:9]}") >= {obs["id"]}
    assert client.delete(f"/fhir/SearchParameter/{sp['id']}").status_code == 200
    gone = client.get(f"/fhir/Observation?{code}=x")
    assert gone.status_code == 400, gone.get_json()
    assert "Unknown search parameter" in gone.get_json()["issue"][0]["diagnostics"]


def test_referral_by_invited_institution(client) -> None:  # type: ignore[no-untyped-def]
    """A reference parameter on ServiceRequest (consultation requests by invited institution)."""
    code = f"invited-{uuid.uuid4().hex[:8]}"
    ext = "http://example.org/fhir/StructureDefinition/invited-institution"
    org = _post(client, {"resourceType": "Organization", "name": "Provincial TCM Hospital"}).get_json()["id"]
    sp = _search_parameter(
        code,
        base=["ServiceRequest"],
        type="reference",
        target=["Organization"],
        expression=f"ServiceRequest.extension('{ext}').value",
    )
    with registered(client, sp):
        req = {
            "resourceType": "ServiceRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": "Patient/p1"},
            "extension": [{"url": ext, "valueReference": {"reference": f"Organization/{org}"}}],
        }
        sr = _post(client, req).get_json()["id"]
        assert _ids(client, f"ServiceRequest?{code}=Organization/{org}") == {sr}
        assert _ids(client, f"ServiceRequest?{code}={org}") == {sr}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        ({"expression": None}, "expression is required"),
        ({"expression": "Observation.extension('x').value.where("}, "not valid FHIRPath"),
        ({"expression": "Observation.notAnElement"}, "selects no element"),
        ({"expression": "Patient.name"}, "has no part for Observation"),
        ({"expression": f"Observation.extension('{EXT}')"}, "cannot index"),  # the Extension, not its value
        ({"type": "composite"}, "not supported"),
        ({"type": "special"}, "not supported"),
        ({"code": "status"}, "already the built-in R4 parameter"),
        ({"code": "bad:code"}, "letters, digits"),
        ({"base": ["NotAType"]}, "NotAType"),
        ({"url": "http://hl7.org/fhir/SearchParameter/Observation-status"}, "built-in R4 parameter"),
    ],
)
def test_unusable_search_parameter_is_422(client, change: dict, says: str) -> None:  # type: ignore[no-untyped-def]
    code = f"bad-{uuid.uuid4().hex[:8]}"
    sp = {k: v for k, v in {**_search_parameter(code), **change}.items() if v is not None}
    resp = _post(client, sp)
    assert resp.status_code == 422, resp.get_json()
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert says in json.dumps(outcome), outcome
    if "code" not in change:
        assert client.get(f"/fhir/Observation?{code}=x").status_code == 400  # not registered


def test_duplicate_url_or_code_is_422_and_drafts_are_only_stored(client) -> None:  # type: ignore[no-untyped-def]
    code = f"dup-{uuid.uuid4().hex[:8]}"
    with registered(client, _search_parameter(code)):
        same_url = _post(client, _search_parameter(code))
        assert same_url.status_code == 422 and "already used by SearchParameter/" in json.dumps(same_url.get_json())
        same_code = _post(client, _search_parameter(code, url=f"http://example.org/other/{code}"))
        assert same_code.status_code == 422 and "already the custom parameter" in json.dumps(same_code.get_json())
    draft = _search_parameter(f"draft-{uuid.uuid4().hex[:8]}", status="draft", expression="Observation.nothing")
    with registered(client, draft):
        assert client.get(f"/fhir/Observation?{draft['code']}=x").status_code == 400


def test_invalid_search_parameter_fails_its_transaction(client) -> None:  # type: ignore[no-untyped-def]
    good, bad = f"tx-{uuid.uuid4().hex[:8]}", f"tx-{uuid.uuid4().hex[:8]}"
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": _search_parameter(good), "request": {"method": "POST", "url": "SearchParameter"}},
            {
                "resource": _search_parameter(bad, expression="Observation.nothingHere"),
                "request": {"method": "POST", "url": "SearchParameter"},
            },
        ],
    }
    resp = _post(client, bundle, "/fhir")
    assert resp.status_code == 422, resp.get_json()
    assert client.get(f"/fhir/Observation?{good}=x").status_code == 400  # rolled back: not registered
    assert _ids(client, f"SearchParameter?code={good}") == set()


def test_cancel_and_unknown_jobs(client) -> None:  # type: ignore[no-untyped-def]
    kickoff = client.post("/fhir/$reindex")
    assert kickoff.status_code == 202
    status_url = _local(kickoff.headers["Content-Location"])
    cancelled = client.delete(status_url)  # before its first batch (jobs wait a second to settle)
    assert cancelled.status_code == 202
    assert "cancelled" in cancelled.get_json()["issue"][0]["diagnostics"]
    after = client.get(status_url)
    assert after.status_code == 404 and "cancelled" in after.get_json()["issue"][0]["diagnostics"]
    time.sleep(1.5)  # the runner meets the cancellation at its first batch and does nothing
    assert client.get(status_url).status_code == 404
    assert client.get("/fhir/$reindex/no-such-job").status_code == 404
    assert client.delete("/fhir/$reindex/no-such-job").status_code == 404
    assert client.get("/fhir/Observation/$reindex").status_code == 405


def test_reindex_parameters(client) -> None:  # type: ignore[no-untyped-def]
    bad = client.post("/fhir/Basic/$reindex?batchSize=0")
    assert bad.status_code == 400
    wrong = _post(
        client,
        {"resourceType": "Parameters", "parameter": [{"name": "nope", "valueInteger": 1}]},
        "/fhir/Basic/$reindex",
    )
    assert wrong.status_code == 400
    assert client.post("/fhir/NotAType/$reindex").status_code == 404
    small = _post(
        client,
        {"resourceType": "Parameters", "parameter": [{"name": "batchSize", "valueInteger": 2}]},
        "/fhir/Basic/$reindex",
    )
    assert small.status_code == 202
    _progress, done = _wait_done(client, small.headers["Content-Location"])
    assert done.status_code == 200
