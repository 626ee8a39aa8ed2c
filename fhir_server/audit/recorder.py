"""Recording audit events as requests are answered: one spool write, nothing more.

Why only a spool write: a request must not pay for its audit record's database write (measured:
the batched appends took 18% of a worker's time, ``docs/performance.md``). Each worker builds
the BALP events of an interaction (``balp.py``, filled into templates by ``templates.py``) and
appends them to its own spool file, one line per event: the search columns as a JSON array, a
tab, and the record's JSON as it will be stored (``store.serialize``), so the writer neither
parses nor re-serialises it. One ``os.write`` with ``O_APPEND`` per interaction (per
transaction for all its entries): once it returns, the operating system holds the lines, so the
events survive the worker dying. The audit writer process (``writer.py``) moves them into the
store. A spool file is closed and a new one started every ``max_bytes``, so the writer can
remove what it has stored.
"""

from __future__ import annotations

import logging
import os
import pathlib
import socket
import threading

from fhir_server.audit import balp
from fhir_server.audit.templates import EventTemplates

log = logging.getLogger(__name__)
SPOOL_MAX_BYTES = 16 * 1024 * 1024


def spool_prefix() -> str:
    """``spool-<host>-<pid>-``: unique per process, also when nodes share a database."""
    host = "".join(c if c.isalnum() else "_" for c in socket.gethostname())[:40]
    return f"spool-{host}-{os.getpid()}-"


class AuditRecorder:
    def __init__(self, spool_dir: pathlib.Path, *, max_bytes: int = SPOOL_MAX_BYTES) -> None:
        self.spool_dir = spool_dir
        self.max_bytes = max_bytes
        spool_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._lock = threading.Lock()
        self._pid = -1
        self._fd = -1
        self._written = 0
        self._number = 0
        self.templates = EventTemplates()

    def _open(self) -> None:
        """A new spool file (also after a fork: a child never writes into its parent's file)."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
        self._pid = os.getpid()
        self._number += 1
        path = self.spool_dir / f"{spool_prefix()}{self._number:06d}.ndjson"
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        self._written = 0

    def record(self, interaction: balp.Interaction, requester: balp.Requester, server: balp.Server) -> None:
        self.record_all([interaction], requester, server)

    def record_all(self, interactions: list[balp.Interaction], requester: balp.Requester, server: balp.Server) -> None:
        """The events of several interactions (a transaction's entries) in one write."""
        lines = []
        for interaction in interactions:
            try:
                lines.append(self.templates.lines(interaction, requester, server))
            except ValueError:
                log.exception("audit event for %s could not be built", interaction.kind)
        line = b"".join(lines)
        if not line:
            return
        with self._lock:
            if self._pid != os.getpid() or self._written >= self.max_bytes:
                self._open()
            os.write(self._fd, line)
            self._written += len(line)

    def close(self) -> None:
        with self._lock:
            if self._fd >= 0 and self._pid == os.getpid():
                os.close(self._fd)
            self._fd = -1
