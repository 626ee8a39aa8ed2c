"""Lookups made while a request holds its connection take theirs from a side pool.

Every write checks the catalogue stamp of ImplementationGuides (validation/rules.py) on a
connection of its own. Taken from the requests' pool, two requests holding both connections of a
pool of two each waited for a third until the pool's timeout (a 503 after 30 s): the deadlock
scripts/bench/consultations found at 50 consultations. PostgreSQL, where the pool is bounded by
``pool_size``; the stamp is checked on every write (``search_param_refresh=0``)."""

from __future__ import annotations

import threading
import time

import pytest

from tests.conftest import fresh_database


def test_concurrent_writes_on_a_pool_of_two_never_wait_for_a_second_connection(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    from fhir_server.app import build_services, create_app
    from fhir_server.config import Settings

    with fresh_database("postgres", tmp_path_factory) as url:
        settings = Settings(
            database_url=url,
            data_dir=tmp_path_factory.mktemp("side-pool"),
            auth=False,
            audit=False,
            pool_size=2,
            search_param_refresh=0.0,
        )
        services = build_services(settings)
        app = create_app(settings, services)
        statuses: list[int] = []
        start = threading.Barrier(8)

        def writer() -> None:
            client = app.test_client()
            start.wait()
            for i in range(5):
                patient = {"resourceType": "Patient", "name": [{"family": f"Side{i}"}]}
                statuses.append(client.post("/fhir/Patient", json=patient).status_code)

        began = time.monotonic()
        threads = [threading.Thread(target=writer) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        elapsed = time.monotonic() - began
        services.repo.dispose()
        assert statuses == [201] * 40
        assert elapsed < 20, f"{elapsed:.1f} s: a request waited for the pool"
