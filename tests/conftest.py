"""Shared fixtures: databases (SQLite and PostgreSQL), in-process apps and real server processes.

PostgreSQL runs get a fresh database per test session, dropped at the end. Without a reachable
PostgreSQL those runs are skipped, unless ``REQUIRE_POSTGRES=1`` (CI), which makes it a failure.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests

ROOT = pathlib.Path(__file__).resolve().parents[1]
# One field key ring for every server of the run (security/fields.py): the e2e modules share a
# database but not a data folder, and a server cannot read what another ring encrypted.
if "FHIR_SERVER_FIELD_KEYS" not in os.environ:
    from fhir_server.security.keyring import KeyRing

    os.environ["FHIR_SERVER_FIELD_KEYS"] = KeyRing.generate().to_json()
SHARED_DATA = ROOT.parent / "shared" / "data"
PG_ADMIN_URL = os.environ.get("TEST_PG_ADMIN_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres")


def shared_data(*parts: str) -> pathlib.Path:
    """A folder of ../shared/data, or skip the test (with the reason printed) if it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared sample data not found at {path}")
    return path


def _pg_create() -> str | None:
    from sqlalchemy import create_engine, text

    name = f"telefhir_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    try:
        engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        with engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means "no PostgreSQL here"
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail(f"REQUIRE_POSTGRES=1 but PostgreSQL is not usable: {exc}")
        return None
    return PG_ADMIN_URL.rsplit("/", 1)[0] + f"/{name}"


def _pg_drop(url: str) -> None:
    from sqlalchemy import create_engine, text

    name = url.rsplit("/", 1)[1]
    engine = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    engine.dispose()


@contextlib.contextmanager
def fresh_database(kind: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """URL of a new empty database, ``sqlite`` (a file) or ``postgres`` (dropped afterwards).

    Without PostgreSQL the test is skipped, unless REQUIRE_POSTGRES=1 makes it a failure.
    """
    if kind == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'fhir.db'}"
        return
    url = _pg_create()
    if url is None:
        pytest.skip("PostgreSQL not reachable at 127.0.0.1:5432 (set REQUIRE_POSTGRES=1 to make this a failure)")
    try:
        yield url
    finally:
        _pg_drop(url)


@contextlib.contextmanager
def in_process(kind: str, tmp_path_factory: pytest.TempPathFactory, name: str, **settings: Any) -> Iterator[Any]:
    """The server in-process on a new database of ``kind``, audit off unless asked:
    (services, settings, Flask test client)."""
    from fhir_server.app import build_services, create_app
    from fhir_server.config import Settings

    with fresh_database(kind, tmp_path_factory) as url:
        configured = Settings(
            **{
                "database_url": url,
                "data_dir": tmp_path_factory.mktemp(name),
                "base_url": "http://testserver/fhir",
                "audit": False,
                **settings,
            }
        )
        services = build_services(configured)
        try:
            yield services, configured, create_app(configured, services).test_client()
        finally:
            services.repo.dispose()


@pytest.fixture(scope="session")
def postgres_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with fresh_database("postgres", tmp_path_factory) as url:
        yield url


@pytest.fixture(scope="session", params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """Each test that uses it runs once on SQLite and once on PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path_factory.mktemp('sqlite') / 'fhir.db'}"
    return request.getfixturevalue("postgres_url")


@pytest.fixture(scope="session")
def services(database_url: str, tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from fhir_server.app import build_services
    from fhir_server.config import Settings

    settings = Settings(  # auth off (the development flag): these tests are about FHIR, not security
        database_url=database_url,
        data_dir=tmp_path_factory.mktemp("data"),
        base_url="http://testserver/fhir",
        auth=False,
    )
    svc = build_services(settings)
    yield svc
    svc.repo.dispose()


@pytest.fixture(scope="session")
def app(services):  # type: ignore[no-untyped-def]
    from fhir_server.app import create_app

    return create_app(services.settings, services)


@pytest.fixture()
def client(app):  # type: ignore[no-untyped-def]
    return app.test_client()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServerProcess:
    """``fhir-server serve`` in a subprocess, as a user would start it."""

    def __init__(
        self,
        database_url: str,
        data_dir: pathlib.Path,
        workers: int = 1,
        *,
        auth: bool = False,
        args: tuple[str, ...] = (),
        ready: dict | None = None,
    ) -> None:
        """``ready``: keyword arguments of the readiness probe (``verify``, ``cert`` for HTTPS)."""
        self.port = free_port()
        self.ready = ready or {}
        scheme = "https" if "--tls-cert" in args else "http"
        self.base = f"{scheme}://127.0.0.1:{self.port}/fhir"
        self.root = f"{scheme}://127.0.0.1:{self.port}"
        self.log_path = data_dir / "server.log"
        cmd = [
            str(pathlib.Path(sys.executable).with_name("fhir-server")),
            "serve",
            "--port",
            str(self.port),
            "--database-url",
            database_url,
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
            "--auth",
            "on" if auth else "off",
            "--audit-interval",
            "0.1",  # tests read their audit records at once
            *args,
        ]
        self.proc = subprocess.Popen(
            cmd, stdout=open(self.log_path, "wb"), stderr=subprocess.STDOUT, start_new_session=True
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.time() + 60
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log_path.read_text()}")
            try:
                if requests.get(self.root + "/readyz", timeout=1, **self.ready).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"server not ready in 60 s: {self.log_path.read_text()}")

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def server(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(database_url, tmp_path_factory.mktemp("server"))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """A CA with server and client certificates made for the test (tests/pki.py)."""
    from tests.pki import make_pki

    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(autouse=True)
def _plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib and authlib insist on https; the black-box tests talk to 127.0.0.1 (HTTPS itself
    is tested with TLS serving, tests/e2e/test_tls.py)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
