"""Recording audit events as requests are answered: built at once, stored in batches.

Why batches: a request must not wait for its own audit write — one more database transaction
per read would cost more than the read. Each worker builds the BALP events of an interaction
(``balp.py``), appends them to its spool file (one ``write`` of a JSON line: the events survive
the process dying, since the operating system holds the data) and keeps them in memory; every
``interval`` seconds, or when ``max_batch`` are waiting, one transaction appends them all to the
store. The spool is rotated before each append and removed after it commits, so what is on disk
is exactly what is not yet stored. At start (``recover``), spools left by processes that died
are appended before any worker serves. A crash between the commit and the removal of the
rotated spool stores that batch twice on recovery: at-least-once, never lost (docs/security.md).

If the database refuses an append, the events stay in memory and on disk and are tried again
with the next batch; requests go on being answered (an audit outage is logged, not turned into
a service outage for patients' care).
"""

from __future__ import annotations

import logging
import os
import pathlib
import threading
import time
from collections.abc import Callable
from typing import Any

import orjson

from fhir_server.audit import balp
from fhir_server.audit.store import AuditStore

log = logging.getLogger(__name__)
Forward = Callable[[list[dict[str, Any]]], None]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_spool(path: pathlib.Path) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    for line in path.read_bytes().splitlines():
        if not line.strip():
            continue
        try:
            events.extend(orjson.loads(line))
        except orjson.JSONDecodeError:
            log.error("audit spool %s: an unreadable line (a torn last write?) was skipped", path)
    return events


def recover(store: AuditStore, spool_dir: pathlib.Path, forward: Forward | None = None) -> int:
    """Append the events of spools whose process is gone; the number appended."""
    if not spool_dir.is_dir():
        return 0
    appended = 0
    for path in sorted(spool_dir.glob("spool-*")):
        pid = int(path.name.split("-")[1].split(".")[0])
        if pid != os.getpid() and _alive(pid):
            continue
        events = _read_spool(path)
        if events:
            store.append(events)
            if forward is not None:
                forward(events)
            appended += len(events)
        path.unlink()
    return appended


class AuditRecorder:
    def __init__(
        self,
        store: AuditStore,
        spool_dir: pathlib.Path,
        *,
        interval: float = 0.2,
        max_batch: int = 1000,
        forward: Forward | None = None,
    ) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.interval = interval
        self.max_batch = max_batch
        self.forward = forward
        self._pending: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._rotation = 0
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._path = spool_dir / f"spool-{os.getpid()}.ndjson"
        self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)

    # -- recording ---------------------------------------------------------------------------
    def record(self, interaction: balp.Interaction, requester: balp.Requester, server: balp.Server) -> None:
        try:
            events = balp.build_events(interaction, requester, server)
        except ValueError:
            log.exception("audit event for %s could not be built", interaction.kind)
            return
        line = orjson.dumps(events) + b"\n"
        with self._lock:
            os.write(self._fd, line)
            self._pending.extend(events)
            full = len(self._pending) >= self.max_batch
        if full:
            self.flush()

    def flush(self) -> int:
        """Append what is waiting (one transaction); the number appended."""
        with self._lock:
            if not self._pending:
                return 0
            pending, self._pending = self._pending, []
            self._rotation += 1
            flushing = self.spool_dir / f"spool-{os.getpid()}.{self._rotation}.flushing"
            os.close(self._fd)
            os.rename(self._path, flushing)
            self._fd = os.open(self._path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            self.store.append(pending)
        except Exception:  # noqa: BLE001 - the database may be down: keep the events, try again
            log.exception("audit store append failed; %d events kept for the next attempt", len(pending))
            with self._lock:
                self._pending[:0] = pending
                os.write(self._fd, b"".join(orjson.dumps([e]) + b"\n" for e in pending))
            flushing.unlink()
            return 0
        flushing.unlink()
        if self.forward is not None:
            try:
                self.forward(pending)
            except Exception:  # noqa: BLE001 - forwarding has its own store-and-forward spool
                log.exception("audit forwarding failed")
        return len(pending)

    # -- the background flusher ---------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="audit-flush", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            time.sleep(self.interval)
            self.flush()

    def stop(self) -> None:
        self._stop.set()
        self.flush()
        with self._lock:
            os.close(self._fd)
            if not self._pending and self._path.exists() and self._path.stat().st_size == 0:
                self._path.unlink()
