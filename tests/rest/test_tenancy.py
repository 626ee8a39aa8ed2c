"""Tenants, grants, consent, labels and roles through the REST API: the cross-tenant attack suite.

Institutions A, B and C each act through their own system client and users; every search
feature is tried from B against A's data (read, vread, history, search and ``_total``, chains,
``_has``, ``_include``/``_revinclude``, ``_list``, compartments, conditional interactions,
Bundles, paging). Tokens are real access tokens signed by the server (minted in-process; the
OAuth flows themselves are tested in tests/e2e/). Runs on SQLite and PostgreSQL.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.conftest import in_process

A, B, C, S = "org-a", "org-b", "org-c", "org-s"
TEST_CODE = "http://example.org/test"
PASSWORD = "Str0ng-passw0rd!"


def _code(code: str) -> dict[str, Any]:
    return {"coding": [{"system": TEST_CODE, "code": code}]}


class World:
    """The server and one token per actor."""

    def __init__(self, client: Any, services: Any) -> None:
        self.client = client
        self.services = services
        self.tokens: dict[str, str] = {}

    def mint(self, name: str, client_id: str, scope: str, username: str | None = None) -> None:
        from fhir_server.security.authcode import AccountUser

        security = self.services.security
        client = security.clients.get(client_id)
        user = AccountUser(security.users.get(username)) if username else None
        self.tokens[name] = security.tokens.issue(client, scope, user=user)

    def call(self, who: str, method: str, path: str, body: Any = None, **headers: str) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[who]}", **headers}
        return self.client.open(f"/fhir/{path}", method=method, json=body, headers=headers)

    def get(self, who: str, path: str) -> Any:
        return self.call(who, "GET", path)

    def post(self, who: str, resource: dict[str, Any]) -> str:
        resp = self.call(who, "POST", resource["resourceType"], resource)
        assert resp.status_code == 201, resp.get_json()
        return str(resp.get_json()["id"])

    def ids(self, who: str, path: str) -> set[str]:
        resp = self.get(who, path)
        assert resp.status_code == 200, resp.get_json()
        return {e["resource"]["id"] for e in resp.get_json().get("entry", []) if e["search"]["mode"] == "match"}

    def all_ids(self, who: str, path: str) -> set[str]:
        resp = self.get(who, path)
        assert resp.status_code == 200, resp.get_json()
        return {e["resource"]["id"] for e in resp.get_json().get("entry", [])}


def consent(patient: str, *provisions: dict[str, Any], status: str = "active", **extra: Any) -> dict[str, Any]:
    """A Consent: deny by default, with ``provisions`` as the exceptions that permit (opt-in)."""
    top = {"type": "deny", "provision": list(provisions)}
    return {
        "resourceType": "Consent",
        "status": status,
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": top,
        **extra,
    }


def permit(action: str, actor: str | None = None, **more: Any) -> dict[str, Any]:
    prov: dict[str, Any] = {
        "type": "permit",
        "action": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentaction", "code": action}]}],
    }
    if actor:
        prov["actor"] = [
            {
                "role": {
                    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ParticipationType", "code": "IRCP"}]
                },
                "reference": {"reference": f"Organization/{actor}"},
            }
        ]
    prov.update(more)
    return prov


def patient(name: str, **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": name}], "gender": "female", **extra}


def observation(subject: str, code: str, category: str = "vital-signs", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": category}]}
        ],
        "code": _code(code),
        "subject": {"reference": f"Patient/{subject}"},
        "valueQuantity": {"value": 1},
        **extra,
    }


def request(subject: str, performers: list[str], status: str = "active", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "ServiceRequest",
        "status": status,
        "intent": "order",
        "code": _code("consult"),
        "subject": {"reference": f"Patient/{subject}"},
        "authoredOn": "2026-01-01T00:00:00Z",
        "performer": [{"reference": p} for p in performers],
        **extra,
    }


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def world(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    with in_process(request.param, tmp_path_factory, "tenancy") as (services, _settings, client):
        security = services.security
        for cid, org in (("plat", None), ("a-sys", A), ("b-sys", B), ("c-sys", C)):
            security.clients.save(cid, secret="s3cret-s3cret", organization=f"Organization/{org}" if org else None)
        users = (
            ("a-expert", A, ("expert",), "Practitioner/pr-a"),
            ("a-op", A, ("operator",), None),
            ("a-admin", A, ("leading-institution-admin",), None),
            ("a-auditor", A, ("auditor",), None),
            ("b-expert", B, ("expert",), "Practitioner/pr-b"),
            ("sup", S, ("supervisor",), None),
            ("ops", S, ("operations",), None),
        )
        for username, org, roles, fhir_user in users:
            security.users.create(
                username, PASSWORD, organization=f"Organization/{org}", roles=roles, fhir_user=fhir_user
            )
        w = World(client, services)
        w.mint("plat", "plat", "system/*.*")
        for org in "abc":
            w.mint(org, f"{org}-sys", "system/*.*")
        for username, *_ in users:
            w.mint(username, "plat", "user/*.cruds", username)
        _populate(w)
        yield w


def _populate(w: World) -> None:
    for org in (A, B, C, S):
        resp = w.call("plat", "PUT", f"Organization/{org}", {"resourceType": "Organization", "id": org, "name": org})
        assert resp.status_code == 201, resp.get_json()
    d = w.__dict__
    d["pa"] = w.post("a", patient("Zhangsan", identifier=[{"system": "urn:a", "value": "pa-1"}]))
    w.post("a", consent(d["pa"], permit("collect")))
    d["oa"] = w.post("a", observation(d["pa"], "X", identifier=[{"system": "urn:a", "value": "oa-1"}]))
    d["oa_lab"] = w.post("a", observation(d["pa"], "X", "laboratory"))
    d["la"] = w.post(
        "a",
        {
            "resourceType": "List",
            "status": "current",
            "mode": "working",
            "entry": [{"item": {"reference": f"Observation/{d['oa']}"}}],
        },
    )
    d["pb"] = w.post("b", patient("Lisi"))
    w.post("b", consent(d["pb"], permit("collect")))
    d["ob"] = w.post("b", observation(d["pb"], "X"))
    d["ob_pa"] = w.post("b", observation(d["pa"], "X"))  # B's own record about A's patient
    d["oa_pb"] = w.post("a", observation(d["pb"], "Y"))  # A's own record about B's patient


# -- the attack suite: B must not see A's data, nor learn that it exists -----------------------
def test_another_institutions_resource_reads_as_unknown(world: World) -> None:
    w = world
    hidden = w.get("b", f"Observation/{w.oa}")
    missing = w.get("b", "Observation/no-such-id")
    assert hidden.status_code == missing.status_code == 404
    text = hidden.get_json()["issue"][0]["diagnostics"]
    assert text == missing.get_json()["issue"][0]["diagnostics"].replace("no-such-id", w.oa)
    assert w.get("a", f"Observation/{w.oa}").status_code == 200
    for path in (f"Observation/{w.oa}/_history/1", f"Observation/{w.oa}/_history", f"Patient/{w.pa}"):
        assert w.get("b", path).status_code == 404, path


def test_search_and_total_count_only_what_can_be_seen(world: World) -> None:
    w = world
    assert w.ids("b", "Observation?code=X") == {w.ob, w.ob_pa}
    assert w.get("b", "Observation?code=X&_total=accurate").get_json()["total"] == 2
    assert w.get("b", "Observation?_summary=count").get_json()["total"] == 2
    assert w.ids("b", f"Observation?_id={w.oa},{w.ob}") == {w.ob}
    assert w.ids("a", "Observation?code=X") == {w.oa, w.oa_lab}
    assert w.ids("plat", "Observation?code=X") == {w.oa, w.oa_lab, w.ob, w.ob_pa}


def test_system_search_and_history_stay_within_the_institution(world: World) -> None:
    w = world
    assert w.ids("b", f"?_id={w.oa},{w.pa},{w.ob}") == {w.ob}
    seen = {
        e["resource"]["id"] for e in w.get("b", "_history?_count=1000").get_json().get("entry", []) if "resource" in e
    }
    assert w.ob in seen and not seen & {w.oa, w.pa, w.oa_lab, w.oa_pb}
    seen = {e["resource"]["id"] for e in w.get("b", "Observation/_history").get_json().get("entry", [])}
    assert seen == {w.ob, w.ob_pa}


def test_a_chain_cannot_ask_about_another_institutions_resource(world: World) -> None:
    w = world  # B's own Observation points at A's patient, whose name B must not be able to test
    assert w.ids("b", "Observation?subject:Patient.name=Zhangsan") == set()
    assert w.ids("b", "Observation?subject.identifier=urn:a|pa-1") == set()
    assert w.ids("a", "Observation?subject:Patient.name=Zhangsan") == {w.oa, w.oa_lab}


def test_has_cannot_ask_about_another_institutions_resources(world: World) -> None:
    w = world  # only A's Observation of B's patient has code Y
    assert w.ids("b", "Patient?_has:Observation:subject:code=Y") == set()
    assert w.ids("b", "Patient?_has:Observation:subject:code=X") == {w.pb}
    assert w.ids("a", "Patient?_has:Observation:subject:code=Y") == set()  # pb is B's: invisible to A


def test_includes_never_bring_in_another_institutions_resources(world: World) -> None:
    w = world
    found = w.all_ids("b", f"Observation?_id={w.ob_pa}&_include=Observation:subject")
    assert found == {w.ob_pa}
    found = w.all_ids("b", f"Patient?_id={w.pb}&_revinclude=Observation:subject")
    assert found == {w.pb, w.ob}
    found = w.all_ids("b", f"Patient?_id={w.pb}&_revinclude=*&_include:iterate=*")
    assert w.oa_pb not in found


def test_list_and_compartment(world: World) -> None:
    w = world
    assert w.ids("b", f"Observation?_list={w.la}") == set()
    assert w.ids("a", f"Observation?_list={w.la}") == {w.oa}
    assert w.ids("b", f"Patient/{w.pa}/Observation") == {w.ob_pa}
    assert w.ids("b", f"Patient/{w.pb}/Observation") == {w.ob}


def test_paging_never_reaches_another_institutions_rows(world: World) -> None:
    w = world
    seen: list[str] = []
    resp = w.get("b", "Observation?_count=1")
    while True:
        body = resp.get_json()
        seen += [e["resource"]["id"] for e in body.get("entry", [])]
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            break
        resp = w.get("b", nxt[0].split("/fhir/", 1)[1])
    assert sorted(seen) == sorted([w.ob, w.ob_pa])


def test_conditional_interactions_ignore_another_institutions_rows(world: World) -> None:
    w = world
    changed = observation(w.pb, "X", identifier=[{"system": "urn:a", "value": "oa-1"}])
    resp = w.call("b", "PUT", "Observation?identifier=urn:a|oa-1", changed)
    assert resp.status_code == 201 and resp.get_json()["id"] != w.oa  # a new one of B's, not A's changed
    resp = w.call("b", "DELETE", "Observation?code=Y")
    assert resp.status_code == 200
    assert w.get("a", f"Observation/{w.oa_pb}").status_code == 200
    assert w.get("a", f"Observation/{w.oa}").get_json()["meta"]["versionId"] == "1"
    resp = w.call("b", "POST", "Observation", observation(w.pb, "Z"), **{"If-None-Exist": "identifier=urn:a|oa-1"})
    assert resp.status_code == 200  # B's own copy matched, never A's


def test_writes_by_id_to_another_institutions_resource_read_as_unknown(world: World) -> None:
    w = world
    body = observation(w.pb, "X")
    body["id"] = w.oa
    for method, payload in (
        ("PUT", body),
        ("PATCH", [{"op": "replace", "path": "/status", "value": "amended"}]),
        ("DELETE", None),
    ):
        headers = {"Content-Type": "application/json-patch+json"} if method == "PATCH" else {}
        resp = w.client.open(
            f"/fhir/Observation/{w.oa}",
            method=method,
            json=payload,
            headers={"Authorization": f"Bearer {w.tokens['b']}", **headers},
        )
        assert resp.status_code == 404, (method, resp.get_json())
    assert w.get("a", f"Observation/{w.oa}").get_json()["meta"]["versionId"] == "1"
    # a client-chosen id is the platform's privilege: an institution would learn which ids exist
    fresh = observation(w.pb, "X")
    fresh["id"] = "b-chosen-" + uuid.uuid4().hex[:8]
    assert w.call("b", "PUT", f"Observation/{fresh['id']}", fresh).status_code == 404


def test_bundles_cannot_reach_another_institutions_rows(world: World) -> None:
    w = world
    batch = {
        "resourceType": "Bundle",
        "type": "batch",
        "entry": [
            {"request": {"method": "GET", "url": f"Observation/{w.oa}"}},
            {"request": {"method": "GET", "url": "Observation?code=X"}},
        ],
    }
    out = w.call("b", "POST", "", batch).get_json()
    assert out["entry"][0]["response"]["status"].startswith("404")
    found = {e["resource"]["id"] for e in out["entry"][1]["resource"].get("entry", [])}
    assert {w.ob, w.ob_pa} <= found and not found & {w.oa, w.oa_lab}
    transaction = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": "urn:uuid:" + str(uuid.uuid4()),
                "resource": observation(w.pb, "X") | {"subject": {"reference": "Patient?identifier=urn:a|pa-1"}},
                "request": {"method": "POST", "url": "Observation"},
            }
        ],
    }
    resp = w.call("b", "POST", "", transaction)
    assert resp.status_code == 422, resp.get_json()  # the conditional reference finds nothing
    assert "matches nothing" in resp.get_json()["issue"][0]["diagnostics"] or resp.get_json()


def test_another_institutions_directory_entry_is_readable_but_not_writable(world: World) -> None:
    w = world
    assert w.get("b", f"Organization/{A}").status_code == 200
    resp = w.call("b", "PUT", f"Organization/{A}", {"resourceType": "Organization", "id": A, "name": "taken"})
    assert resp.status_code == 403 and "another institution" in resp.get_json()["issue"][0]["diagnostics"]
    resp = w.call("b", "POST", "StructureDefinition", {"resourceType": "StructureDefinition"})
    assert resp.status_code in (400, 403, 422)
    sd = w.get("plat", "StructureDefinition?url=http://fhir.telefhir.cn/StructureDefinition/cn-patient")
    assert sd.status_code == 200 and sd.get_json()["total"] if "total" in sd.get_json() else True


# -- consent --------------------------------------------------------------------------------
def test_collecting_a_patients_data_needs_their_consent(world: World) -> None:
    w = world
    pc = w.post("a", patient("Wangwu"))
    resp = w.call("a", "POST", "Observation", observation(pc, "X"))
    assert resp.status_code == 403
    outcome = resp.get_json()["issue"][0]
    assert outcome["code"] == "security" and "collect" in outcome["diagnostics"]
    assert w.ids("a", f"Observation?subject=Patient/{pc}") == set()
    w.post("a", consent(pc, permit("collect", A)))
    assert w.call("a", "POST", "Observation", observation(pc, "X")).status_code == 201
    # the consent names A only: B may not collect about this patient
    assert w.call("b", "POST", "Observation", observation(pc, "X")).status_code == 403


def test_a_consultation_shares_the_patients_data_while_it_lasts(world: World) -> None:
    w = world
    pd = w.post("a", patient("Zhaoliu"))
    w.post("a", consent(pd, permit("collect")))
    od = w.post("a", observation(pd, "X"))
    # no consent to disclose to B: the request is refused and nothing is stored
    resp = w.call("a", "POST", "ServiceRequest", request(pd, [f"Organization/{B}"]))
    assert resp.status_code == 403 and "disclos" in resp.get_json()["issue"][0]["diagnostics"]
    assert w.ids("a", f"ServiceRequest?subject=Patient/{pd}") == set()
    w.post("a", consent(pd, permit("disclose", B)))
    sr = w.post("a", request(pd, [f"Organization/{B}"]))
    assert w.get("b", f"Observation/{od}").status_code == 200
    assert w.get("b", f"Patient/{pd}").status_code == 200
    assert w.ids("b", f"Observation?subject=Patient/{pd}") == {od}
    assert w.get("c", f"Observation/{od}").status_code == 404  # not a performer
    # B's opinion about the patient reaches A
    opinion = w.post(
        "b",
        {
            "resourceType": "Communication",
            "status": "completed",
            "subject": {"reference": f"Patient/{pd}"},
            "basedOn": [{"reference": f"ServiceRequest/{sr}"}],
            "payload": [{"contentString": "opinion"}],
        },
    )
    assert w.get("a", f"Communication/{opinion}").status_code == 200
    # revoked: B no longer sees A's data; A keeps B's opinion
    revoked = w.get("a", f"ServiceRequest/{sr}").get_json() | {"status": "revoked"}
    assert w.call("a", "PUT", f"ServiceRequest/{sr}", revoked).status_code == 200
    assert w.get("b", f"Observation/{od}").status_code == 404
    assert w.get("a", f"Communication/{opinion}").status_code == 200


def test_a_request_shares_only_the_categories_it_names(world: World) -> None:
    w = world
    pe = w.post("a", patient("Sunqi"))
    w.post("a", consent(pe, permit("collect"), permit("disclose", B)))
    vital = w.post("a", observation(pe, "X"))
    lab = w.post("a", observation(pe, "X", "laboratory"))
    clinical = {"system": "http://fhir.telefhir.cn/CodeSystem/data-category", "code": "clinical"}
    ext = [{"url": "http://fhir.telefhir.cn/StructureDefinition/shared-data-category", "valueCoding": clinical}]
    w.post("a", request(pe, [f"Organization/{B}"], extension=ext))
    assert w.get("b", f"Observation/{vital}").status_code == 200
    assert w.get("b", f"Observation/{lab}").status_code == 404
    assert w.get("b", f"Patient/{pe}").status_code == 404  # patient details were not shared


def test_a_consent_share_lasts_for_its_period_and_status(world: World) -> None:
    w = world
    pf = w.post("a", patient("Zhouba"))
    w.post("a", consent(pf, permit("collect")))
    of = w.post("a", observation(pf, "X"))
    share = w.post("a", consent(pf, permit("access", C, period={"start": "2020-01-01", "end": "2099-12-31"})))
    assert w.get("c", f"Observation/{of}").status_code == 200
    assert w.get("b", f"Observation/{of}").status_code == 404
    ended = w.get("a", f"Consent/{share}").get_json() | {"status": "inactive"}
    assert w.call("a", "PUT", f"Consent/{share}", ended).status_code == 200
    assert w.get("c", f"Observation/{of}").status_code == 404
    expired = w.post("a", consent(pf, permit("access", C, period={"start": "2020-01-01", "end": "2021-01-01"})))
    assert expired and w.get("c", f"Observation/{of}").status_code == 404


# -- security labels ------------------------------------------------------------------------
def test_a_minors_data_crosses_only_with_a_consent_that_names_it(world: World) -> None:
    w = world
    child = w.post("a", patient("Xiaoming", birthDate="2016-05-01"))
    w.post("a", consent(child, permit("collect")))
    oc = w.post("a", observation(child, "X"))
    w.post("a", consent(child, permit("disclose", B)))
    resp = w.call("a", "POST", "ServiceRequest", request(child, [f"Organization/{B}"]))
    assert resp.status_code == 403 and "minor" in resp.get_json()["issue"][0]["diagnostics"]
    minor = [{"system": "http://fhir.telefhir.cn/CodeSystem/security-label", "code": "minor"}]
    w.post("a", consent(child, permit("disclose", B, securityLabel=minor)))
    w.post("a", request(child, [f"Organization/{B}"]))
    assert w.get("b", f"Observation/{oc}").status_code == 200


def test_labelled_data_is_for_cleared_roles_only(world: World) -> None:
    w = world
    hiv = {"security": [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]}
    labelled = w.post("a", observation(w.pa, "H", meta=hiv))
    assert w.get("a-expert", f"Observation/{labelled}").status_code == 200
    assert w.get("a-op", f"Observation/{labelled}").status_code == 404
    assert w.get("a-op", f"Observation/{w.oa}").status_code == 200
    assert labelled not in w.ids("a-op", "Observation?code=H")


# -- roles ----------------------------------------------------------------------------------
def test_roles_limit_categories(world: World) -> None:
    w = world
    resp = w.get("a-admin", "Condition")
    assert resp.status_code == 403 and "roles" in resp.get_json()["issue"][0]["diagnostics"]
    # Observations may be experts' opinions (consultation data): the search runs, limited to those
    assert w.oa not in w.ids("a-admin", "Observation")
    assert w.pa in w.ids("a-admin", "Patient")
    # a system-wide search by an administrator returns only what the roles read
    seen = w.ids("a-admin", f"?_id={w.pa},{w.oa}")
    assert seen == {w.pa}
    resp = w.call("a-admin", "POST", "Observation", observation(w.pa, "X"))
    assert resp.status_code == 403
    assert w.get("ops", "Patient").status_code == 403
    assert w.get("ops", "StructureDefinition?_count=1").status_code == 200


def test_supervisor_oversees_consultations_of_every_institution_but_no_clinical_data(world: World) -> None:
    w = world
    pg = w.post("a", patient("Wujiu"))
    w.post("a", consent(pg, permit("collect"), permit("disclose", B)))
    sr = w.post("a", request(pg, [f"Organization/{B}"]))
    assert sr in w.ids("sup", "ServiceRequest")
    assert w.get("sup", "Condition").status_code == 403
    assert w.ids("sup", "Observation") == set()  # only experts' opinions would show: consultation data
    assert w.get("sup", f"Patient/{pg}").status_code == 403


def test_a_resident_sees_their_own_records_in_every_institution(world: World) -> None:
    w = world
    w.services.security.users.create("pa-user", PASSWORD, fhir_user=f"Patient/{w.pa}", roles=("resident",))
    w.mint("resident", "plat", "patient/*.rs", "pa-user")
    seen = w.ids("resident", "Observation")
    assert {w.oa, w.oa_lab, w.ob_pa} <= seen and w.ob not in seen
    assert w.get("resident", f"Observation/{w.ob}").status_code == 404
    assert w.get("resident", f"Patient/{w.pa}").status_code == 200


# -- the audit trail ----------------------------------------------------------------------------
def _audit_event(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "AuditEvent",
        "type": {"system": "http://dicom.nema.org/resources/ontology/DCM", "code": "110110"},
        "recorded": "2026-12-07T10:00:00Z",
        "outcome": "0",
        "agent": [{"who": {"display": "modality"}, "requestor": True}],
        "source": {"observer": {"display": "pacs"}},
        **extra,
    }


def test_each_institution_reads_its_own_audit_trail(world: World) -> None:
    w = world
    a_event = w.call("a", "POST", "AuditEvent", _audit_event()).get_json()["id"]
    b_event = w.call("b", "POST", "AuditEvent", _audit_event()).get_json()["id"]
    forged = _audit_event()
    forged["agent"].append(
        {"type": {"coding": [{"code": "PROV"}]}, "who": {"reference": f"Organization/{A}"}, "requestor": False}
    )
    resp = w.call("b", "POST", "AuditEvent", forged)
    assert resp.status_code == 403  # B cannot write into A's trail
    assert w.get("b", f"AuditEvent/{a_event}").status_code == 404
    assert w.get("a", f"AuditEvent/{a_event}").status_code == 200
    assert w.ids("a-auditor", "AuditEvent") == {a_event}
    assert {a_event, b_event} <= w.ids("sup", "AuditEvent")
    assert w.get("a-expert", "AuditEvent").status_code == 403  # not an auditor


def test_everything_is_the_patients_record_as_far_as_the_request_may_see(world: World) -> None:
    w = world
    assert w.get("b", f"Patient/{w.pa}/$everything").status_code == 404
    own = w.all_ids("b", f"Patient/{w.pb}/$everything")
    assert {w.pb, w.ob} <= own and w.oa_pb not in own
    seen: set[str] = set()
    resp = w.get("a", f"Patient/{w.pa}/$everything?_count=2")
    while True:
        body = resp.get_json()
        seen |= {e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"}
        nxt = [link["url"] for link in body["link"] if link["relation"] == "next"]
        if not nxt:
            break
        resp = w.get("a", nxt[0].split("/fhir/", 1)[1])
    assert {w.pa, w.oa, w.oa_lab} <= seen and w.ob_pa not in seen
    assert w.ids("a", f"Patient/{w.pa}/$everything?_type=Patient") == {w.pa}
    assert w.get("a", f"Patient/{w.pa}/$everything?start=2020").status_code == 400


def test_shared_data_reaches_another_institution_de_identified(world: World) -> None:
    w = world
    ph = w.post(
        "a",
        patient(
            "Qianshi",
            birthDate="1961-07-15",
            identifier=[{"system": "urn:oid:2.16.156.10011.1.3", "value": "110105196107150026"}],
            telecom=[{"system": "phone", "value": "13800138000"}],
            address=[{"line": ["建国路88号"], "city": "北京市", "district": "朝阳区"}],
        ),
    )
    w.post("a", consent(ph, permit("collect"), permit("disclose", B), permit("access", C)))
    oh = w.post("a", observation(ph, "X", note=[{"text": "患者电话13800138000，身份证110105196107150026"}]))
    w.post("a", request(ph, [f"Organization/{B}"]))
    own = w.get("a", f"Patient/{ph}").get_json()
    assert own["name"][0]["family"] == "Qianshi" and own["telecom"][0]["value"] == "13800138000"
    seen = w.get("b", f"Patient/{ph}").get_json()
    assert seen["id"] == ph  # ids and references stay: B follows them
    assert "Qianshi" not in str(seen) and "13800138000" not in str(seen) and "建国路" not in str(seen)
    assert seen["birthDate"] == "1961" and seen["address"][0]["city"] == "北京市"
    assert seen["identifier"][0]["value"] != "110105196107150026"
    assert any(label.get("code") == "PSEUDED" for label in seen["meta"]["security"])
    again = w.ids("b", f"Patient?_id={ph}")  # the same view by search
    assert again == {ph}
    searched = w.get("b", f"Patient?_id={ph}").get_json()["entry"][0]["resource"]
    assert searched["identifier"][0]["value"] == seen["identifier"][0]["value"]  # stable for B
    note = w.get("b", f"Observation/{oh}").get_json()["note"][0]["text"]
    assert "13800138000" not in note and "110105196107150026" not in note
    assert w.get("b", f"Observation/{oh}").get_json()["subject"]["reference"] == f"Patient/{ph}"
    for_c = w.get("c", f"Patient/{ph}").get_json()  # shared with C by consent: C's own pseudonyms
    assert for_c["identifier"][0]["value"] not in (seen["identifier"][0]["value"], "110105196107150026")
    # A's own history stays as stored
    changed = own | {"gender": "male"}
    assert w.call("a", "PUT", f"Patient/{ph}", changed).status_code == 200
    assert w.get("a", f"Patient/{ph}/_history/1").get_json()["name"][0]["family"] == "Qianshi"
    history = w.get("a", f"Patient/{ph}/_history").get_json()
    assert all(e["resource"]["name"][0]["family"] == "Qianshi" for e in history["entry"])
    assert "Qianshi" not in str(w.get("b", f"Patient/{ph}/_history").get_json())


# -- data sent abroad (R28) -------------------------------------------------------------------
def _export(patient_id: str, **values: str) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "patient", "valueReference": {"reference": f"Patient/{patient_id}"}}]
    parts += [{"name": name, "valueString": value} for name, value in values.items()]
    return {"resourceType": "Parameters", "parameter": parts}


def test_data_sent_abroad_is_pseudonymized_and_in_the_ledger(world: World) -> None:
    import hashlib

    w = world
    needed = {
        "recipient": "Example Hospital",
        "country": "SG",
        "purpose": "second opinion",
        "assessment": "CAC-2026-017",
    }
    for missing in needed:
        partial = {k: v for k, v in needed.items() if k != missing}
        assert w.call("a", "POST", "$export-abroad", _export(w.pa, **partial)).status_code == 400, missing
    assert w.call("a", "POST", "$export-abroad", _export(w.pa, **(needed | {"country": "CN"}))).status_code == 400
    assert w.call("b", "POST", "$export-abroad", _export(w.pa, **needed)).status_code == 404  # not B's to send
    assert w.call("a-expert", "POST", "$export-abroad", _export(w.pa, **needed)).status_code == 403  # a person
    resp = w.call("a", "POST", "$export-abroad", _export(w.pa, **needed))
    assert resp.status_code == 200, resp.get_json()
    sent = resp.get_json()
    assert sent["type"] == "collection" and len(sent["entry"]) >= 3
    ids = {e["resource"]["id"] for e in sent["entry"]}
    assert w.pa not in ids and w.oa not in ids  # pseudonymized through and through
    assert "Zhangsan" not in resp.get_data(as_text=True)
    export_id = resp.headers["X-Export-Id"]
    ledger = w.get("a", "$export-ledger").get_json()["parameter"]
    entry = next(
        {p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in e["part"]}
        for e in ledger
        if any(p["name"] == "export_id" and p["valueString"] == export_id for p in e["part"])
    )
    assert (
        entry["recipient"] == "Example Hospital" and entry["country"] == "SG" and entry["assessment"] == "CAC-2026-017"
    )
    assert entry["organization"] == f"Organization/{A}" and entry["patients"] == 1
    assert entry["digest"] == hashlib.sha256(resp.get_data()).hexdigest()
    assert "Observation" in entry["content"]
    assert w.get("b", "$export-ledger").get_json().get("parameter", []) == []
    assert any(
        p["valueString"] == export_id for e in w.get("sup", "$export-ledger").get_json()["parameter"] for p in e["part"]
        if p["name"] == "export_id"
    )  # fmt: skip


def test_patient_scopes_grant_nothing_without_a_patient_in_context(world: World) -> None:
    """SMART: ``patient/`` scopes are about the patient in context. A practitioner's token holding
    them without a launch (or a choice on the picker) must not read the institution's records."""
    w = world
    w.mint("a-expert-patient-scopes", "plat", "patient/*.rs", "a-expert")
    resp = w.get("a-expert-patient-scopes", f"Observation/{w.oa}")
    assert resp.status_code == 403 and "user/Observation.r" in resp.get_json()["issue"][0]["diagnostics"]
    assert w.get("a-expert-patient-scopes", "Patient").status_code == 403
    assert w.get("a-expert", f"Observation/{w.oa}").status_code == 200  # the same person with user/ scopes
