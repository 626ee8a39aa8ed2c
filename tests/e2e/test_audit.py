"""Audit against a real server: BALP records of what clients did, the ITI-81 search, the
append-only store and its hash chain (issue 5, item 7), on SQLite and PostgreSQL."""

from __future__ import annotations

import base64
import json
import pathlib
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import pytest
import requests
from sqlalchemy import text

from fhir_server.storage.engine import make_engine
from tests.conftest import ServerProcess

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))
BOOT = ("auditor", "auditor-secret-1")


class Audited:
    def __init__(self, server: ServerProcess, database_url: str, data: pathlib.Path) -> None:
        self.server = server
        self.database_url = database_url
        self.data = data
        form = {"grant_type": "client_credentials", "scope": "system/*.*"}
        self.token = requests.post(server.root + "/auth/token", data=form, auth=BOOT, timeout=10).json()["access_token"]

    def call(
        self, method: str, path: str, body: dict | None = None, headers: dict | None = None, **kw: object
    ) -> requests.Response:
        headers = {"Authorization": f"Bearer {self.token}", "Content-Type": "application/fhir+json", **(headers or {})}
        data = json.dumps(body) if body is not None else None
        return requests.request(method, f"{self.server.base}/{path}", headers=headers, data=data, timeout=10, **kw)

    def events(self, **params: str) -> list[dict]:
        """AuditEvents by ITI-81 search, after the workers' batches reached the store."""
        time.sleep(0.4)  # the writer stores every 0.1 s in tests (--audit-interval)
        resp = self.call("GET", "AuditEvent", params={"_count": "1000", **params})
        assert resp.status_code == 200, resp.text
        return [e["resource"] for e in resp.json().get("entry", [])]

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        where = ("--database-url", self.database_url, "--data-dir", str(self.data))
        return subprocess.run([FHIR_SERVER, *args[:2], *where, *args[2:]], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def audited(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Audited]:
    data = tmp_path_factory.mktemp("audit")
    server = ServerProcess(database_url, data, auth=True, args=("--bootstrap-client", ":".join(BOOT)))
    yield Audited(server, database_url, data)
    server.stop()


def _codes(event: dict, key: str) -> list[str]:
    value = event.get(key)
    items = value if isinstance(value, list) else [value] if value else []
    return [c.get("code") for c in items]


def _agent_roles(event: dict) -> dict[str, str]:
    """network address (client) or observer (server) -> its type code"""
    return {
        ("client" if a.get("network", {}).get("address") == "127.0.0.1" else a["who"].get("display", "?")): a["type"][
            "coding"
        ][0]["code"]
        for a in event["agent"]
        if a.get("type", {}).get("coding")
    }


def test_reads_writes_and_searches_are_recorded_per_balp(audited: Audited) -> None:
    marker = uuid.uuid4().hex
    created = audited.call("POST", "Patient", {"resourceType": "Patient", "identifier": [{"value": marker}]})
    pid = created.json()["id"]
    obs = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "subject": {"reference": f"Patient/{pid}"},
    }
    oid = audited.call("POST", "Observation", obs).json()["id"]
    assert audited.call("GET", f"Observation/{oid}", headers={"X-Request-Id": f"req-{marker}"}).status_code == 200
    assert audited.call("GET", "Observation", params={"subject": f"Patient/{pid}", "code": "x"}).status_code == 200

    events = audited.events(patient=f"Patient/{pid}")
    subtypes = sorted(_codes(e, "subtype")[0] for e in events)
    assert subtypes == ["create", "create", "read", "search-type"]
    read = next(e for e in events if _codes(e, "subtype")[0] == "read")
    assert read["action"] == "R" and read["outcome"] == "0"
    roles = {a["type"]["coding"][0]["code"] for a in read["agent"] if a.get("type", {}).get("coding")}
    assert "110152" in roles and "110153" in roles  # read: the client is the Destination
    entities = {e.get("role", {}).get("code"): e for e in read["entity"]}
    assert entities["1"]["what"]["reference"] == f"Patient/{pid}"  # entity[patient]
    assert entities["4"]["what"]["reference"].startswith(f"Observation/{oid}")
    assert any(e.get("what", {}).get("identifier", {}).get("value") == f"req-{marker}" for e in read["entity"])
    search = next(e for e in events if _codes(e, "subtype")[0] == "search-type")
    query = next(e for e in search["entity"] if e.get("role", {}).get("code") == "24")
    assert base64.b64decode(query["query"]).decode() == f"subject=Patient/{pid}&code=x"
    assert audited.token not in json.dumps(events)  # never the whole token
    assert any(audited.token[-16:] in json.dumps(e) for e in events)


def test_refusals_and_failures_are_recorded(audited: Audited) -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1)) + "Z"
    assert requests.get(f"{audited.server.base}/Patient", timeout=10).status_code == 401
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    assert audited.call("GET", f"Observation/{missing}").status_code == 404
    events = audited.events(date=f"ge{since}", outcome="4")
    refs = [str(x.get("what", {}).get("reference", "")) for e in events for x in e.get("entity", [])]
    assert any(ref.endswith(missing) for ref in refs)
    assert any("access token" in e.get("outcomeDesc", "") for e in events)  # the 401


def test_a_failed_transaction_records_its_entries_as_rolled_back(audited: Audited) -> None:
    marker = uuid.uuid4().hex
    patient = {"resourceType": "Patient", "identifier": [{"value": marker}]}
    bad = {"resourceType": "Observation", "status": "bogus"}
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": patient,
                "request": {"method": "POST", "url": "Patient"},
            },
            {"resource": bad, "request": {"method": "POST", "url": "Observation"}},
        ],
    }
    assert audited.call("POST", "", bundle).status_code == 422
    creates = [e for e in audited.events(subtype="create", outcome="4") if "rolled back" in e.get("outcomeDesc", "")]
    assert creates, "the Patient entry that had succeeded is recorded as rolled back"


def test_iti81_search_parameters(audited: Audited) -> None:
    audited.call("GET", "metadata")
    everything = audited.events()
    assert everything and all(e["resourceType"] == "AuditEvent" for e in everything)
    newest, oldest = audited.events(_sort="-date", _count="1"), audited.events(_sort="date", _count="1")
    assert newest[0]["recorded"] >= oldest[0]["recorded"]
    assert all(_codes(e, "subtype")[0] == "read" for e in audited.events(subtype="read"))
    assert audited.events(address="203.0.113.9") == []
    assert audited.call("GET", "AuditEvent", params={"nonsense": "1"}).status_code == 400
    one = everything[0]
    assert audited.call("GET", f"AuditEvent/{one['id']}").json() == one


def test_the_store_cannot_be_changed_through_the_api(audited: Audited) -> None:
    event = audited.events()[0]
    for method in ("PUT", "DELETE", "PATCH"):
        assert audited.call(method, f"AuditEvent/{event['id']}", event).status_code == 405
    # ITI-20 FHIR Feed: another system appends its own event
    fed = {**{k: v for k, v in event.items() if k not in ("id", "meta")}, "outcomeDesc": "fed by a test"}
    created = audited.call("POST", "AuditEvent", fed)
    assert created.status_code == 201 and created.json()["outcomeDesc"] == "fed by a test"
    assert audited.call("POST", "AuditEvent", {"resourceType": "AuditEvent"}).status_code == 422


def test_verify_detects_tampering(audited: Audited) -> None:
    audited.events()  # everything so far is in the store
    ok = audited.cli("audit", "verify")
    assert ok.returncode == 0 and "intact" in ok.stdout, ok.stdout + ok.stderr
    engine = make_engine(audited.database_url)
    with engine.begin() as conn:
        seq = conn.execute(text("SELECT MAX(seq) FROM audit_events")).scalar_one() - 1
        conn.execute(text("UPDATE audit_events SET content = content || ' ' WHERE seq = :s"), {"s": seq})
    broken = audited.cli("audit", "verify")
    assert broken.returncode == 1 and f"BROKEN at record {seq}" in broken.stdout, broken.stdout
    engine.dispose()


def test_purge_keeps_a_year(audited: Audited) -> None:
    refused = audited.cli("audit", "purge", "--before", time.strftime("%Y-%m-%d"))
    assert refused.returncode != 0 and "retention" in refused.stderr
