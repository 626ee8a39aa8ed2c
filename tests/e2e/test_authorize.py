"""SMART standalone launch: authorization code + PKCE through the login page, id_token, refresh
rotation, lockout and TOTP — a real server, a real OAuth client (requests-oauthlib) and a
browser stand-in (a requests session that keeps the cookie)."""

from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator

import pyotp
import pytest
import requests
from joserfc import jwt
from joserfc.jwk import KeySet
from requests_oauthlib import OAuth2Session

from tests.conftest import ServerProcess
from tests.smart import FHIR_SERVER, PASSWORD, REDIRECT, SmartApp, cli

SCOPE = ["openid", "fhirUser", "offline_access", "user/*.rs"]
BOOT = ("boot", "boot-secret-1")


class Launch(SmartApp):
    def __init__(self, server: ServerProcess, bob_totp: str) -> None:
        super().__init__(server.root, server.base, "app", SCOPE)
        self.server = server
        self.bob_totp = bob_totp

    def code_flow(self, username: str = "alice", totp: str = "") -> tuple[OAuth2Session, dict]:  # type: ignore[override]
        return super().code_flow(username, PASSWORD, totp)

    def jwks(self) -> KeySet:
        return KeySet.import_key_set(requests.get(self.server.root + "/auth/jwks", timeout=10).json())


@pytest.fixture(scope="module")
def launch(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Launch]:
    data = tmp_path_factory.mktemp("authorize")
    where = ("--database-url", database_url, "--data-dir", str(data))
    cli("users", "add", *where, "alice", "--password-stdin", "--fhir-user", "Practitioner/p1",
         "--organization", "Organization/o1", "--role", "expert")  # fmt: skip
    cli("users", "add", *where, "bob", "--password-stdin")
    cli("users", "add", *where, "carol", "--password-stdin")
    bob_uri = subprocess.run([FHIR_SERVER, "users", "totp", *where, "bob"], capture_output=True, text=True, timeout=60)
    cli("clients", "add", *where, "app", "--auth-method", "none", "--grant-type", "authorization_code",
         "--grant-type", "refresh_token", "--redirect-uri", REDIRECT, "--scope", " ".join(SCOPE))  # fmt: skip
    server = ServerProcess(database_url, data, auth=True, args=("--bootstrap-client", ":".join(BOOT)))
    yield Launch(server, pyotp.parse_uri(bob_uri.stdout.strip()).secret)
    server.stop()


def test_discovery_names_the_authorization_endpoint(launch: Launch) -> None:
    conf = requests.get(launch.server.base + "/.well-known/smart-configuration", timeout=10).json()
    assert conf["authorization_endpoint"] == launch.authorize_url
    assert {"launch-standalone", "client-public", "sso-openid-connect"} <= set(conf["capabilities"])
    assert conf["code_challenge_methods_supported"] == ["S256"]


def test_code_flow_with_pkce_gives_tokens_and_an_id_token(launch: Launch) -> None:
    _, token = launch.code_flow()
    assert token["token_type"] == "Bearer" and set(token["scope"]) == set(SCOPE)
    assert token["refresh_token"]
    id_token = jwt.decode(token["id_token"], launch.jwks()).claims
    assert id_token["iss"] == launch.server.root + "/auth" and id_token["aud"] == ["app"]
    assert id_token["sub"] == "alice" and id_token["fhirUser"] == launch.server.base + "/Practitioner/p1"
    access = jwt.decode(token["access_token"], launch.jwks()).claims
    assert access["sub"] == "alice" and access["fhirUser"] == "Practitioner/p1"
    assert access["organization"] == "Organization/o1"
    assert access["roles"] == ["expert"]
    # user/ scopes, within the institution's data and the roles: o1 has stored nothing yet
    bearer = {"Authorization": f"Bearer {token['access_token']}"}
    resp = requests.get(launch.server.base + "/Patient", headers=bearer, timeout=10)
    assert resp.status_code == 200 and resp.json().get("entry", []) == []
    resp = requests.get(launch.server.base + "/Patient/$reindex", headers=bearer, timeout=10)
    assert resp.status_code in (403, 404, 405)
    resp = requests.delete(launch.server.base + "/Patient?name=x", headers=bearer, timeout=10)
    assert resp.status_code == 403  # user/*.rs: no delete


def test_refresh_tokens_rotate(launch: Launch) -> None:
    _, token = launch.code_flow()
    form = {"grant_type": "refresh_token", "refresh_token": token["refresh_token"], "client_id": "app"}
    first = requests.post(launch.token_url, data=form, timeout=10)
    assert first.status_code == 200 and first.json()["refresh_token"] != token["refresh_token"]
    again = requests.post(launch.token_url, data=form, timeout=10)
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"


def test_a_code_works_once_and_only_with_its_verifier(launch: Launch) -> None:
    session = launch.oauth()
    url, _ = session.authorization_url(launch.authorize_url)
    browser = requests.Session()
    logged_in = launch.login(browser, url, "alice", PASSWORD)
    back = browser.get(launch.server.root + "/auth/" + logged_in.headers["Location"], allow_redirects=False)
    code = urllib.parse.parse_qs(urllib.parse.urlsplit(back.headers["Location"]).query)["code"][0]
    form = {"grant_type": "authorization_code", "code": code, "redirect_uri": REDIRECT, "client_id": "app"}
    wrong = requests.post(launch.token_url, data={**form, "code_verifier": "x" * 50}, timeout=10)
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    right = requests.post(launch.token_url, data={**form, "code_verifier": session._code_verifier}, timeout=10)
    assert right.status_code in (200, 400)  # the wrong attempt may have spent it; either way:
    replay = requests.post(launch.token_url, data={**form, "code_verifier": session._code_verifier}, timeout=10)
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


def test_pkce_is_required(launch: Launch) -> None:
    query = urllib.parse.urlencode({"response_type": "code", "client_id": "app", "redirect_uri": REDIRECT,
                                    "scope": "openid", "state": "s"})  # fmt: skip
    resp = requests.get(f"{launch.authorize_url}?{query}", timeout=10, allow_redirects=False)
    assert resp.status_code == 400 and "code_challenge" in resp.text


def test_wrong_password_then_lockout_says_until_when(launch: Launch) -> None:
    url, _ = launch.oauth().authorization_url(launch.authorize_url)
    browser = requests.Session()
    first = launch.login(browser, url, "carol", "wrong-password-1")
    assert first.status_code == 401 and "Sign in" in first.text
    for _ in range(4):
        last = launch.login(browser, url, "carol", "wrong-password-1")
    assert last.status_code == 401 and re.search(r"until \d{4}-\d\d-\d\dT", last.text), last.text
    locked = launch.login(browser, url, "carol", PASSWORD)  # even the right password, while locked
    assert locked.status_code == 401 and "until" in locked.text


def test_totp_is_asked_for_and_checked(launch: Launch) -> None:
    url, _ = launch.oauth().authorization_url(launch.authorize_url)
    missing = launch.login(requests.Session(), url, "bob", PASSWORD)
    assert missing.status_code == 401
    _, token = launch.code_flow("bob", pyotp.TOTP(launch.bob_totp).now())
    assert token["access_token"]


def test_logins_and_failures_are_audited(launch: Launch) -> None:
    launch.code_flow()
    form = {"grant_type": "client_credentials", "scope": "system/*.*"}
    boot = requests.post(launch.token_url, data=form, auth=BOOT, timeout=10).json()["access_token"]
    time.sleep(0.4)  # the writer stores every 0.1 s in tests (--audit-interval)
    found = requests.get(launch.server.base + "/AuditEvent", params={"type": "110114", "_count": "200"},
                         headers={"Authorization": f"Bearer {boot}"}, timeout=10).json()  # fmt: skip
    events = [e["resource"] for e in found.get("entry", [])]
    text = json.dumps(events)
    assert "110122" in text  # Login
    assert any(e["outcome"] == "0" for e in events) and any(e["outcome"] == "4" for e in events)
