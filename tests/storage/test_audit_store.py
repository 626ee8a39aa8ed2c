"""The audit store (fhir_server/audit/store.py) and the recorder's spool (audit/recorder.py), on
SQLite and PostgreSQL: the chain, its verification, retention, and no event lost on a crash."""

from __future__ import annotations

import pathlib
import threading
from datetime import UTC, datetime

import pytest
from sqlalchemy import text

from fhir_server.audit import balp
from fhir_server.audit import recorder as recorder_module
from fhir_server.audit.recorder import AuditRecorder
from fhir_server.audit.store import YEAR_US, AuditStore
from fhir_server.audit.writer import AuditWriter
from fhir_server.storage.engine import make_engine
from fhir_server.storage.migrate import ensure_schema

SERVER = balp.Server(name="telefhir", base_url="http://t/fhir", address="127.0.0.1")


@pytest.fixture()
def store(database_url: str) -> AuditStore:
    engine = make_engine(database_url)
    ensure_schema(engine)
    with engine.begin() as conn:  # the module's databases are shared: start each test empty
        conn.execute(text("DELETE FROM audit_events"))
        conn.execute(text("DELETE FROM audit_spool_offsets"))
        conn.execute(text("UPDATE audit_anchor SET seq = 0, hash = :z, purged_us = NULL"), {"z": "0" * 64})
    return AuditStore(engine)


def _event(when: str = "2026-11-22T08:00:00Z", patient: str = "Patient/p1") -> dict:
    read = balp.Interaction(kind="read", status=200, recorded=datetime.fromisoformat(when), resource_type="Patient",
                            resource_id=patient.split("/")[1], patients=(patient,))  # fmt: skip
    (event,) = balp.build_events(read, balp.Requester(client_id="c1", network_address="10.0.0.1"), SERVER)
    return event


def test_appends_are_numbered_and_chained(store: AuditStore) -> None:
    assert store.append([_event(), _event(patient="Patient/p2")]) == ["1", "2"]
    assert store.append([_event()]) == ["3"]
    assert store.verify().ok and store.verify().checked == 3
    assert '"id":"2"' in (store.read("2") or "")
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT patient FROM audit_events WHERE seq = 2")).scalar() == "Patient/p2"


@pytest.mark.parametrize(
    ("tamper", "reason"),
    [
        (
            "UPDATE audit_events SET content = REPLACE(content, 'Patient/p1', 'Patient/p9') WHERE seq = 2",
            "record 2 does not",
        ),
        ("DELETE FROM audit_events WHERE seq = 2", "record 2 is missing"),
        ("UPDATE audit_events SET hash = 'x' WHERE seq = 3", "record 3 does not"),
    ],
)
def test_verify_names_the_first_broken_record(store: AuditStore, tamper: str, reason: str) -> None:
    store.append([_event() for _ in range(4)])
    with store.engine.begin() as conn:
        conn.execute(text(tamper))
    result = store.verify()
    assert not result.ok and reason in result.reason


def test_concurrent_appends_form_one_chain(store: AuditStore) -> None:
    threads = [threading.Thread(target=lambda: [store.append([_event()]) for _ in range(10)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    result = store.verify()
    assert result.ok and result.checked == 40


def test_purge_only_beyond_retention_and_verification_goes_on(store: AuditStore) -> None:
    store.append([_event("2024-01-01T00:00:00Z"), _event("2024-06-01T00:00:00Z"), _event("2026-11-22T00:00:00Z")])
    now = 1_795_000_000_000_000  # 2026-11-18
    with pytest.raises(ValueError, match="retention"):
        store.purge(now - YEAR_US // 2, now=now)
    removed = store.purge(1_735_689_600_000_000, now=now)  # before 2025-01-01
    assert removed == 2 and store.count() == 1
    assert store.verify().ok and store.verify().checked == 1


def _read(patient: str = "Patient/p1") -> balp.Interaction:
    return balp.Interaction(kind="read", status=200, recorded=datetime.now(UTC), resource_type="Patient",
                            resource_id=patient.split("/")[1], patients=(patient,))  # fmt: skip


def test_the_writer_stores_what_workers_spool_exactly_once(store: AuditStore, tmp_path: pathlib.Path) -> None:
    recorder = AuditRecorder(tmp_path)
    writer = AuditWriter(store, tmp_path)
    requester = balp.Requester(client_id="c1", network_address="10.0.0.1")
    for _ in range(3):
        recorder.record(_read(), requester, SERVER)
    assert store.count() == 0  # spooled, not yet stored
    assert writer.drain() == 3 and store.count() == 3
    assert writer.drain() == 0  # read to the end: nothing twice
    recorder.record(_read(), requester, SERVER)
    # a line still being written (no newline yet) waits for the next pass
    spool = next(tmp_path.glob("spool-*.ndjson"))
    with spool.open("ab") as f:
        f.write(b'[{"resourceType":"AuditEvent"')
    assert writer.drain() == 1 and store.count() == 4
    assert store.verify().ok


def test_a_crashed_writer_neither_loses_nor_repeats(store: AuditStore, tmp_path: pathlib.Path) -> None:
    recorder = AuditRecorder(tmp_path)
    requester = balp.Requester(client_id="c1")
    for _ in range(5):
        recorder.record(_read(), requester, SERVER)
    AuditWriter(store, tmp_path).drain()
    for _ in range(2):
        recorder.record(_read(), requester, SERVER)
    # another writer (after a restart) goes on from the committed offset
    assert AuditWriter(store, tmp_path).drain() == 2
    assert store.count() == 7 and store.verify().ok


def test_finished_spools_are_removed(store: AuditStore, tmp_path: pathlib.Path) -> None:
    recorder = AuditRecorder(tmp_path, max_bytes=1)  # every event starts a new file
    for _ in range(3):
        recorder.record(_read(), balp.Requester(client_id="c1"), SERVER)
    assert len(list(tmp_path.glob("spool-*"))) == 3
    AuditWriter(store, tmp_path).drain()
    assert len(list(tmp_path.glob("spool-*"))) == 1  # the newest stays: its worker still writes to it
    assert store.count() == 3


def test_an_unreachable_database_keeps_the_events_in_the_spool(store: AuditStore, tmp_path: pathlib.Path) -> None:
    recorder = AuditRecorder(tmp_path)
    recorder.record(_read(), balp.Requester(client_id="c1"), SERVER)
    unreachable = AuditStore(make_engine("postgresql+psycopg://postgres@127.0.0.1:1/none"))  # nothing listens
    with pytest.raises(Exception):  # noqa: B017 - whatever the driver raises: the pass fails
        AuditWriter(unreachable, tmp_path).drain()
    assert AuditWriter(store, tmp_path).drain() == 1 and store.count() == 1


def test_a_failed_pass_is_stored_by_the_next_one_from_the_committed_offsets(
    store: AuditStore, tmp_path: pathlib.Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    workers = [AuditRecorder(tmp_path), AuditRecorder(tmp_path)]
    writer = AuditWriter(store, tmp_path)
    workers[0].record(_read(), balp.Requester(client_id="c1"), SERVER)
    with monkeypatch.context() as patched:  # a second worker's spool file (another process)
        patched.setattr(recorder_module, "spool_prefix", lambda: "spool-node2-77-")
        workers[1].record(_read(), balp.Requester(client_id="c1"), SERVER)
    assert len(list(tmp_path.glob("spool-*"))) == 2
    assert writer.drain() == 2  # both files, one transaction
    for recorder in workers:
        recorder.record(_read("Patient/p2"), balp.Requester(client_id="c1"), SERVER)

    def refuse(*_args: object) -> None:
        raise RuntimeError("the database refused")

    with monkeypatch.context() as patched:
        patched.setattr(store, "append_rows_on", refuse)
        with pytest.raises(RuntimeError):
            writer.drain()
    assert writer.drain() == 2 and writer.drain() == 0
    assert store.count() == 4 and store.verify().ok
