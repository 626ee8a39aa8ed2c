"""``fhir-server serve --demo`` (issue 6, item 8): a newcomer starts the server and finds a
bilingual network — institutions, experts with free slots, patients, a consultation in every state,
a multi-centre consultation whose overdue invitation is flagged and reminded — and accounts for
each role. Started as a user would, with auth on and two workers, read with the bootstrap client;
on each database, and started twice to show the demo is stored once."""

from __future__ import annotations

import pathlib
import subprocess
import sys
import time
from typing import Any

import pytest
import requests

from fhir_server.demo import ACCOUNTS, CONSULTATIONS, ORGANIZATIONS
from fhir_server.workflow.machine import TASK_STATUS
from tests.conftest import ServerProcess, fresh_database

NUMBER = "http://fhir.telefhir.cn/sid/consultation-number"
WORKFLOW = "http://fhir.telefhir.cn/CodeSystem/consultation-workflow"
SERVICE = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"
CLIENT = ("demo-test", "demo-test-secret-1")
ARGS = ("--demo", "--bootstrap-client", ":".join(CLIENT), "--sweep-interval", "0.5")
FHIR_SERVER = pathlib.Path(sys.executable).with_name("fhir-server")


def _headers(server: ServerProcess) -> dict[str, str]:
    body = {"grant_type": "client_credentials", "scope": "system/*.*"}
    resp = requests.post(f"{server.root}/auth/token", data=body, auth=CLIENT, timeout=30)
    assert resp.status_code == 200, resp.text
    return {"Authorization": f"Bearer {resp.json()['access_token']}"}


def _found(server: ServerProcess, headers: dict[str, str], query: str) -> list[dict[str, Any]]:
    resp = requests.get(f"{server.base}/{query}", headers=headers, timeout=30)
    assert resp.status_code == 200, resp.text
    return [e["resource"] for e in resp.json().get("entry", [])]


def _eventually(server: ServerProcess, headers: dict[str, str], query: str, count: int) -> list[dict[str, Any]]:
    """What ``query`` finds once it finds ``count`` (or after 15 s)."""
    deadline = time.monotonic() + 15
    while True:
        found = _found(server, headers, query)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.25)


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_the_demo_network_is_there_at_once(kind: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    with fresh_database(kind, tmp_path_factory) as url:
        data = tmp_path_factory.mktemp("demo")
        for _ in range(2):  # the second start finds the demo and stores nothing again
            server = ServerProcess(url, data, workers=2, auth=True, args=ARGS)
            try:
                headers = _headers(server)
                names = {o["id"]: o["name"] for o in _found(server, headers, "Organization?_count=100")}
                for org_id, zh, en, _kind in ORGANIZATIONS:
                    assert names[org_id] == f"{zh} {en}"  # bilingual
                tasks = _found(server, headers, f"Task?_count=200&code:below={SERVICE}|teleconsultation")
                assert {t["businessStatus"]["coding"][0]["code"] for t in tasks} == set(TASK_STATUS)
                assert len(tasks) == len(CONSULTATIONS) + 3  # eleven states and a multi-centre of three
                assert all(
                    any(i["system"] == NUMBER for i in r["identifier"])
                    for r in _found(server, headers, "ServiceRequest?_count=200")
                )
                assert len(_found(server, headers, "Slot?status=free&_count=200")) == 80
                patients = {p["name"][0]["text"] for p in _found(server, headers, "Patient?_count=50")}
                assert {"王秀英", "李建国"} <= patients
                # the invitation left unanswered past its 24 hours is flagged and reminded, once
                flagged = _eventually(server, headers, f"Task?_tag={WORKFLOW}|invitation-overdue", 1)
                assert [t["id"] for t in flagged] == ["demo-multicentre-invitation-3"]
                # and the follow-up due tomorrow morning is reminded, once
                plans = _found(server, headers, f"CarePlan?category={WORKFLOW}|follow-up")
                assert len(plans) == 1 and plans[0]["activity"][0]["detail"]["status"] == "scheduled"
                reminders = _eventually(server, headers, "Communication?category=reminder", 2)
                about = sorted(r["about"][0]["reference"].split("/")[0] for r in reminders)
                assert about == ["CarePlan", "Task"]
            finally:
                server.stop()
        listed = subprocess.run(
            [str(FHIR_SERVER), "users", "list", "--database-url", url, "--data-dir", str(data)],
            capture_output=True, text=True, timeout=120, check=True,
        ).stdout  # fmt: skip
        for username, role, *_ in ACCOUNTS:
            assert username in listed and role in listed
