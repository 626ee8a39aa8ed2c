"""Two institutions on a real server, for the end-to-end tests: each with its own OAuth client
(client credentials, authlib), people of each signing in through the login page with a SMART app
(tests/smart.py), fhirpy as the FHIR client. Two worker processes serve."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import requests
from authlib.integrations.requests_client import OAuth2Session
from fhirpy import SyncFHIRClient

from tests.conftest import ServerProcess
from tests.smart import PASSWORD, REDIRECT, SmartApp, cli

BOOT = ("boot", "boot-secret-1")
SCOPE = ["openid", "fhirUser", "user/*.cruds"]
LAUNCH_SCOPE = ["launch", "patient/*.rs", "openid", "fhirUser"]


class Network:
    def __init__(self, server: ServerProcess, a: str, b: str) -> None:
        self.server = server
        self.a, self.b = a, b
        self.app = SmartApp(server.root, server.base, "app", SCOPE)
        self.sessions: dict[str, requests.Session] = {}

    def client_session(self, client_id: str) -> requests.Session:
        session = OAuth2Session(client_id, f"{client_id}-secret-1", scope="system/*.*")
        session.fetch_token(self.server.root + "/auth/token", grant_type="client_credentials")
        return session

    def user_session(self, username: str) -> requests.Session:
        _, token = self.app.code_flow(username, PASSWORD)
        session = requests.Session()
        session.headers["Authorization"] = f"Bearer {token['access_token']}"
        return session

    def fhirpy(self, who: str) -> SyncFHIRClient:
        token = self.sessions[who].headers.get("Authorization") or f"Bearer {self.sessions[who].token['access_token']}"
        return SyncFHIRClient(self.server.base, authorization=token)

    def call(self, who: str, method: str, path: str, body: Any = None) -> requests.Response:
        headers = {"Content-Type": "application/fhir+json"} if body is not None else {}
        data = json.dumps(body) if body is not None else None
        return self.sessions[who].request(method, f"{self.server.base}/{path}", data=data, headers=headers, timeout=15)

    def create(self, who: str, resource: dict[str, Any]) -> str:
        resp = self.call(who, "POST", resource["resourceType"], resource)
        assert resp.status_code == 201, resp.text
        return str(resp.json()["id"])


def consent(patient: str, *permits: tuple[str, str | None, list[dict[str, str]] | None]) -> dict[str, Any]:
    provisions = []
    for action, actor, labels in permits:
        prov: dict[str, Any] = {"type": "permit", "action": [{"coding": [{"code": action}]}]}
        if actor:
            prov["actor"] = [{"role": {"text": "recipient"}, "reference": {"reference": f"Organization/{actor}"}}]
        if labels:
            prov["securityLabel"] = labels
        provisions.append(prov)
    return {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/consentscope", "code": "patient-privacy"}]
        },
        "category": [{"coding": [{"system": "http://loinc.org", "code": "59284-0"}]}],
        "patient": {"reference": f"Patient/{patient}"},
        "provision": {"type": "deny", "provision": provisions},
    }


@contextmanager
def two_institutions(database_url: str, data: Path, users: tuple[tuple[str, str, str], ...] = ()) -> Iterator[Network]:
    """A server with institutions ``a`` and ``b`` (random ids), their system clients ``a-sys`` and
    ``b-sys`` signed in as sessions "a" and "b", the SMART app and ``users`` (username, "a" or "b",
    role), whose password is tests/smart.py's."""
    where = ("--database-url", database_url, "--data-dir", str(data))
    a, b = f"a-{uuid.uuid4().hex[:8]}", f"b-{uuid.uuid4().hex[:8]}"
    for client, org in (("a-sys", a), ("b-sys", b)):
        cli(
            "clients", "add", *where, client, "--secret", f"{client}-secret-1", "--scope", "system/*.*",
            "--organization", f"Organization/{org}",
        )  # fmt: skip
    cli("clients", "add", *where, "app", "--auth-method", "none", "--grant-type", "authorization_code",
         "--redirect-uri", REDIRECT, "--scope", " ".join(SCOPE + LAUNCH_SCOPE))  # fmt: skip
    for username, which, role in users:
        org = a if which == "a" else b
        cli("users", "add", *where, username, "--password-stdin", "--organization", f"Organization/{org}",
            "--role", role)  # fmt: skip
    server = ServerProcess(database_url, data, workers=2, auth=True, args=("--bootstrap-client", ":".join(BOOT)))
    net = Network(server, a, b)
    try:
        net.sessions["boot"] = net.client_session("boot")
        for org in (a, b):
            resp = net.call(
                "boot", "PUT", f"Organization/{org}", {"resourceType": "Organization", "id": org, "name": org}
            )
            assert resp.status_code == 201, resp.text
        net.sessions["a"] = net.client_session("a-sys")
        net.sessions["b"] = net.client_session("b-sys")
        yield net
    finally:
        server.stop()
