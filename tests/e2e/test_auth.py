"""OAuth2/SMART against a real server process with real OAuth clients (issue 5, item 1 and 8).

Clients are registered with the ``fhir-server clients`` command before the server starts; the
bootstrap client comes from ``--bootstrap-client`` as ``FHIR_SERVER_BOOTSTRAP_CLIENT`` would give
it. Tokens are fetched with requests-oauthlib (client secret) and authlib (``private_key_jwt``,
SMART Backend Services), then used with plain HTTP.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from authlib.integrations.requests_client import OAuth2Session as AuthlibSession
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc import jws, jwt
from joserfc.jwk import RSAKey
from oauthlib.oauth2 import BackendApplicationClient
from requests_oauthlib import OAuth2Session

from tests.conftest import ServerProcess
from tests.smart import cli

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))
BOOT = ("boot", "boot-secret-1")
READER = ("reader", "reader-secret-1")


class Secured:
    def __init__(self, server: ServerProcess, backend_key: RSAKey, database_url: str, data: pathlib.Path) -> None:
        self.server = server
        self.database_url = database_url
        self.data = data
        self.base = server.base
        self.token_url = server.root + "/auth/token"
        self.backend_key = backend_key

    def token(self, client: tuple[str, str], scope: str) -> dict:
        session = OAuth2Session(client=BackendApplicationClient(client_id=client[0]))
        return session.fetch_token(self.token_url, client_id=client[0], client_secret=client[1], scope=scope.split())

    def get(self, path: str, token: str | None, **kw: object) -> requests.Response:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return requests.get(f"{self.base}/{path}", headers=headers, timeout=10, **kw)

    def post(self, path: str, token: str | None, body: dict) -> requests.Response:
        headers = {"Content-Type": "application/fhir+json"}
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return requests.post(f"{self.base}/{path}", headers=headers, data=json.dumps(body), timeout=10)


@pytest.fixture(scope="module")
def secured(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    data = tmp_path_factory.mktemp("auth")
    where = ("--database-url", database_url, "--data-dir", str(data))
    key = RSAKey.generate_key(2048, parameters={"kid": "backend-1", "alg": "RS384"}, private=True)
    jwks = data / "backend.jwks.json"
    jwks.write_text(json.dumps({"keys": [key.as_dict(private=False)]}))
    cli("clients", "add", *where, READER[0], "--secret", READER[1], "--scope", "system/Patient.rs")
    cli("clients", "add", *where, "backend", "--jwks", str(jwks), "--scope", "system/*.read")
    server = ServerProcess(database_url, data, auth=True, args=("--bootstrap-client", ":".join(BOOT)))
    yield Secured(server, key, database_url, data)
    server.stop()


def test_metadata_and_discovery_need_no_token(secured: Secured) -> None:
    assert secured.get("metadata", None).status_code == 200
    conf = secured.get(".well-known/smart-configuration", None).json()
    assert conf["token_endpoint"] == secured.token_url
    assert "private_key_jwt" in conf["token_endpoint_auth_methods_supported"]
    assert {"permission-v1", "permission-v2", "client-confidential-asymmetric"} <= set(conf["capabilities"])


def test_no_token_is_401_with_www_authenticate(secured: Secured) -> None:
    resp = secured.get("Patient", None)
    assert resp.status_code == 401
    assert resp.headers["WWW-Authenticate"] == 'Bearer realm="telefhir"'
    assert resp.json()["issue"][0]["code"] == "login"
    bad = secured.get("Patient", "not.a.token")
    assert bad.status_code == 401 and 'error="invalid_token"' in bad.headers["WWW-Authenticate"]
    basic = requests.get(f"{secured.base}/Patient", auth=BOOT, timeout=10)
    assert basic.status_code == 401 and 'error="invalid_request"' in basic.headers["WWW-Authenticate"]


def test_bootstrap_client_reads_and_writes(secured: Secured) -> None:
    token = secured.token(BOOT, "system/*.*")
    assert token["token_type"] == "Bearer" and token["scope"] == ["system/*.*"] and token["expires_in"] > 0
    created = secured.post("Patient", token["access_token"], {"resourceType": "Patient", "gender": "female"})
    assert created.status_code == 201
    pid = created.json()["id"]
    assert secured.get(f"Patient/{pid}", token["access_token"]).status_code == 200
    assert secured.get("Patient", token["access_token"], params={"_id": pid}).json()["total"] == 1


def test_wrong_secret_and_unknown_client_are_refused(secured: Secured) -> None:
    for client in ((BOOT[0], "wrong"), ("nobody", "x")):
        resp = requests.post(
            secured.token_url, data={"grant_type": "client_credentials", "scope": "system/*.*"}, auth=client, timeout=10
        )
        assert resp.status_code in (400, 401) and resp.json()["error"] == "invalid_client"


def test_scopes_limit_what_a_token_may_do(secured: Secured) -> None:
    boot = secured.token(BOOT, "system/*.*")["access_token"]
    pid = secured.post("Patient", boot, {"resourceType": "Patient"}).json()["id"]
    token = secured.token(READER, "system/Patient.read")
    assert token["scope"] == ["system/Patient.read"]
    reader = token["access_token"]
    assert secured.get(f"Patient/{pid}", reader).status_code == 200
    assert secured.get("Patient", reader).status_code == 200
    refused = secured.post("Patient", reader, {"resourceType": "Patient"})
    assert refused.status_code == 403
    assert "system/Patient.c" in refused.json()["issue"][0]["diagnostics"]
    assert secured.get("Observation", reader).status_code == 403
    assert secured.get("", reader).status_code == 403  # a system-wide search needs system/*.s
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": {"resourceType": "Patient"}, "request": {"method": "POST", "url": "Patient"}}],
    }
    before = secured.get("Patient", boot, params={"_summary": "count"}).json()["total"]
    assert secured.post("", reader, bundle).status_code == 403
    assert secured.get("Patient", boot, params={"_summary": "count"}).json()["total"] == before
    batch = {**bundle, "type": "batch"}
    answered = secured.post("", reader, batch).json()
    assert answered["entry"][0]["response"]["status"].startswith("403")


def test_a_client_is_never_granted_more_than_it_registered(secured: Secured) -> None:
    resp = requests.post(
        secured.token_url, data={"grant_type": "client_credentials", "scope": "system/*.*"}, auth=READER, timeout=10
    )
    assert resp.status_code == 400 and resp.json()["error"] == "invalid_scope"
    unknown = requests.post(
        secured.token_url, data={"grant_type": "client_credentials", "scope": "system/Patient.zz"}, auth=READER,
        timeout=10,
    )  # fmt: skip
    assert unknown.status_code == 400 and unknown.json()["error"] == "invalid_scope"


def test_introspection_and_revocation(secured: Secured) -> None:
    token = secured.token(BOOT, "system/*.read")["access_token"]
    active = requests.post(secured.server.root + "/auth/introspect", data={"token": token}, auth=BOOT, timeout=10)
    body = active.json()
    assert body["active"] is True and body["client_id"] == BOOT[0] and body["scope"] == "system/*.read"
    other = requests.post(secured.server.root + "/auth/introspect", data={"token": token}, auth=READER, timeout=10)
    assert other.json().get("active") is not True  # not the reader's token
    assert secured.get("Patient", token).status_code == 200
    revoked = requests.post(secured.server.root + "/auth/revoke", data={"token": token}, auth=BOOT, timeout=10)
    assert revoked.status_code == 200
    resp = secured.get("Patient", token)
    assert resp.status_code == 401 and "revoked" in resp.json()["issue"][0]["diagnostics"]
    after = requests.post(secured.server.root + "/auth/introspect", data={"token": token}, auth=BOOT, timeout=10)
    assert after.json() == {"active": False}


def test_backend_services_private_key_jwt(secured: Secured) -> None:
    session = AuthlibSession(
        "backend",
        secured.backend_key.as_pem(private=True),
        token_endpoint_auth_method=PrivateKeyJWT(secured.token_url, alg="RS384"),
        scope="system/Patient.rs",
    )
    token = session.fetch_token(secured.token_url, grant_type="client_credentials")
    assert token["scope"] == "system/Patient.rs"
    assert secured.get("Patient", token["access_token"]).status_code == 200
    header = jws.extract_compact(token["access_token"].encode()).headers()
    kids = {k["kid"] for k in requests.get(secured.server.root + "/auth/jwks", timeout=10).json()["keys"]}
    assert header["kid"] in kids


def test_a_replayed_client_assertion_is_refused(secured: Secured) -> None:
    now = int(time.time())
    claims = {"iss": "backend", "sub": "backend", "aud": secured.token_url, "exp": now + 240, "jti": str(uuid.uuid4())}
    assertion = jwt.encode({"alg": "RS384", "kid": "backend-1"}, claims, secured.backend_key, algorithms=["RS384"])
    form = {
        "grant_type": "client_credentials",
        "scope": "system/Patient.rs",
        "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
        "client_assertion": assertion,
    }
    assert requests.post(secured.token_url, data=form, timeout=10).status_code == 200
    replay = requests.post(secured.token_url, data=form, timeout=10)
    assert replay.status_code in (400, 401) and replay.json()["error"] == "invalid_client"
    wrong_audience = {**form, "client_assertion": jwt.encode(
        {"alg": "RS384", "kid": "backend-1"}, {**claims, "jti": str(uuid.uuid4()), "aud": "https://elsewhere/token"},
        secured.backend_key, algorithms=["RS384"],
    )}  # fmt: skip
    assert requests.post(secured.token_url, data=wrong_audience, timeout=10).json()["error"] == "invalid_client"


def test_capability_statement_names_the_oauth_endpoints(secured: Secured) -> None:
    security = secured.get("metadata", None).json()["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == secured.token_url


def test_a_client_with_a_signing_secret_must_sign_every_request(secured: Secured) -> None:
    from fhir_server.security.signatures import sign

    where = ("--database-url", secured.database_url, "--data-dir", str(secured.data))
    cli("clients", "add", *where, "signer", "--secret", "signer-secret-1", "--scope", "system/Patient.rs")
    made = subprocess.run([FHIR_SERVER, "clients", "signing-secret", *where, "signer"], capture_output=True,
                          text=True, timeout=60)  # fmt: skip
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().encode()
    token = secured.token(("signer", "signer-secret-1"), "system/Patient.rs")["access_token"]
    unsigned = secured.get("Patient", token)
    assert unsigned.status_code == 401 and "must sign" in unsigned.json()["issue"][0]["diagnostics"]
    query = "name=王&_count=5"
    headers = {"Authorization": f"Bearer {token}", "X-Api-Key": "signer"}
    headers |= sign(secret, method="GET", path="/fhir/Patient", query=query, body=b"")
    ok = requests.get(f"{secured.base}/Patient?{query}", headers=headers, timeout=10)
    assert ok.status_code == 200, ok.text
    replayed = requests.get(f"{secured.base}/Patient?{query}", headers=headers, timeout=10)
    assert replayed.status_code == 401 and "nonce" in replayed.json()["issue"][0]["diagnostics"]
    tampered = {**headers, **sign(secret, method="GET", path="/fhir/Patient", query=query, body=b"")}
    assert requests.get(f"{secured.base}/Patient?name=other", headers=tampered, timeout=10).status_code == 401
