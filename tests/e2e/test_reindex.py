"""Black-box: a custom SearchParameter across worker processes, and ``fhir-server db reindex``."""

from __future__ import annotations

import json
import pathlib
import re
import subprocess
import sys
import time
import uuid

import requests

from fhir_server.packaged import packaged_resources
from tests.conftest import ServerProcess

FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))
JSON = "application/fhir+json"
EXT = "http://example.org/fhir/StructureDefinition/tcm-constitution"


def _search_parameter(code: str) -> dict:
    return {
        "resourceType": "SearchParameter",
        "url": f"http://example.org/fhir/SearchParameter/{code}",
        "name": code,
        "status": "active",
        "description": "TCM constitution type",
        "code": code,
        "base": ["Observation"],
        "type": "token",
        "expression": f"Observation.extension('{EXT}').value",
    }


def _observation(value: str) -> dict:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "constitution"},
        "extension": [{"url": EXT, "valueCode": value}],
    }


def _fresh(method: str, url: str, **kwargs: object) -> requests.Response:
    """A request on a new connection, so that either worker may accept it."""
    with requests.Session() as s:
        return s.request(method, url, headers={"Connection": "close", "Content-Type": JSON}, **kwargs)


def _counts_by_pid(server: ServerProcess, method: str, status: int) -> dict[str, int]:
    """``fhir_http_requests_total`` per worker pid, scraped until both workers answered."""
    seen: dict[str, int] = {}
    pattern = re.compile(rf'fhir_http_requests_total{{method="{method}",status="{status}",pid="(\d+)"}} (\d+)')
    pids: set[str] = set()
    for _ in range(200):
        text = _fresh("GET", server.root + "/metrics").text
        pids.add(re.search(r'pid="(\d+)"', text).group(1))  # type: ignore[union-attr]
        for pid, n in pattern.findall(text):
            seen[pid] = int(n)
        if len(pids) == 2:
            break
    assert len(pids) == 2, f"only saw workers {pids}"
    return {pid: seen.get(pid, 0) for pid in pids}


def test_parameter_posted_to_one_worker_works_on_the_other(postgres_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    server = ServerProcess(postgres_url, tmp_path, workers=2)
    try:
        code = f"constitution-{uuid.uuid4().hex[:8]}"
        value = f"yang-deficiency-{uuid.uuid4().hex[:6]}"
        before = _fresh("POST", f"{server.base}/Observation", data=json.dumps(_observation(value))).json()["id"]
        created = _fresh("POST", f"{server.base}/SearchParameter", data=json.dumps(_search_parameter(code)))
        assert created.status_code == 201, created.text
        time.sleep(1.5)  # both workers check for new parameters at least once a second
        after = _fresh("POST", f"{server.base}/Observation", data=json.dumps(_observation(value))).json()["id"]
        kickoff = _fresh("POST", f"{server.base}/Observation/$reindex")
        assert kickoff.status_code == 202, kickoff.text
        status_url = kickoff.headers["Content-Location"]
        deadline = time.time() + 120
        while (status := _fresh("GET", status_url)).status_code == 202:  # any worker can answer
            assert "X-Progress" in status.headers
            assert time.time() < deadline, status.headers
            time.sleep(0.2)
        assert status.status_code == 200, status.text

        # HEAD searches by the new parameter on fresh connections, until both workers answered some;
        # a worker that did not know the parameter would answer 400.
        baseline = _counts_by_pid(server, "HEAD", 200)
        for _ in range(20):
            for _ in range(10):
                assert _fresh("HEAD", f"{server.base}/Observation?{code}={value}").status_code == 200
            now = _counts_by_pid(server, "HEAD", 200)
            if all(now[pid] > baseline.get(pid, 0) for pid in now):
                break
        else:
            raise AssertionError(f"the HEAD searches all went to one worker: {baseline} -> {now}")
        assert _counts_by_pid(server, "HEAD", 400) == {pid: 0 for pid in now}
        for _ in range(6):
            bundle = _fresh("GET", f"{server.base}/Observation?{code}={value}").json()
            assert {e["resource"]["id"] for e in bundle["entry"]} == {before, after}

        deleted = _fresh("DELETE", f"{server.base}/SearchParameter/{created.json()['id']}")
        assert deleted.status_code == 200
        time.sleep(1.5)
        for _ in range(10):
            assert _fresh("GET", f"{server.base}/Observation?{code}={value}").status_code == 400
    finally:
        assert server.stop() == 0, server.log()


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([FHIR_SERVER, *args], capture_output=True, text=True, timeout=300)


def test_reindex_command(tmp_path: pathlib.Path) -> None:
    db = f"sqlite:///{tmp_path / 'fhir.db'}"
    code, value = "constitution", "phlegm-dampness"
    data = tmp_path / "observations.ndjson"
    data.write_text("\n".join(json.dumps(_observation(value)) for _ in range(7)))
    params = tmp_path / "search-parameter.json"
    params.write_text(json.dumps(_search_parameter(code)))
    for path in (data, params):  # the data first: not indexed with the parameter
        loaded = _run("load", "--no-progress", "--database-url", db, str(path))
        assert loaded.returncode == 0, loaded.stderr

    def found() -> int:
        from fhir_server.app import build_services
        from fhir_server.config import Settings

        services = build_services(Settings(database_url=db, data_dir=tmp_path))
        try:
            with services.repo.session() as s:
                return len(services.search.match(s, "Observation", [(code, value)], limit=100))
        finally:
            services.repo.dispose()

    assert found() == 0
    bad = _run("db", "reindex", "--database-url", db, "--type", "Nope")
    assert bad.returncode == 2 and "Nope" in bad.stderr
    result = _run("db", "reindex", "--database-url", db, "--type", "Observation", "--batch-size", "2")
    assert result.returncode == 0, result.stderr
    assert "completed: 7 resources, 0 errors" in result.stdout, result.stdout
    assert "7/7" in result.stderr  # the progress bar
    assert found() == 7
    everything = _run("db", "reindex", "--database-url", db, "--no-progress")
    stored = 8 + sum(1 for _ in packaged_resources())  # with the profiles and terminology installed at start
    assert everything.returncode == 0 and f"completed: {stored} resources" in everything.stdout, everything.stdout
