"""SMART standalone launch with ``launch/patient``: the patient picker after sign-in, on a real
server with two institutions (tests/e2e/institutions.py), a real OAuth client (requests-oauthlib,
PKCE) and a browser stand-in (a requests session keeping the login cookie).

What must hold: the picker lists the patients the person's own FHIR search would find (never
another institution's, also through the name search), the chosen patient is the token's
``patient`` and limits its ``patient/`` scopes, a forged choice issues no code, Cancel gives the app
``error=access_denied``, and a resident is not asked (their own patient is the context)."""

from __future__ import annotations

import html
import re
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from requests_oauthlib import OAuth2Session

from tests.e2e.institutions import Network, consent, two_institutions
from tests.smart import PASSWORD, REDIRECT, SmartApp, cli

#: names unique in the session's database (other modules' servers share it)
RUN = uuid.uuid4().hex[:6]
APP = f"picker-app-{RUN}"
DOCTOR, SUPERVISOR, B_DOCTOR, RESIDENT = (f"{who}-{RUN}" for who in ("a-doc", "a-sup", "b-doc", "zhang-san"))
SCOPE = ["launch/patient", "patient/Observation.rs", "patient/Patient.rs", "openid", "fhirUser", "offline_access"]
USERS = ((DOCTOR, "a", "requesting-doctor"), (SUPERVISOR, "a", "supervisor"), (B_DOCTOR, "b", "requesting-doctor"))


@dataclass
class World:
    net: Network
    app: SmartApp
    ids: dict[str, str]


@dataclass
class Picker:
    """A picker page reached by signing in, and what its forms carry."""

    session: OAuth2Session  # the app's side: its PKCE verifier and state
    browser: requests.Session
    page: requests.Response
    continuation: str
    bind: str

    def patients(self) -> set[str]:
        return set(re.findall(r'name="patient" value="([^"]+)"', self.page.text))


def _hidden(text: str, name: str) -> str:
    found = re.search(rf'name="{name}" value="([^"]*)"', text)
    assert found, text
    return html.unescape(found.group(1))


def _observation(patient: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": "http://example.org/test", "code": "PICK"}]},
        "subject": {"reference": f"Patient/{patient}"},
    }


def _patient(family: str, given: str) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": [given]}], "gender": "female"}


@pytest.fixture(scope="module")
def world(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    data = tmp_path_factory.mktemp("standalone-launch")
    where = ("--database-url", database_url, "--data-dir", str(data))
    with two_institutions(database_url, data, USERS) as net:
        cli("clients", "add", *where, APP, "--auth-method", "none", "--grant-type", "authorization_code",
            "--grant-type", "refresh_token", "--redirect-uri", REDIRECT, "--scope", " ".join(SCOPE))  # fmt: skip
        ids: dict[str, str] = {}
        for key, who, family, given in (("zhang", "a", "张", "三"), ("wang", "a", "王", "五"), ("b", "b", "张", "四")):
            ids[key] = net.create(who, _patient(family, given))
            net.create(who, consent(ids[key], ("collect", None, None)))
            ids[f"o_{key}"] = net.create(who, _observation(ids[key]))
        cli("users", "add", *where, RESIDENT, "--password-stdin", "--fhir-user", f"Patient/{ids['zhang']}",
            "--role", "resident")  # fmt: skip
        yield World(net, SmartApp(net.server.root, net.server.base, APP, SCOPE), ids)


def _open_picker(w: World, username: str) -> Picker:
    """Sign ``username`` in for a ``launch/patient`` request: the picker it lands on."""
    session = w.app.oauth()
    url, _state = session.authorization_url(w.app.authorize_url, aud=w.net.server.base)
    browser = requests.Session()
    logged_in = w.app.login(browser, url, username, PASSWORD)
    assert logged_in.status_code == 303, logged_in.text
    page = browser.get(w.net.server.root + "/auth/" + logged_in.headers["Location"], allow_redirects=False)
    assert page.status_code == 200 and "Choose a patient" in page.text, page.text
    return Picker(session, browser, page, _hidden(page.text, "continue"), _hidden(page.text, "bind"))


def _search(w: World, picker: Picker, name: str) -> requests.Response:
    params = {"continue": picker.continuation, "name": name}
    page = picker.browser.get(w.net.server.root + "/auth/patient", params=params, allow_redirects=False)
    assert page.status_code == 200, page.text
    return page


def _post(w: World, picker: Picker, **form: str) -> requests.Response:
    data = {"continue": picker.continuation, "bind": picker.bind, **form}
    return picker.browser.post(w.net.server.root + "/auth/patient", data=data, allow_redirects=False)


def _query(location: str) -> dict[str, str]:
    return dict(urllib.parse.parse_qsl(urllib.parse.urlsplit(location).query))


def _jwks(w: World) -> KeySet:
    return KeySet.import_key_set(requests.get(w.net.server.root + "/auth/jwks", timeout=10).json())


def _observations(w: World, access_token: str) -> set[str]:
    bearer = {"Authorization": f"Bearer {access_token}"}
    found = requests.get(f"{w.net.server.base}/Observation?code=PICK", headers=bearer, timeout=10)
    assert found.status_code == 200, found.text
    return {e["resource"]["id"] for e in found.json().get("entry", [])}


def test_discovery_says_a_patient_can_be_chosen_at_a_standalone_launch(world: World) -> None:
    conf = requests.get(world.net.server.base + "/.well-known/smart-configuration", timeout=10).json()
    assert {"launch-standalone", "context-standalone-patient", "launch-ehr"} <= set(conf["capabilities"])


def test_the_picker_lists_only_patients_the_person_may_see(world: World) -> None:
    w, ids = world, world.ids
    picker = _open_picker(w, DOCTOR)
    assert picker.patients() == {ids["zhang"], ids["wang"]}
    assert ids["b"] not in picker.page.text and "张三" in picker.page.text and "张四" not in picker.page.text
    assert "http://127.0.0.1:9" in picker.page.headers["Content-Security-Policy"]  # the choice's redirect may go
    assert picker.page.headers["X-Frame-Options"] == "DENY"
    # the name search narrows it, and never reaches another institution's patient of that name
    zhang = _search(w, picker, "张")
    assert set(re.findall(r'name="patient" value="([^"]+)"', zhang.text)) == {ids["zhang"]}
    assert "张四" not in zhang.text
    assert set(re.findall(r'name="patient" value="([^"]+)"', _search(w, picker, "五").text)) == {ids["wang"]}
    nobody = _search(w, picker, "赵")
    assert 'name="patient"' not in nobody.text and "No patient's name starts with" in nobody.text
    b_side = _open_picker(w, B_DOCTOR)
    assert ids["b"] in b_side.patients() and not {ids["zhang"], ids["wang"]} & b_side.patients()


def test_the_chosen_patient_is_the_tokens_context(world: World) -> None:
    w, ids = world, world.ids
    picker = _open_picker(w, DOCTOR)
    chosen = _post(w, picker, patient=ids["zhang"])
    assert chosen.status_code == 303 and chosen.headers["Location"].startswith(REDIRECT), chosen.text
    token = picker.session.fetch_token(
        w.app.token_url, authorization_response=chosen.headers["Location"], include_client_id=True
    )
    assert token["patient"] == ids["zhang"]
    claims = jwt.decode(token["access_token"], _jwks(w)).claims
    assert claims["patient"] == ids["zhang"] and claims["sub"] == DOCTOR
    # patient/Observation.rs: that patient's Observations only, even in the doctor's own institution
    assert _observations(w, token["access_token"]) == {ids["o_zhang"]}
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    assert (
        requests.get(f"{w.net.server.base}/Observation/{ids['o_wang']}", headers=bearer, timeout=10).status_code == 404
    )
    assert requests.get(f"{w.net.server.base}/Patient/{ids['zhang']}", headers=bearer, timeout=10).status_code == 200
    # the refresh token carries the context too
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": APP}
    refreshed = requests.post(w.app.token_url, data=form, timeout=10)
    assert refreshed.status_code == 200 and refreshed.json()["patient"] == ids["zhang"], refreshed.text
    assert _observations(w, refreshed.json()["access_token"]) == {ids["o_zhang"]}


def test_a_forged_choice_issues_no_code(world: World) -> None:
    w, ids = world, world.ids
    picker = _open_picker(w, DOCTOR)
    forged = _post(w, picker, patient=ids["b"])  # another institution's patient
    assert forged.status_code == 403 and "Location" not in forged.headers
    assert _post(w, picker, patient="no-such-patient").status_code == 403
    assert _post(w, picker, patient="").status_code == 403
    # the form token binds the form to this session and this authorization request
    assert _post(w, picker, patient=ids["zhang"], bind="0" * 64).status_code == 403
    other = _open_picker(w, DOCTOR)  # another request (another state, PKCE challenge) of the same person
    swapped = {"continue": other.continuation, "bind": picker.bind, "patient": ids["zhang"]}
    mixed = picker.browser.post(w.net.server.root + "/auth/patient", data=swapped, allow_redirects=False)
    assert mixed.status_code == 403 and "Location" not in mixed.headers
    copied = {"continue": picker.continuation, "bind": picker.bind, "patient": ids["zhang"]}
    stranger = requests.post(w.net.server.root + "/auth/patient", data=copied, allow_redirects=False)
    assert stranger.status_code == 401  # no session cookie (as a cross-site post would be sent)
    # the real choice still works afterwards
    assert _post(w, picker, patient=ids["wang"]).headers["Location"].startswith(REDIRECT)


def test_cancel_gives_the_app_access_denied(world: World) -> None:
    picker = _open_picker(world, DOCTOR)
    cancelled = _post(world, picker, cancel="1")
    assert cancelled.status_code == 303 and cancelled.headers["Location"].startswith(REDIRECT)
    answer = _query(cancelled.headers["Location"])
    assert answer["error"] == "access_denied" and "code" not in answer
    assert answer["state"] == dict(urllib.parse.parse_qsl(picker.continuation))["state"]


def test_a_person_who_may_see_no_patient_is_told_so_and_can_cancel(world: World) -> None:
    picker = _open_picker(world, SUPERVISOR)  # a supervisor reads no patient data
    assert picker.patients() == set() and "There is no patient you may see" in picker.page.text
    cancelled = _post(world, picker, cancel="1")
    assert _query(cancelled.headers["Location"])["error"] == "access_denied"


def test_a_resident_gets_their_own_patient_without_a_picker(world: World) -> None:
    w, ids = world, world.ids
    _, token = w.app.code_flow(RESIDENT, PASSWORD)  # login → straight back with a code: no picker
    assert token["patient"] == ids["zhang"]
    assert _observations(w, token["access_token"]) == {ids["o_zhang"]}


def test_the_picker_pages_through_many_patients(world: World) -> None:
    w = world
    entries = [
        {"resource": _patient("Li", f"Page{i:02d}"), "request": {"method": "POST", "url": "Patient"}} for i in range(21)
    ]
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    headers = {"Content-Type": "application/fhir+json"}
    stored = w.net.sessions["b"].post(w.net.server.base, json=bundle, headers=headers, timeout=30)
    assert stored.status_code == 200, stored.text
    picker = _open_picker(w, B_DOCTOR)
    first = picker.patients()
    assert len(first) == 20
    link = re.search(r'href="(patient\?[^"]+)"', picker.page.text)
    assert link, picker.page.text
    second = picker.browser.get(w.net.server.root + "/auth/" + html.unescape(link.group(1)), allow_redirects=False)
    assert second.status_code == 200, second.text
    rest = set(re.findall(r'name="patient" value="([^"]+)"', second.text))
    assert len(rest) == 2 and not rest & first  # 22 patients of b: 20, then 2
    assert 'href="patient?' not in second.text
    named = _search(w, picker, "Li")
    assert len(re.findall(r'name="patient" value="([^"]+)"', named.text)) == 20 and "Next" in named.text
