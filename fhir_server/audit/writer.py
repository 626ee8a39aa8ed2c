"""The audit writer: moves spooled audit events into the store, exactly once.

One writer per server (a process ``server.py`` starts beside the workers) reads every spool
file in ``<data-dir>/audit/spool/`` from where it last stopped and appends the complete lines'
events to the store **in the same transaction** that records the new read offset
(``audit_spool_offsets``). So whatever stops it — a crash, a kill, the database refusing — no
record is lost (the spool still holds it) and none is stored twice (the offset moved with it).
A line still being written (no newline yet) waits for the next pass.

A spool file is removed once read to its end and done with: its worker has started a newer
file, or that worker is gone. The file goes before its offset row, so a crash in between leaves
a harmless row, never a file that would be read again from the start.

If the database refuses, the writer logs it and tries again on the next pass; requests go on
being answered and their events wait in the spools (an audit outage is not turned into an
outage of care).
"""

from __future__ import annotations

import logging
import os
import pathlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import delete, insert, select, update

from fhir_server.audit.recorder import spool_prefix
from fhir_server.audit.store import COLUMNS, PREFIX, AuditStore, with_id
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import audit_spool_offsets as O

log = logging.getLogger(__name__)
Forward = Callable[[list[dict[str, Any]]], None]
#: bytes of spool read per transaction at most
CHUNK = 4 * 1024 * 1024


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _owner(name: str) -> tuple[str, int]:
    """(``spool-<host>-<pid>-`` prefix, pid) of a spool file name."""
    stem = name.rsplit("-", 1)[0]
    return stem + "-", int(stem.rsplit("-", 1)[1])


@dataclass
class _Read:
    """The complete lines read from one spool file past its offset."""

    path: pathlib.Path
    #: the committed offset (None: the file has no offset row yet)
    offset: int | None
    new_position: int
    rows: list[tuple[tuple[Any, ...], str]]
    #: a whole chunk was read: more may follow
    full: bool


class AuditWriter:
    def __init__(self, store: AuditStore, spool_dir: pathlib.Path, forward: Forward | None = None) -> None:
        self.store = store
        self.spool_dir = spool_dir
        self.forward = forward
        self.host_prefix = spool_prefix().rsplit("-", 2)[0] + "-"  # spool-<this host>-
        #: the committed offsets, loaded once and then kept in step with the commits (this writer
        #: is the only one that moves them); None: to be loaded (again, after a failed pass)
        self._offsets: dict[str, int] | None = None

    def _load_offsets(self) -> dict[str, int]:
        with self.store.engine.connect() as conn:
            return {row.name: int(row.offset) for row in conn.execute(select(O.c.name, O.c.offset))}

    def drain(self) -> int:
        """One pass over every spool file; the number of events stored. One transaction stores
        what every file holds (a transaction per file cost a writer pass per worker)."""
        if not self.spool_dir.is_dir():
            return 0
        files = sorted(p for p in self.spool_dir.glob("spool-*.ndjson"))
        try:
            if self._offsets is None:
                self._offsets = self._load_offsets()
            stored = 0
            while True:
                reads = [r for r in (self._read(path, self._offsets) for path in files) if r is not None]
                if reads:
                    stored += self._store(reads, self._offsets)
                if not any(r.full for r in reads):
                    break
            self._remove_finished(files, self._offsets)
        except BaseException:
            self._offsets = None  # what was committed is known again from the database
            raise
        return stored

    @staticmethod
    def _read(path: pathlib.Path, offsets: dict[str, int]) -> _Read | None:
        """The complete lines of ``path`` past its offset (at most ``CHUNK`` bytes), or None."""
        offset = offsets.get(path.name)
        position = offset or 0
        with path.open("rb") as f:
            f.seek(position)
            chunk = f.read(CHUNK)
        end = chunk.rfind(b"\n") + 1
        if end == 0:
            return None
        rows: list[tuple[tuple[Any, ...], str]] = []
        for line in chunk[:end].splitlines():
            head, tab, content = line.partition(b"\t")
            try:
                if not tab or not content.startswith(PREFIX.encode()):
                    raise ValueError("not a spool line")
                cols = tuple(orjson.loads(head))
                cols += (None,) * (len(COLUMNS) - len(cols))  # a line spooled before a column was added
                rows.append((cols, content.decode("utf-8")))
            except ValueError:  # orjson.JSONDecodeError and UnicodeDecodeError are ValueErrors
                log.error("audit spool %s: an unreadable line after byte %d was skipped", path.name, position)
        return _Read(path, offset, position + end, rows, len(chunk) == CHUNK)

    def _store(self, reads: list[_Read], offsets: dict[str, int]) -> int:
        """Append the reads' events and move their offsets in one transaction."""
        rows = [row for r in reads for row in r.rows]
        with begin_write(self.store.engine) as conn:
            ids = self.store.append_rows_on(conn, rows) if rows else []
            for r in reads:
                if r.offset is None:
                    conn.execute(insert(O).values(name=r.path.name, offset=r.new_position))
                else:
                    conn.execute(update(O).where(O.c.name == r.path.name).values(offset=r.new_position))
            if rows and self.forward is not None:
                # spooled for the repository before the commit: a failed commit sends them
                # again with the retry (at-least-once), a crash after it never loses them
                self.forward([orjson.loads(with_id(int(i), c)) for i, (_, c) in zip(ids, rows, strict=True)])
        for r in reads:
            offsets[r.path.name] = r.new_position
        return len(rows)

    def _remove_finished(self, files: list[pathlib.Path], offsets: dict[str, int]) -> None:
        newest: dict[str, str] = {}
        for path in files:
            prefix, _ = _owner(path.name)
            newest[prefix] = max(newest.get(prefix, ""), path.name)
        for path in files:
            prefix, pid = _owner(path.name)
            superseded = newest[prefix] != path.name
            gone = path.name.startswith(self.host_prefix) and not _alive(pid)
            if not (superseded or gone) or offsets.get(path.name) != path.stat().st_size:
                continue
            path.unlink()
            with begin_write(self.store.engine) as conn:
                conn.execute(delete(O).where(O.c.name == path.name))
            offsets.pop(path.name, None)

    def run(self, interval: float, stopping: Callable[[], bool], after: Callable[[], Any] | None = None) -> None:
        """Drain every ``interval`` seconds until ``stopping()``; then once more. ``after`` runs
        after each pass (the ITI-20 forwarder delivers what it has spooled)."""
        while not stopping():
            self._pass(after)
            time.sleep(interval)
        self._pass(after)

    def _pass(self, after: Callable[[], Any] | None) -> None:
        try:
            self.drain()
        except Exception:  # noqa: BLE001 - the database may be down: the spools keep the events
            log.exception("audit writer: this pass failed; the events stay in the spools")
        if after is not None:
            try:
                after()
            except Exception:  # noqa: BLE001 - the repository may be down: its spool keeps the messages
                log.exception("audit export: delivery failed; the messages stay spooled")
