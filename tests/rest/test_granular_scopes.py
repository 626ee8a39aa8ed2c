"""SMART v2 scopes with a query (security/granular.py) through the REST API and the token endpoint.

Institution A's client holds ``system/Observation.…?category=…|laboratory``; what it may search,
include, read and write is tried against A's laboratory and vital-signs Observations, and against
B's (which stay unknown: a 404, never a 403). A resident's ``patient/`` token with a vital-signs
query, and the platform's own client with a query, are limited the same way. Tokens are minted
in-process except where the token endpoint itself is tried. Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import in_process
from tests.rest import test_tenancy as tenancy
from tests.rest.workflow_network import consent

A, B = "org-a", "org-b"
PASSWORD = "Str0ng-passw0rd!"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
LAB = f"category={CATEGORY}|laboratory"
VITAL = f"category={CATEGORY}|vital-signs"
TEST_CODE = "http://example.org/test"


class World(tenancy.World):
    """The tenancy tests' world, and the token endpoint."""

    def token(self, client_id: str, scope: str) -> Any:
        """The token endpoint's answer to a client credentials request (client_secret_basic)."""
        basic = base64.b64encode(f"{client_id}:s3cret-s3cret".encode()).decode()
        return self.client.post(
            "/auth/token",
            data={"grant_type": "client_credentials", "scope": scope},
            headers={"Authorization": f"Basic {basic}"},
        )


def observation(subject: str, category: str, code: str = "X", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": CATEGORY, "code": category}]}],
        "code": {"coding": [{"system": TEST_CODE, "code": code}]},
        "subject": {"reference": f"Patient/{subject}"},
        "effectiveDateTime": "2026-01-01",
        **extra,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with in_process(request.param, tmp_path_factory, "granular") as (services, _settings, client):
        clients = services.security.clients
        clients.save("plat", secret="s3cret-s3cret")
        clients.save("a-sys", secret="s3cret-s3cret", organization=f"Organization/{A}")
        clients.save("b-sys", secret="s3cret-s3cret", organization=f"Organization/{B}")
        clients.save("a-obs", secret="s3cret-s3cret", organization=f"Organization/{A}", scope="system/Observation.rs")
        lab_only = f"system/Observation.rs?{LAB} system/Patient.rs"
        clients.save("a-lab", secret="s3cret-s3cret", organization=f"Organization/{A}", scope=lab_only)
        w = World(client, services)
        w.mint("plat", "plat", "system/*.*")
        w.mint("a", "a-sys", "system/*.*")
        w.mint("b", "b-sys", "system/*.*")
        _populate(w)
        lab_scopes = f"system/Observation.cruds?{LAB} system/Patient.rs system/DiagnosticReport.rs"
        w.mint("lab", "a-sys", lab_scopes)
        w.mint("lab+vital", "a-sys", f"system/Observation.rs?{LAB} system/Observation.rs?{VITAL}")
        w.mint("lab+any", "a-sys", f"system/Observation.rs?{LAB} system/Observation.rs")
        w.mint("plat-lab", "plat", f"system/Observation.rs?{LAB} system/Patient.rs")
        yield w


def _populate(w: World) -> None:
    for org in (A, B):
        resp = w.call("plat", "PUT", f"Organization/{org}", {"resourceType": "Organization", "id": org, "name": org})
        assert resp.status_code == 201, resp.get_json()
    d = w.__dict__
    d["pa"] = w.post("a", {"resourceType": "Patient", "name": [{"family": "Zhang"}]})
    w.post("a", consent(d["pa"]))
    d["lab1"] = w.post("a", observation(d["pa"], "laboratory"))
    d["lab2"] = w.post("a", observation(d["pa"], "laboratory", "Y"))
    d["vital"] = w.post("a", observation(d["pa"], "vital-signs"))
    results = [{"reference": f"Observation/{d[k]}"} for k in ("lab1", "vital")]
    report = {"resourceType": "DiagnosticReport", "status": "final", "code": {"text": "panel"}, "result": results}
    d["report"] = w.post("a", {**report, "subject": {"reference": f"Patient/{d['pa']}"}})
    d["pb"] = w.post("b", {"resourceType": "Patient", "name": [{"family": "Li"}]})
    w.post("b", consent(d["pb"]))
    d["b_lab"] = w.post("b", observation(d["pb"], "laboratory"))


# -- search ------------------------------------------------------------------------------------
def test_a_search_is_limited_to_what_the_scopes_query_matches(world: World) -> None:
    w = world
    assert w.ids("lab", "Observation?code=X,Y") == {w.lab1, w.lab2}
    assert w.ids("lab", "Observation?code=X") == {w.lab1}  # the client's parameters ANDed
    assert w.ids("lab", f"Observation?{VITAL}") == set()
    assert w.get("lab", "Observation?code=X,Y&_total=accurate").get_json()["total"] == 2
    assert w.get("lab", "Observation?code=X,Y&_summary=count").get_json()["total"] == 2
    assert w.ids("lab", f"Patient/{w.pa}/Observation?code=X,Y") == {w.lab1, w.lab2}  # a compartment too
    assert w.ids("a", "Observation?code=X,Y") == {w.lab1, w.lab2, w.vital}


def test_several_scopes_on_a_type_allow_what_any_of_them_allows(world: World) -> None:
    w = world
    assert w.ids("lab+vital", "Observation?code=X,Y") == {w.lab1, w.lab2, w.vital}
    assert w.ids("lab+any", "Observation?code=X,Y") == {w.lab1, w.lab2, w.vital}  # no query: every row
    assert w.get("lab+any", f"Observation/{w.vital}").status_code == 200


def test_includes_revincludes_and_everything_bring_in_only_allowed_rows(world: World) -> None:
    w = world
    found = w.all_ids("lab", f"DiagnosticReport?_id={w.report}&_include=DiagnosticReport:result")
    assert found == {w.report, w.lab1}
    found = w.all_ids("lab", f"Patient?_id={w.pa}&_revinclude=Observation:subject")
    assert {w.pa, w.lab1, w.lab2} <= found and w.vital not in found
    assert found - {w.pa} <= w.ids("a", f"Observation?{LAB}")
    w.mint("everything", "a-sys", f"system/Patient.r system/*.s system/Observation.r?{LAB}")
    resp = w.get("everything", f"Patient/{w.pa}/$everything")
    assert resp.status_code == 200, resp.get_json()
    seen = {e["resource"]["id"] for e in resp.get_json()["entry"] if e["resource"]["resourceType"] == "Observation"}
    assert {w.lab1, w.lab2} <= seen and seen <= w.ids("a", f"Observation?{LAB}")


def test_chains_and_has_cannot_ask_about_rows_outside_the_query(world: World) -> None:
    w = world
    assert w.ids("lab", f"Patient?_has:Observation:subject:{VITAL}") == set()
    assert w.ids("lab", f"Patient?_has:Observation:subject:{LAB}") == {w.pa}


# -- read --------------------------------------------------------------------------------------
def test_reading_a_row_outside_the_query_is_refused_naming_the_scope(world: World) -> None:
    w = world
    assert w.get("lab", f"Observation/{w.lab1}").status_code == 200
    assert w.get("lab", f"Observation/{w.lab1}/_history/1").status_code == 200
    for path in (f"Observation/{w.vital}", f"Observation/{w.vital}/_history/1", f"Observation/{w.vital}/_history"):
        resp = w.get("lab", path)
        assert resp.status_code == 403, path
        assert f"system/Observation.cruds?{LAB}" in resp.get_json()["issue"][0]["diagnostics"]
    assert w.get("lab", "Observation/no-such-id").status_code == 404
    assert w.get("lab", f"Observation/{w.b_lab}").status_code == 404  # another institution's: unknown


def test_a_platform_client_is_limited_by_its_query_too(world: World) -> None:
    w = world
    assert w.ids("plat-lab", "Observation?code=X,Y") == {w.lab1, w.lab2, w.b_lab}
    assert w.get("plat-lab", f"Observation/{w.vital}").status_code == 403
    assert w.get("plat-lab", f"Patient/{w.pb}").status_code == 200
    w.mint("plat-more", "plat", f"system/Observation.rs?{LAB} system/Patient.cruds system/AuditEvent.crs")
    chosen = {"resourceType": "Patient", "id": "plat-chosen-id", "name": [{"family": "Wang"}]}
    assert w.call("plat-more", "PUT", "Patient/plat-chosen-id", chosen).status_code == 201  # still the platform
    event = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-12-07T10:00:00Z",
        "agent": [{"who": {"display": "modality"}, "requestor": True}],
        "source": {"observer": {"display": "pacs"}},
    }
    assert w.call("plat-more", "POST", "AuditEvent", event).status_code == 201
    assert w.get("plat-more", "AuditEvent").get_json()["entry"]
    w.mint("plat-create-lab", "plat", f"system/*.rs system/Observation.c?{LAB}")  # reads not limited
    assert w.get("plat-create-lab", f"Observation/{w.vital}").status_code == 200
    assert w.call("plat-create-lab", "POST", "Observation", observation(w.pa, "vital-signs")).status_code == 403


def test_a_patient_token_with_a_query(world: World) -> None:
    w = world
    w.services.security.users.create("pa-user", PASSWORD, fhir_user=f"Patient/{w.pa}", roles=("resident",))
    w.mint("resident", "plat", f"patient/Observation.rs?{VITAL} patient/Patient.rs", "pa-user")
    assert w.ids("resident", "Observation?code=X,Y") == {w.vital}
    assert w.get("resident", f"Observation/{w.vital}").status_code == 200
    assert w.get("resident", f"Observation/{w.lab1}").status_code == 403
    assert w.get("resident", f"Observation/{w.b_lab}").status_code == 404  # not the patient's


# -- write -------------------------------------------------------------------------------------
def test_a_create_must_match_the_query(world: World) -> None:
    w = world
    made = w.post("lab", observation(w.pa, "laboratory", "NEW-LAB"))
    assert w.ids("a", "Observation?code=NEW-LAB") == {made}
    resp = w.call("lab", "POST", "Observation", observation(w.pa, "vital-signs", "NEW-VITAL"))
    assert resp.status_code == 403, resp.get_json()
    assert LAB in resp.get_json()["issue"][0]["diagnostics"]
    assert w.ids("a", "Observation?code=NEW-VITAL") == set()  # nothing stored


def test_an_update_must_match_the_query_before_and_after(world: World) -> None:
    w = world
    target = w.post("a", observation(w.pa, "laboratory", "UPD"))
    current = w.get("lab", f"Observation/{target}").get_json()
    resp = w.call("lab", "PUT", f"Observation/{target}", {**current, "status": "amended"})
    assert resp.status_code == 200, resp.get_json()
    moved = observation(w.pa, "vital-signs", "UPD", id=target)
    resp = w.call("lab", "PUT", f"Observation/{target}", moved)
    assert resp.status_code == 403, resp.get_json()
    assert w.get("a", f"Observation/{target}").get_json()["meta"]["versionId"] == "2"  # unchanged
    stored_vital = w.get("a", f"Observation/{w.vital}").get_json()
    relabelled = {**stored_vital, "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}]}
    resp = w.call("lab", "PUT", f"Observation/{w.vital}", relabelled)
    assert resp.status_code == 403, resp.get_json()
    assert w.get("a", f"Observation/{w.vital}").get_json()["meta"]["versionId"] == "1"


def test_update_and_delete_scopes_narrower_than_the_read_scope_guard_the_stored_row(world: World) -> None:
    w = world  # reads every Observation, updates and deletes only laboratory ones: the stored row decides
    w.mint("narrow", "a-sys", f"system/Observation.rs system/Observation.ud?{LAB}")
    vital = w.post("a", observation(w.pa, "vital-signs", "NARROW"))
    relabelled = {
        **w.get("a", f"Observation/{vital}").get_json(),
        "category": [{"coding": [{"system": CATEGORY, "code": "laboratory"}]}],
    }
    resp = w.call("narrow", "PUT", f"Observation/{vital}", relabelled)
    assert resp.status_code == 403, resp.get_json()
    resp = w.call("narrow", "PUT", "Observation?code=NARROW", relabelled)  # conditional: found by search
    assert resp.status_code == 403, resp.get_json()
    assert "the stored version" in resp.get_json()["issue"][0]["diagnostics"]
    resp = w.call("narrow", "DELETE", "Observation?code=NARROW")
    assert resp.status_code == 403, resp.get_json()
    assert w.get("a", f"Observation/{vital}").get_json()["meta"]["versionId"] == "1"


def test_a_delete_must_match_the_query(world: World) -> None:
    w = world
    assert w.call("lab", "DELETE", f"Observation/{w.vital}").status_code == 403
    assert w.get("a", f"Observation/{w.vital}").status_code == 200
    doomed = w.post("a", observation(w.pa, "laboratory", "DEL"))
    assert w.call("lab", "DELETE", f"Observation/{doomed}").status_code == 200
    assert w.get("a", f"Observation/{doomed}").status_code == 410
    assert w.get("lab", f"Observation/{doomed}").status_code == 404  # nothing left for the query to match


def test_a_transaction_with_a_write_outside_the_query_stores_nothing(world: World) -> None:
    w = world
    entries = [
        {"resource": observation(w.pa, code, "TX-" + code), "request": {"method": "POST", "url": "Observation"}}
        for code in ("laboratory", "vital-signs")
    ]
    resp = w.call("lab", "POST", "", {"resourceType": "Bundle", "type": "transaction", "entry": entries})
    assert resp.status_code == 403, resp.get_json()
    assert w.ids("a", "Observation?code=TX-laboratory,TX-vital-signs") == set()


# -- the token endpoint ------------------------------------------------------------------------
def test_a_query_is_granted_where_the_registration_covers_it(world: World) -> None:
    w = world
    resp = w.token("a-obs", f"system/Observation.rs?{LAB}")
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["scope"] == f"system/Observation.rs?{LAB}"
    w.tokens["granted"] = resp.get_json()["access_token"]
    assert w.ids("granted", "Observation") == w.ids("a", f"Observation?{LAB}")
    narrower = f"system/Observation.rs?{LAB}&date=ge2025"
    assert w.token("a-lab", narrower).get_json()["scope"] == narrower
    assert w.token("a-lab", "system/Observation.rs").status_code == 400  # more than registered
    assert w.token("a-lab", f"system/Observation.rs?{VITAL}").status_code == 400
    assert w.token("a-lab", "").get_json()["scope"] == f"system/Observation.rs?{LAB} system/Patient.rs"


@pytest.mark.parametrize(
    "query",
    [
        "_include=Observation:subject",
        "subject.name=Zhang",
        "_has:Observation:subject:code=X",
        f"category:in={CATEGORY}",
        "no-such-param=1",
        "category=",
        "_id=1",
        "date=not-a-date",
        "code-value-quantity=X$5",
    ],
)
def test_a_query_the_server_cannot_enforce_is_refused(world: World, query: str) -> None:
    resp = world.token("a-obs", f"system/Observation.rs?{query}")
    assert resp.status_code == 400, resp.get_json()
    assert resp.get_json()["error"] == "invalid_scope"
    assert "system/Observation.rs?" in resp.get_json()["error_description"]


def test_includes_leave_out_types_the_scopes_do_not_let_the_token_read(world: World) -> None:
    """A token that may read Observations but not Patients gets no Patient by ``_include``: the
    search's own check covered only the searched type."""
    w = world
    w.mint("obs-only", "a-sys", "system/Observation.rs")
    resp = w.get("obs-only", "Observation?code=X,Y&_include=Observation:subject")
    assert resp.status_code == 200, resp.get_json()
    entries = resp.get_json()["entry"]
    assert {e["resource"]["resourceType"] for e in entries if e["search"]["mode"] != "outcome"} == {"Observation"}
    [outcome] = [e["resource"] for e in entries if e["search"]["mode"] == "outcome"]
    assert "included Patient resources left out" in outcome["issue"][0]["diagnostics"]
    assert w.get("obs-only", f"Patient/{w.pa}").status_code == 403
    found = w.all_ids("a", "Observation?code=X,Y&_include=Observation:subject")  # a token that may read both
    assert w.pa in found
