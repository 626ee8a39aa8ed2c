"""The cross-tenant attack suite against a real server: two institutions, real OAuth clients.

Institution clients get their tokens with authlib's OAuth2Session (client credentials); people
sign in through the login page with a SMART app (requests-oauthlib, authorization code + PKCE,
tests/smart.py). Searches go through fhirpy, a real FHIR client. Two worker processes serve, so
a grant written by one is honoured by the other. The in-process suite (tests/rest/test_tenancy.py)
tries every search feature in more detail; brute force and audit tampering are in
tests/e2e/test_authorize.py and tests/e2e/test_audit.py.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from tests.e2e.institutions import LAUNCH_SCOPE, Network, consent, two_institutions
from tests.smart import PASSWORD, SmartApp

HIV = [{"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "HIV"}]


def _observation(patient: str, code: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://example.org/test", "code": code}]},
        "subject": {"reference": f"Patient/{patient}"},
        **extra,
    }


@pytest.fixture(scope="module")
def network(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Network]:
    users = (("a-doc", "a", "requesting-doctor"), ("b-expert", "b", "expert"), ("b-op", "b", "operator"))
    with two_institutions(database_url, tmp_path_factory.mktemp("tenancy-e2e"), users) as net:
        yield net


@pytest.fixture(scope="module")
def records(network: Network) -> dict[str, str]:
    """A's patient with an observation, and B's patient; B also records something about A's."""
    n = network
    ids: dict[str, str] = {}
    ids["pa"] = n.create("a", {"resourceType": "Patient", "name": [{"family": "Zhang"}]})
    n.create("a", consent(ids["pa"], ("collect", None, None)))
    ids["oa"] = n.create("a", _observation(ids["pa"], "X"))
    ids["pb"] = n.create("b", {"resourceType": "Patient", "name": [{"family": "Li"}]})
    n.create("b", consent(ids["pb"], ("collect", None, None)))
    ids["ob"] = n.create("b", _observation(ids["pb"], "X"))
    ids["ob_pa"] = n.create("b", _observation(ids["pa"], "X"))
    return ids


def test_an_institution_client_cannot_reach_another_institutions_data(
    network: Network, records: dict[str, str]
) -> None:
    n, r = network, records
    b = n.fhirpy("b")
    assert {o.id for o in b.resources("Observation").search(code="X").fetch_all()} == {r["ob"], r["ob_pa"]}
    assert b.resources("Patient").search(name="Zhang").fetch_all() == []
    assert b.resources("Observation").search(**{"subject:Patient.name": "Zhang"}).fetch_all() == []
    has = b.resources("Patient").search(**{"_has:Observation:subject:code": "X"}).fetch_all()
    assert {p.id for p in has} == {r["pb"]}
    found = b.resources("Observation").search(_id=r["ob_pa"]).include("Observation", "subject").fetch_raw()
    assert [e["resource"]["id"] for e in found.entry] == [r["ob_pa"]]
    for path in (
        f"Observation/{r['oa']}",
        f"Observation/{r['oa']}/_history/1",
        f"Patient/{r['pa']}",
        f"Patient/{r['pa']}/$everything",
    ):
        assert n.call("b", "GET", path).status_code == 404, path
    assert n.call("b", "PUT", f"Observation/{r['oa']}", _observation(r["pb"], "X") | {"id": r["oa"]}).status_code == 404
    history = n.call("b", "GET", "Observation/_history").json()
    assert r["oa"] not in {e["resource"]["id"] for e in history.get("entry", []) if "resource" in e}
    assert {o.id for o in n.fhirpy("a").resources("Observation").search(code="X").fetch_all()} == {r["oa"]}


def test_a_consultation_shares_with_the_invited_institutions_experts(network: Network, records: dict[str, str]) -> None:
    n, r = network, records
    n.sessions["a-doc"] = n.user_session("a-doc")
    n.sessions["b-expert"] = n.user_session("b-expert")
    n.sessions["b-op"] = n.user_session("b-op")
    pc = n.create("a-doc", {"resourceType": "Patient", "name": [{"family": "Wang"}]})
    hiv = consent(pc, ("collect", None, None))
    n.create("a-doc", hiv)
    oc = n.create("a-doc", _observation(pc, "X"))
    labelled = n.create("a-doc", _observation(pc, "H", meta={"security": HIV}))
    request = {
        "resourceType": "ServiceRequest",
        "status": "active",
        "intent": "order",
        "code": {"text": "teleconsultation"},
        "subject": {"reference": f"Patient/{pc}"},
        "performer": [{"reference": f"Organization/{n.b}"}],
    }
    refused = n.call("a-doc", "POST", "ServiceRequest", request)
    assert refused.status_code == 403 and refused.json()["issue"][0]["code"] == "security"
    n.create("a-doc", consent(pc, ("disclose", n.b, None), ("disclose", n.b, HIV)))
    sr = n.create("a-doc", request)
    assert n.call("b-expert", "GET", f"Observation/{oc}").status_code == 200
    assert n.call("b-expert", "GET", f"Observation/{labelled}").status_code == 200
    assert n.call("b-op", "GET", f"Observation/{oc}").status_code == 200
    assert n.call("b-op", "GET", f"Observation/{labelled}").status_code == 404  # no clearance for HIV
    # B's expert may read but not change A's records
    changed = n.call("b-expert", "GET", f"Observation/{oc}").json() | {"status": "amended"}
    assert n.call("b-expert", "PUT", f"Observation/{oc}", changed).status_code == 403
    revoked = n.call("a-doc", "GET", f"ServiceRequest/{sr}").json() | {"status": "revoked"}
    assert n.call("a-doc", "PUT", f"ServiceRequest/{sr}", revoked).status_code == 200
    assert n.call("b-expert", "GET", f"Observation/{oc}").status_code == 404
    assert n.call("b", "GET", f"Observation/{r['oa']}").status_code == 404


def test_a_refused_attempt_is_in_the_attackers_audit_trail_only(network: Network, records: dict[str, str]) -> None:
    n, r = network, records
    assert n.call("b", "GET", f"Observation/{r['oa']}").status_code == 404
    deadline = time.time() + 10
    while True:
        found = n.call("b", "GET", f"AuditEvent?entity=Observation/{r['oa']}&outcome=4&_count=50").json()
        if found.get("entry") or time.time() > deadline:
            break
        time.sleep(0.3)
    assert found.get("entry"), "the refused read was not recorded"
    theirs = n.call("a", "GET", f"AuditEvent?entity=Observation/{r['oa']}&outcome=4&_count=50").json()
    assert theirs.get("entry", []) == []


def test_an_ehr_launch_limits_the_app_to_the_patient_in_context(network: Network, records: dict[str, str]) -> None:
    n, r = network, records
    n.sessions.setdefault("a-doc", n.user_session("a-doc"))
    px = n.create("a-doc", {"resourceType": "Patient", "name": [{"family": "Zhou"}]})
    n.create("a-doc", consent(px, ("collect", None, None)))
    ox = n.create("a-doc", _observation(px, "X"))
    ehr = n.sessions["a-doc"]
    refused = ehr.post(n.server.root + "/auth/launch", json={"patient": r["pb"]}, timeout=10)
    assert refused.status_code == 400  # B's patient: not one the launching doctor can see
    launch = ehr.post(n.server.root + "/auth/launch", json={"patient": px}, timeout=10)
    assert launch.status_code == 201, launch.text
    app = SmartApp(n.server.root, n.server.base, "app", LAUNCH_SCOPE)
    _, token = app.code_flow("a-doc", PASSWORD, launch=launch.json()["launch"])
    assert token["patient"] == px
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    found = requests.get(f"{n.server.base}/Observation?code=X", headers=bearer, timeout=10).json()
    assert {e["resource"]["id"] for e in found.get("entry", [])} == {ox}
    assert requests.get(f"{n.server.base}/Observation/{r['oa']}", headers=bearer, timeout=10).status_code == 404
    assert requests.post(f"{n.server.base}/Observation", json=_observation(px, "Y"), headers=bearer,
                         timeout=10).status_code == 403  # patient/*.rs: read only  # fmt: skip
    # the launch works for the person who asked for it only
    other = SmartApp(n.server.root, n.server.base, "app", LAUNCH_SCOPE)
    session = other.oauth()
    url, _ = session.authorization_url(other.authorize_url, launch=launch.json()["launch"])
    browser = requests.Session()
    logged_in = other.login(browser, url, "b-expert", PASSWORD)
    back = browser.get(n.server.root + "/auth/" + logged_in.headers["Location"], allow_redirects=False)
    assert back.status_code == 400 and "launch context" in back.text
