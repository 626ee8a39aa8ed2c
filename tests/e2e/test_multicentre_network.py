"""One multi-centre consultation across ten institutions (issue 6, tests): invitations, answers,
data requests, the package, opinions, the merged report and the archive, over HTTP against a real
server with auth on and two workers, every institution a client of its own, with its
notifications consumed from RabbitMQ. The driver is the benchmark's (scripts/bench/consultations
runs fifty of these at once); here one runs and its outcome is checked."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import pathlib
import sys
import time
import uuid
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from tests.conftest import ServerProcess, fresh_database

BENCH = pathlib.Path(__file__).resolve().parents[2] / "scripts" / "bench" / "consultations"
WORKFLOW = "http://fhir.telefhir.cn/CodeSystem/consultation-workflow"
SERVICE = "http://fhir.telefhir.cn/CodeSystem/telemedicine-service-type"


def _driver() -> ModuleType:
    sys.path.insert(0, str(BENCH.parent))  # its _benchlib
    loader = importlib.machinery.SourceFileLoader("bench_consultations", str(BENCH))
    spec = importlib.util.spec_from_loader(loader.name, loader)
    module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    loader.exec_module(module)
    return module


def _received(consumers: Any, inst: str, topic: str) -> int:
    with consumers.lock:
        return int(consumers.received[(inst, topic)])


@pytest.mark.parametrize("kind", ["sqlite", "postgres"])
def test_one_consultation_across_ten_institutions_from_invitation_to_archive(
    kind: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    driver = _driver()
    with fresh_database(kind, tmp_path_factory) as url:
        data = tmp_path_factory.mktemp("multicentre-10")
        server = ServerProcess(
            url, data, workers=2, auth=True, args=("--bootstrap-client", ":".join(driver.bl.BOOTSTRAP))
        )
        consumers = None
        try:
            handle = SimpleNamespace(port=server.port, base=server.base, database_url=url, data_dir=data)
            institutions, consumers = driver.network(handle, 10, f"telefhir-e2e-{uuid.uuid4().hex[:8]}")
            steps = driver.Timings()
            driver.consultation(0, institutions, steps)  # raises on any refused request
            assert set(steps.by_step) == set(driver.STEPS)
            leader, participants = institutions[0], institutions[1:]

            invitations = leader.call("GET", f"Task?code={SERVICE}|teleconsultation-multicentre&_count=50")["entry"]
            assert len(invitations) == 9
            assert {e["resource"]["businessStatus"]["coding"][0]["code"] for e in invitations} == {"published"}
            archives = leader.call("GET", f"Bundle?_tag={WORKFLOW}|consultation-archive")["entry"]
            [archive] = [e["resource"] for e in archives]
            kinds = {e["resource"]["resourceType"] for e in archive["entry"]}
            assert {"ServiceRequest", "Patient", "Task", "Observation", "DocumentReference"} <= kinds
            corrections = leader.call("GET", f"Task?code={WORKFLOW}|data-correction").get("entry", [])
            assert corrections == []  # the results provided were complete
            for participant in participants:  # the report reached every participant
                found = participant.call("GET", "DocumentReference?status=current")["entry"]
                assert len(found) == 1

            # every institution's queue: each participant its invitation's six steps, all nine opinions and
            # the report; the leader the opinions and the report
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                done = (
                    all(
                        _received(consumers, p.id, "consultation") >= 6
                        and _received(consumers, p.id, "opinion") >= 9
                        and _received(consumers, p.id, "report") >= 1
                        for p in participants
                    )
                    and _received(consumers, leader.id, "opinion") >= 9
                )
                if done:
                    break
                time.sleep(0.2)
            short = [
                (p.id, topic, _received(consumers, p.id, topic))
                for p in participants
                for topic, wanted in (("consultation", 6), ("opinion", 9), ("report", 1))
                if _received(consumers, p.id, topic) < wanted
            ]
            assert done, f"short of notifications: {short}"
            assert _received(consumers, leader.id, "report") >= 1
        finally:
            if consumers is not None:
                consumers.close()
            server.stop()
