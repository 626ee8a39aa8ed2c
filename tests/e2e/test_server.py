"""Black-box tests: ``fhir-server serve`` as a subprocess, driven by real FHIR clients and raw HTTP.

Runs on SQLite and PostgreSQL (the ``server`` fixture is parametrised through ``database_url``).
"""

from __future__ import annotations

import signal
import threading
import time
import uuid

import pytest
import requests

JSON = "application/fhir+json"


def test_fhirpy_crud_and_search(server) -> None:  # type: ignore[no-untyped-def]
    from fhirpy import SyncFHIRClient

    client = SyncFHIRClient(server.base, extra_headers={"Accept": JSON})
    family = f"Wang{uuid.uuid4().hex[:6]}"
    patient = client.resource(
        "Patient", name=[{"family": family, "given": ["Xiaoming"]}], gender="male", birthDate="1980-05-01"
    )
    patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    found = client.resources("Patient").search(family=family).fetch()
    assert [p.id for p in found] == [patient.id]
    patient["gender"] = "other"
    patient.save()
    assert client.reference("Patient", patient.id).to_resource()["gender"] == "other"
    assert len(client.resources("Patient").search(family=family, birthdate="1980").fetch()) == 1
    assert client.resources("Patient").search(family=family, birthdate="1981").fetch() == []
    patient.delete()
    assert requests.get(f"{server.base}/Patient/{patient.id}").status_code == 410


def test_fhirclient_reads_typed_models(server) -> None:  # type: ignore[no-untyped-def]
    from fhirclient import client
    from fhirclient.models.observation import Observation

    obs = (
        b'{"resourceType": "Observation", "status": "final",'
        b' "code": {"coding": [{"system": "http://loinc.org", "code": "8867-4", "display": "Heart rate"}]},'
        b' "valueQuantity": {"value": 72.50, "unit": "beats/minute",'
        b' "system": "http://unitsofmeasure.org", "code": "/min"}}'
    )
    created = requests.post(f"{server.base}/Observation", data=obs, headers={"Content-Type": JSON}).json()
    smart = client.FHIRClient(settings={"app_id": "tests", "api_base": server.base + "/"})
    read = Observation.read(created["id"], smart.server)
    assert read.code.coding[0].code == "8867-4"
    assert read.valueQuantity.value == 72.5
    raw = requests.get(f"{server.base}/Observation/{created['id']}").text
    assert '"value":72.50' in raw.replace(" ", "")  # decimal precision kept


def test_keep_alive_has_no_nagle_delay(server) -> None:  # type: ignore[no-untyped-def]
    created = requests.post(
        f"{server.base}/Patient", json={"resourceType": "Patient"}, headers={"Content-Type": JSON}
    ).json()
    session = requests.Session()
    url = f"{server.base}/Patient/{created['id']}"
    session.get(url)
    timings = []
    for _ in range(30):
        start = time.perf_counter()
        assert session.get(url).status_code == 200
        timings.append(time.perf_counter() - start)
    # Nagle + delayed ACK would make every request take ~40 ms; allow for a loaded machine
    assert sorted(timings)[len(timings) // 4] < 0.02, timings


def test_concurrent_updates_never_lose_a_version(server) -> None:  # type: ignore[no-untyped-def]
    pid = f"race-{uuid.uuid4().hex[:8]}"
    url = f"{server.base}/Patient/{pid}"
    assert (
        requests.put(url, json={"resourceType": "Patient", "id": pid}, headers={"Content-Type": JSON}).status_code
        == 201
    )
    statuses: list[int] = []
    lock = threading.Lock()

    def worker(n: int) -> None:
        body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"F{n}"}]}
        for _ in range(5):
            resp = requests.put(
                url, json=body, headers={"Content-Type": JSON, "If-Match": 'W/"1"'} if n % 2 else {"Content-Type": JSON}
            )
            with lock:
                statuses.append(resp.status_code)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert set(statuses) <= {200, 409, 412}
    successes = statuses.count(200)
    final = requests.get(url).json()
    assert int(final["meta"]["versionId"]) == 1 + successes
    history = requests.get(f"{url}/_history?_count=100").json()
    versions = sorted(int(e["resource"]["meta"]["versionId"]) for e in history["entry"])
    assert versions == list(range(1, 2 + successes))
    with_if_match = [s for s in statuses]
    assert with_if_match.count(200) >= 1


def test_graceful_shutdown(database_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.conftest import ServerProcess

    proc = ServerProcess(database_url, tmp_path)
    assert requests.get(proc.root + "/healthz").status_code == 200
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0


def test_workers_share_the_port_on_postgres(postgres_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    import psutil

    from tests.conftest import ServerProcess

    proc = ServerProcess(postgres_url, tmp_path, workers=2)
    try:
        children = psutil.Process(proc.proc.pid).children()
        assert len(children) == 3  # two workers and the audit writer
        listening = [[c.laddr.port for c in child.net_connections("tcp") if c.status == psutil.CONN_LISTEN]
                     for child in children]  # fmt: skip
        assert sorted(listening) == [[], [proc.port], [proc.port]]  # both workers accept on the one socket
        body = {"resourceType": "Patient"}
        assert all(
            requests.post(proc.base + "/Patient", json=body, headers={"Content-Type": JSON}).status_code == 201
            for _ in range(10)
        )
    finally:
        assert proc.stop() == 0


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics", "/fhir/metadata"])
def test_operational_endpoints(server, path) -> None:  # type: ignore[no-untyped-def]
    assert requests.get(server.root + path).status_code == 200
