"""Serving: gevent WSGI workers, pre-forked on one shared listening socket.

Why these choices:
- gevent lets one process hold thousands of keep-alive connections while waiting on the
  database; ``--workers N`` forks N such processes that accept on the same socket, so all
  cores are used (with PostgreSQL; SQLite serialises writers anyway).
- ``TCP_NODELAY`` on every accepted socket: pywsgi writes headers and body separately, and
  Nagle's algorithm meeting delayed ACKs would add ~40 ms to every keep-alive request.
- SIGTERM/SIGINT stop accepting, let running requests finish (up to ``GRACE`` seconds), then exit.
- Each worker also runs background jobs (``$reindex``, search/reindex.py) in a greenlet: the ones
  it was asked to start, and ones nobody runs (given back on shutdown, or whose worker died).
- The FHIR model and every search parameter are loaded and compiled before forking, then
  frozen out of the garbage collector (``gc.freeze``): collections triggered by parsing large
  Bundles no longer scan those ~10^5 long-lived objects (10% of ingest CPU), and forked workers
  share their pages instead of copying them.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import gevent
from gevent.pywsgi import WSGIHandler, WSGIServer, _NoopLog

from fhir_server.config import LOG_FORMAT, Settings
from fhir_server.security.tls import (
    CERT_SUBJECT,
    CERT_THUMBPRINT,
    peer_certificate,
    peer_thumbprint,
    server_context,
    subject_name,
)

log = logging.getLogger("fhir_server.server")
GRACE = 10.0
#: seconds between refreshes of SQLite's planner statistics in each worker
STATISTICS_INTERVAL = 3600.0


class NoDelayHandler(WSGIHandler):
    def handle(self) -> None:
        try:
            self.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass
        super().handle()

    def get_environ(self) -> dict[str, Any]:
        environ: dict[str, Any] = super().get_environ()
        if not hasattr(self, "_cert_subject"):  # once per connection: the certificate stays
            cert = peer_certificate(self.socket)
            self._cert_subject = subject_name(cert) if cert is not None else None
            self._cert_thumbprint = peer_thumbprint(self.socket) if cert is not None else None
        if self._cert_subject is not None:  # a verified client certificate (mutual TLS, ITI-19)
            environ[CERT_SUBJECT] = self._cert_subject
            environ[CERT_THUMBPRINT] = self._cert_thumbprint
        return environ

    def read_requestline(self) -> str:
        # pywsgi serves a keep-alive connection's next request without yielding when it is
        # already buffered; with SQLite nothing else yields, so other connections starved for
        # 200+ ms (read benchmark p99). Yield once per request.
        gevent.sleep(0)
        return super().read_requestline()

    def log_request(self) -> None:
        if not isinstance(self.server.log, _NoopLog):  # formatting costs even when nobody reads it
            super().log_request()


def listen(host: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock


def run_worker(settings: Settings, sock: socket.socket) -> None:
    from fhir_server.app import build_services, create_app

    # serve() migrated the database and stored the packaged content before the workers started
    app = create_app(settings, build_services(settings, migrate=False))
    jobs = app.config["SERVICES"].jobs
    jobs.start_polling()  # run $reindex jobs that were given back or whose worker died
    dispatcher = app.config["SERVICES"].dispatcher
    dispatcher.start()  # deliver Subscription notifications from the outbox (notify/)
    sweeps = app.config["SERVICES"].sweeps
    sweeps.start()  # overdue invitations flagged, follow-ups reminded (workflow/sweeps.py)
    recorder = app.config["AUDIT_RECORDER"]
    gevent.spawn(_refresh_statistics_hourly, app.config["SERVICES"].repo.engine)
    gc.freeze()
    access = logging.getLogger("fhir_server.access") if settings.access_log else None
    tls = {}
    if settings.tls_cert and settings.tls_key:
        tls["ssl_context"] = server_context(
            settings.tls_cert, settings.tls_key, settings.tls_client_ca, settings.tls_require_client_cert
        )
    server = WSGIServer(
        sock, app, handler_class=NoDelayHandler, log=access, error_log=logging.getLogger("fhir_server.wsgi"), **tls
    )
    # One connection per wake-up: gevent takes up to 100 pending connections at once, so the
    # worker that woke first kept every keep-alive connection of a client's pool while the
    # others idled (security benchmark: one of two workers at 0.9 core, the other at 0).
    server.max_accept = 1

    def stop() -> None:
        log.info("worker %d stopping", os.getpid())
        gevent.spawn(server.stop, timeout=GRACE)
        gevent.spawn(jobs.stop, timeout=GRACE)  # a running job is given back after its batch

    gevent.signal_handler(signal.SIGTERM, stop)
    gevent.signal_handler(signal.SIGINT, stop)
    scheme = "https" if tls else "http"
    log.info("worker %d serving %s://%s:%d/fhir", os.getpid(), scheme, settings.host, settings.port)
    server.serve_forever()
    jobs.stop(timeout=GRACE)
    dispatcher.stop(timeout=GRACE)  # a notification being sent is finished and recorded, not cut off
    sweeps.stop(timeout=GRACE)
    if recorder is not None:
        recorder.close()  # its spool is complete: the audit writer stores the rest


def _refresh_statistics_hourly(engine: Any) -> None:
    """SQLite's planner statistics follow the data as it grows through the API (storage/engine.py)."""
    from fhir_server.storage.engine import refresh_statistics

    if engine.dialect.name != "sqlite":
        return
    while True:
        gevent.sleep(STATISTICS_INTERVAL)
        try:
            refresh_statistics(engine)
        except Exception:  # noqa: BLE001 - a busy database is tried again next hour
            log.exception("refreshing SQLite statistics failed")


def serve(settings: Settings) -> None:
    """Migrate the database and install packaged content, bind, then serve in this process or in N forked workers."""
    from fhir_server.app import build_services
    from fhir_server.storage.engine import refresh_statistics

    # the schema and the packaged conformance resources, once, before workers start
    services = build_services(settings)
    if settings.demo:
        from fhir_server import demo

        demo.load(services.repo, services.security)  # once: a second start finds it there
    refresh_statistics(services.repo.engine)
    services.repo.dispose()
    _preload()
    writer = start_audit_writer(settings) if settings.audit else None  # before listening: it holds no socket
    if _rotate_field_keys(services.repo.fields.ring):
        start_reencryption(settings)
    try:
        sock = listen(settings.host, settings.port)
        if settings.workers <= 1:
            run_worker(settings, sock)
        else:
            _supervise(settings, sock)
    finally:
        if writer is not None:
            stop_process(writer)


def _rotate_field_keys(ring: Any) -> bool:
    """R24: a data key encrypts for 90 days at most; rotated at start when due (a read-only ring,
    given by the environment, is the operator's to rotate: only a warning)."""
    if not ring.rotation_due():
        return False
    if ring.read_only:
        log.warning("the field encryption key is 90 days old: rotate it (FHIR_SERVER_FIELD_KEYS is read-only)")
        return False
    kid = ring.rotate()
    log.warning("field encryption key rotated (now %s); re-encrypting stored values in the background", kid)
    return True


def start_reencryption(settings: Settings) -> int:
    """Fork a process that moves stored values to the current field key (security/reencrypt.py)."""
    pid = os.fork()
    if pid:
        return pid
    try:
        from fhir_server.security.reencrypt import reencrypt_all
        from fhir_server.security.signing import key_ring
        from fhir_server.storage.engine import make_engine

        signal.signal(signal.SIGINT, signal.SIG_IGN)
        engine = make_engine(settings.resolved_database_url, pool_size=1)
        done = reencrypt_all(engine, key_ring(settings.data_dir))
        log.info("re-encryption finished: %d of %d rows rewritten", done.changed, done.rows)
        engine.dispose()
    except Exception:  # noqa: BLE001 - logged; `fhir-server keys reencrypt` finishes the job
        log.exception("re-encryption failed; run `fhir-server keys reencrypt`")
    finally:
        os._exit(0)


_WRITER_SETTINGS = "FHIR_SERVER_AUDIT_WRITER_SETTINGS"


def start_audit_writer(settings: Settings) -> int:
    """Start the audit writer (audit/writer.py), which stores what the workers spool, as a fresh
    interpreter rather than a fork of this one: a fork would carry gevent's patches, and under
    gevent every database wait of the writer goes through the hub (a third of its CPU under load)."""
    values = {k: str(v) if isinstance(v, pathlib.Path) else v for k, v in dataclasses.asdict(settings).items()}
    ready_read, ready_write = os.pipe()
    given = {"settings": values, "log_level": logging.getLogger().level, "ready_fd": ready_write}
    env = {**os.environ, _WRITER_SETTINGS: json.dumps(given)}
    code = "from fhir_server.server import audit_writer_main; audit_writer_main()"
    pid = subprocess.Popen([sys.executable, "-c", code], env=env, pass_fds=(ready_write,)).pid
    os.close(ready_write)
    # Serve only once it runs: what is answered from then on reaches the store within a pass.
    with os.fdopen(ready_read, "rb") as ready:
        if not ready.read(1):
            log.error("the audit writer did not start; audit records wait in the spools")
    return pid


def audit_writer_main() -> None:
    """The audit writer process's entry point: the server's settings and log level, from it."""
    given = json.loads(os.environ[_WRITER_SETTINGS])
    values = given["settings"]
    values["data_dir"] = pathlib.Path(values["data_dir"])
    logging.basicConfig(level=given["log_level"], stream=sys.stderr, format=LOG_FORMAT)
    _run_audit_writer(Settings(**values), ready_fd=given["ready_fd"])


def _run_audit_writer(settings: Settings, ready_fd: int | None = None) -> None:
    from fhir_server.app import audit_spool
    from fhir_server.audit.export import exporter
    from fhir_server.audit.store import AuditStore
    from fhir_server.audit.writer import AuditWriter
    from fhir_server.storage.engine import make_engine

    stopping = False

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the process group: the parent stops us
    engine = make_engine(settings.resolved_database_url, pool_size=2)
    log.info("audit writer %d storing from %s", os.getpid(), audit_spool(settings))
    forwarder = exporter(settings)
    forward = (lambda events: [forwarder.enqueue(e) for e in events]) if forwarder else None
    after = forwarder.deliver_if_due if forwarder else None
    if ready_fd is not None:  # the server waits for this before it serves
        os.write(ready_fd, b"1")
        os.close(ready_fd)
    AuditWriter(AuditStore(engine), audit_spool(settings), forward).run(
        settings.audit_interval, lambda: stopping, after
    )
    engine.dispose()


def stop_process(pid: int) -> None:
    """SIGTERM, then wait (the writer's last pass); SIGKILL after the grace time."""
    try:
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + GRACE + 5
        while time.monotonic() < deadline:
            if os.waitpid(pid, os.WNOHANG)[0]:
                return
            time.sleep(0.1)
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    except (ProcessLookupError, ChildProcessError):  # gone, or reaped already (gevent's child watcher)
        return


def _preload() -> None:
    from fhir_server.model import get_model
    from fhir_server.search import ucum
    from fhir_server.search.registry import get_registry

    get_model()
    registry = get_registry()
    for res_type in registry.resource_types:
        registry.indexed_params(res_type)
    ucum.unit_info("mg")  # loads the UCUM tables (0.3 s) once, before forking
    gc.collect()
    gc.freeze()


def _supervise(settings: Settings, sock: socket.socket) -> None:
    children: set[int] = set()
    stopping = False

    def spawn() -> None:
        pid = os.fork()
        if pid == 0:
            try:
                run_worker(settings, sock)
            finally:
                os._exit(0)
        children.add(pid)

    def stop(*_args: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in list(children):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                pass

    for _ in range(settings.workers):
        spawn()
    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    deadline = None
    while children:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid:
            if pid not in children:
                continue  # another child of ours (the re-encryption pass) ended: not a worker
            children.discard(pid)
            if not stopping:
                log.warning("worker %d exited (status %d); starting another", pid, status)
                spawn()
            continue
        if stopping:
            deadline = deadline or time.monotonic() + GRACE + 5
            if time.monotonic() > deadline:
                for child in list(children):
                    os.kill(child, signal.SIGKILL)
        time.sleep(0.2)
    sys.exit(0)
