"""A PostgreSQL connection that dies under the pool (restart, failover) costs one 503, not more."""

from __future__ import annotations

import psycopg

from fhir_server.app import build_services, create_app
from fhir_server.config import Settings


def test_dropped_connection_is_503_then_recovers(postgres_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    services = build_services(
        Settings(database_url=postgres_url, data_dir=tmp_path, base_url="http://t/fhir", auth=False)
    )
    client = create_app(services.settings, services).test_client()
    try:
        created = client.post("/fhir/Patient", json={"resourceType": "Patient", "gender": "female"})
        assert created.status_code == 201
        location = created.headers["Location"].split("/fhir/")[1].split("/_history")[0]
        assert client.get(f"/fhir/{location}").status_code == 200
        dbname = postgres_url.rsplit("/", 1)[1]
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as admin:
            killed = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = %s", (dbname,)
            ).fetchone()
        assert killed and killed[0] >= 1
        lost = client.get(f"/fhir/{location}")
        assert lost.status_code == 503, lost.get_data(as_text=True)
        assert lost.headers["Retry-After"] == "1"
        assert lost.get_json()["issue"][0]["code"] == "transient"
        assert client.get(f"/fhir/{location}").status_code == 200
    finally:
        services.repo.dispose()


def test_no_free_connection_is_503_not_500(postgres_url, tmp_path) -> None:  # type: ignore[no-untyped-def]
    settings = Settings(database_url=postgres_url, data_dir=tmp_path, base_url="http://t/fhir", pool_size=1, auth=False)
    services = build_services(settings)
    client = create_app(services.settings, services).test_client()
    services.repo.engine.pool._timeout = 0.2  # type: ignore[attr-defined]  # fail fast in the test
    try:
        with services.repo.engine.connect():  # holds the only connection
            busy = client.get("/fhir/Patient?_count=1")
        assert busy.status_code == 503 and busy.headers["Retry-After"] == "5"
        assert busy.get_json()["issue"][0]["code"] == "transient"
        assert client.get("/fhir/Patient?_count=1").status_code == 200
    finally:
        services.repo.dispose()
