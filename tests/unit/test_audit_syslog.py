"""ITI-20 syslog export: RFC 5424 messages over mutual TLS (RFC 5425) and UDP (RFC 5426), store and forward.

Real sockets on 127.0.0.1, certificates made here with ``cryptography``, a TLS listener that
requires a client certificate and parses octet counting, and a UDP listener.
"""

from __future__ import annotations

import datetime as dt
import fcntl
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from lxml import etree

from fhir_server.audit.dicom_xml import audit_message_xml
from fhir_server.audit.syslog import (
    BOM,
    AuditForwarder,
    SyslogMessageTooLarge,
    SyslogTarget,
    TlsSyslogSender,
    UdpSyslogSender,
    format_rfc5424,
    octet_counted,
)
from tests.pki import Pki
from tests.syslog_listener import TlsSyslogListener, UdpSyslogListener, free_port

SYSLOG_LINE = re.compile(
    rb"^<(?P<pri>\d{1,3})>(?P<version>\d) (?P<timestamp>\S+) (?P<hostname>\S+) (?P<app>\S+) "
    rb"(?P<procid>\S+) (?P<msgid>\S+) (?P<sd>-) (?P<msg>.*)$",
    re.DOTALL,
)


@pytest.fixture
def listener(pki: Pki) -> Any:
    server = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca)
    yield server
    server.close()


@pytest.fixture
def udp_listener() -> Any:
    server = UdpSyslogListener()
    yield server
    server.close()


def tls_target(pki: Pki, port: int, **overrides: Any) -> SyslogTarget:
    options: dict[str, Any] = {
        "ca_file": pki.ca,
        "cert_file": pki.client_cert,
        "key_file": pki.client_key,
        "timeout": 3.0,
    }
    options.update(overrides)
    return SyslogTarget("127.0.0.1", port, "tls", **options)


# -- audit messages ----------------------------------------------------------------------------


def audit_event(marker: str, *, outcome_description: str | None = None) -> dict[str, Any]:
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
        "subtype": [{"system": "http://hl7.org/fhir/restful-interaction", "code": "read"}],
        "action": "R",
        "recorded": "2025-03-01T00:00:00Z",
        "outcome": "0",
        "agent": [
            {"who": {"display": "client-app"}, "requestor": True, "network": {"address": "192.0.2.1", "type": "2"}}
        ],
        "source": {"observer": {"display": "telefhir"}},
        "entity": [{"what": {"reference": f"Patient/{marker}"}}],
    }
    if outcome_description is not None:
        event["outcomeDesc"] = outcome_description
    return event


def parse_syslog(message: bytes) -> dict[str, bytes]:
    match = SYSLOG_LINE.match(message)
    assert match is not None, message[:200]
    return match.groupdict()


def forwarder(target: SyslogTarget, spool: Path, **options: Any) -> AuditForwarder:
    return AuditForwarder(target, spool, hostname="fhir.example.cn", app_name="telefhir", **options)


# -- RFC 5424 formatting --------------------------------------------------------------------------


def test_format_rfc5424_header_and_bom() -> None:
    when = dt.datetime(2025, 3, 1, 8, 30, 15, 120000, tzinfo=dt.timezone(dt.timedelta(hours=8)))
    xml = b"<?xml version='1.0' encoding='UTF-8'?><AuditMessage/>"
    message = format_rfc5424(xml, hostname="fhir.example.cn", app_name="telefhir", procid="4242", timestamp=when)
    assert message == (b"<85>1 2025-03-01T00:30:15.120000Z fhir.example.cn telefhir 4242 IHE+RFC-3881 - " + BOM + xml)
    # a message that already has its BOM does not get a second one
    again = format_rfc5424(BOM + xml, hostname="h", app_name="a", procid="1", timestamp=when, msgid="X", pri=13)
    assert again.startswith(b"<13>1 ") and again.count(BOM) == 1 and b" X - " in again


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"hostname": "fhir server"}, "HOSTNAME"),
        ({"hostname": "h" * 256}, "HOSTNAME"),
        ({"app_name": "a" * 49}, "APP_NAME"),
        ({"app_name": "医院"}, "APP_NAME"),
        ({"procid": ""}, "PROCID"),
        ({"msgid": "m" * 33}, "MSGID"),
        ({"pri": 192}, "PRI"),
        ({"timestamp": dt.datetime(2025, 1, 1)}, "timezone"),
        ({"message": b"\xff\xfe<AuditMessage/>"}, "UTF-8"),
    ],
)
def test_format_rfc5424_rejects_bad_fields(options: dict[str, Any], message: str) -> None:
    arguments: dict[str, Any] = {
        "message": b"<AuditMessage/>",
        "hostname": "h",
        "app_name": "a",
        "procid": "1",
        "timestamp": dt.datetime.now(dt.UTC),
    }
    arguments.update(options)
    payload = arguments.pop("message")
    with pytest.raises(ValueError, match=message):
        format_rfc5424(payload, **arguments)


def test_octet_counting_frame() -> None:
    assert octet_counted("<85>1 é".encode()) == b"8 <85>1 \xc3\xa9"
    with pytest.raises(ValueError):
        octet_counted(b"")


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("", 6514), "host"),
        (("h", 0), "port"),
        (("h", 6514, "tcp"), "transport"),
        (("h", 514, "udp", "ca.pem"), "tls"),
    ],
)
def test_syslog_target_validation(arguments: tuple[Any, ...], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SyslogTarget(*arguments)
    with pytest.raises(ValueError, match="key_file"):
        SyslogTarget("h", 6514, key_file="k.pem")
    with pytest.raises(ValueError, match="timeout"):
        SyslogTarget("h", 6514, timeout=0)


# -- TLS (RFC 5425) with mutual authentication (ITI-19) -------------------------------------------


def test_tls_delivery_is_framed_and_parses_back(pki: Pki, listener: TlsSyslogListener, tmp_path: Path) -> None:
    sender = forwarder(tls_target(pki, listener.port), tmp_path)
    first = sender.enqueue(audit_event("p1"))
    second_xml = audit_message_xml(audit_event("p2"))
    sender.enqueue(second_xml)
    first_xml = first.read_bytes()
    assert sender.pending() == 2

    assert sender.deliver_pending() == 2
    received = listener.wait_for(2)
    assert len(received) == 2
    assert listener.connections == 1  # one connection carried the batch
    assert listener.versions == ["TLSv1.3"]
    for message, xml in zip(received, [first_xml, second_xml], strict=True):
        fields = parse_syslog(message)
        assert fields["pri"] == b"85" and fields["version"] == b"1"
        assert fields["msgid"] == b"IHE+RFC-3881" and fields["sd"] == b"-"
        assert fields["hostname"] == b"fhir.example.cn" and fields["app"] == b"telefhir"
        assert fields["procid"] == str(os.getpid()).encode()
        stamp = dt.datetime.fromisoformat(fields["timestamp"].decode())
        assert abs((dt.datetime.now(dt.UTC) - stamp).total_seconds()) < 60
        assert fields["msg"] == BOM + xml
        root = etree.fromstring(fields["msg"][len(BOM) :])
        assert root.tag == "AuditMessage"
    assert (
        etree.fromstring(received[1][received[1].index(b"<?xml") :])
        .find("ParticipantObjectIdentification")
        .get("ParticipantObjectID")
        == "Patient/p2"
    )
    assert sender.pending() == 0 and sender.last_error is None and sender.due()
    assert listener.errors == []


def test_tls12_repository_is_served_with_iti19_suites(pki: Pki, tmp_path: Path) -> None:
    repository = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca, maximum_version=ssl.TLSVersion.TLSv1_2)
    try:
        sender = forwarder(tls_target(pki, repository.port), tmp_path)
        sender.enqueue(audit_event("p1"))
        assert sender.deliver_pending() == 1
        assert len(repository.wait_for(1)) == 1
        assert repository.versions == ["TLSv1.2"]
    finally:
        repository.close()


@pytest.mark.parametrize("maximum", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["tls1.2", "tls1.3"])
def test_client_without_certificate_cannot_deliver(pki: Pki, tmp_path: Path, maximum: ssl.TLSVersion) -> None:
    repository = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca, maximum_version=maximum)
    try:
        sender = forwarder(tls_target(pki, repository.port, cert_file=None, key_file=None), tmp_path)
        for marker in ("p1", "p2"):
            sender.enqueue(audit_event(marker))
        assert sender.deliver_pending() == 0
        assert sender.pending() == 2
        assert sender.last_error is not None and "SSL" in sender.last_error
        assert not sender.due()
        time.sleep(0.1)
        assert repository.messages == []
    finally:
        repository.close()


@pytest.mark.parametrize("case", ["rogue-server-certificate", "wrong-host-name"])
def test_unverifiable_repository_is_not_sent_to(pki: Pki, tmp_path: Path, case: str) -> None:
    if case == "rogue-server-certificate":
        repository = TlsSyslogListener(pki.rogue_server_cert, pki.rogue_server_key, pki.ca)
        target = tls_target(pki, repository.port)
    else:
        repository = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca)
        target = tls_target(pki, repository.port, server_hostname="audit.other.example")
    try:
        sender = forwarder(target, tmp_path)
        sender.enqueue(audit_event("p1"))
        assert sender.deliver_pending() == 0
        assert sender.pending() == 1
        assert "CERTIFICATE_VERIFY_FAILED" in (sender.last_error or "")
        assert repository.messages == []
    finally:
        repository.close()


def test_tls_sender_reconnects_after_repository_closed_the_connection(pki: Pki, listener: TlsSyslogListener) -> None:
    target = tls_target(pki, listener.port)
    with TlsSyslogSender(target) as sender:
        sender.send(b"<85>1 - - - - - - first")
        assert listener.wait_for(1) == [b"<85>1 - - - - - - first"]
        # the repository drops the connection (e.g. restarted): the next send must notice, not vanish
        listener.drop_connections()
        time.sleep(0.1)
        sender.send(b"<85>1 - - - - - - second")
    assert listener.wait_for(2)[1] == b"<85>1 - - - - - - second"
    assert listener.connections == 2


# -- store and forward ----------------------------------------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_store_and_forward_with_backoff(pki: Pki, tmp_path: Path) -> None:
    port = free_port()
    clock = FakeClock()
    sender = forwarder(tls_target(pki, port), tmp_path, backoff_initial=1.0, backoff_max=3.0, clock=clock)
    spooled = [sender.enqueue(audit_event(f"p{n}")).read_bytes() for n in range(3)]

    assert sender.deliver_pending() == 0  # repository down
    assert sender.pending() == 3
    assert sender.last_error is not None and "ConnectionRefused" in sender.last_error
    assert sender.next_attempt_at == 1001.0 and not sender.due()
    assert sender.deliver_if_due() == 0 and sender.failures == 1

    clock.now = 1001.0
    assert sender.due()
    assert sender.deliver_if_due() == 0  # still down: the delay doubles
    assert sender.next_attempt_at == 1003.0
    clock.now = 1003.0
    assert sender.deliver_pending() == 0
    assert sender.next_attempt_at == 1006.0  # capped at backoff_max

    repository = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca, port=port)
    try:
        assert not sender.due()
        clock.now = 1006.0
        assert sender.due()
        assert sender.deliver_if_due() == 3
        received = repository.wait_for(3)
        time.sleep(0.1)
        assert len(repository.messages) == 3  # each arrived once
        assert [parse_syslog(m)["msg"] for m in received] == [BOM + xml for xml in spooled]  # in order
        assert sender.pending() == 0
        assert (sender.last_error, sender.failures, sender.next_attempt_at) == (None, 0, None)
        assert sender.deliver_pending() == 0  # nothing left to send
        time.sleep(0.05)
        assert len(repository.messages) == 3
    finally:
        repository.close()


def test_spool_names_sort_in_enqueue_order_and_files_are_complete(tmp_path: Path) -> None:
    sender = forwarder(SyslogTarget("127.0.0.1", 9, "udp"), tmp_path)
    paths = [sender.enqueue(audit_event(f"p{n}")) for n in range(20)]
    assert sorted(paths) == paths
    assert [p.name for p in sorted(tmp_path.iterdir()) if p.is_file() and not p.name.startswith(".")] == [
        p.name for p in paths
    ]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob(".*.tmp"))
    for path in paths:
        assert re.fullmatch(rf"\d{{20}}-{os.getpid():010d}-\d{{12}}\.xml", path.name)
        assert etree.fromstring(path.read_bytes()).tag == "AuditMessage"


def test_enqueue_from_threads_and_another_process_is_unique(tmp_path: Path) -> None:
    sender = forwarder(SyslogTarget("127.0.0.1", 9, "udp"), tmp_path)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path;"
            "from fhir_server.audit.syslog import AuditForwarder, SyslogTarget;"
            "f = AuditForwarder(SyslogTarget('127.0.0.1', 9, 'udp'), Path(sys.argv[1]), hostname='h');"
            "[f.enqueue(b'<AuditMessage n=\"%d\"/>' % i) for i in range(25)]",
            str(tmp_path),
        ],
        cwd=Path(__file__).resolve().parents[2],
    )
    threads = [
        threading.Thread(target=lambda: [sender.enqueue(b"<AuditMessage/>") for _ in range(25)]) for _ in range(4)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert child.wait(timeout=30) == 0
    names = [p.name for p in tmp_path.glob("*.xml")]
    assert len(names) == len(set(names)) == 125 == sender.pending()
    assert {name.split("-")[1] for name in names} == {f"{os.getpid():010d}", f"{child.pid:010d}"}


def test_only_one_deliverer_at_a_time(pki: Pki, listener: TlsSyslogListener, tmp_path: Path) -> None:
    sender = forwarder(tls_target(pki, listener.port), tmp_path)
    sender.enqueue(audit_event("p1"))
    holder = os.open(tmp_path / ".deliver.lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another process (or thread) is delivering
        assert sender.deliver_pending() == 0
        assert sender.pending() == 1 and sender.last_error is None and sender.due()
    finally:
        os.close(holder)
    assert sender.deliver_pending() == 1
    assert len(listener.wait_for(1)) == 1


def test_bad_enqueue_input_is_refused_and_nothing_spooled(tmp_path: Path) -> None:
    sender = forwarder(SyslogTarget("127.0.0.1", 9, "udp"), tmp_path)
    with pytest.raises(ValueError, match="well-formed"):
        sender.enqueue(b"<AuditMessage>")
    with pytest.raises(ValueError, match="AuditMessage"):
        sender.enqueue(b"<Other/>")
    with pytest.raises(ValueError, match="DOCTYPE"):
        sender.enqueue(b"<!DOCTYPE AuditMessage [<!ENTITY x 'y'>]><AuditMessage/>")
    with pytest.raises(ValueError, match="recorded"):
        sender.enqueue({k: v for k, v in audit_event("p1").items() if k != "recorded"})
    with pytest.raises(ValueError, match="bytes or an AuditEvent"):
        sender.enqueue("<AuditMessage/>")  # type: ignore[arg-type]
    assert sender.pending() == 0 and list(tmp_path.iterdir()) == []


def test_corrupt_spool_file_is_set_aside_and_the_rest_delivered(
    pki: Pki, listener: TlsSyslogListener, tmp_path: Path
) -> None:
    sender = forwarder(tls_target(pki, listener.port), tmp_path)
    good = sender.enqueue(audit_event("p1")).read_bytes()
    corrupt = tmp_path / f"{0:020d}-{1:010d}-{0:012d}.xml"  # sorts first
    corrupt.write_bytes(b"<AuditMessage")
    assert sender.pending() == 2
    assert sender.deliver_pending() == 1
    assert parse_syslog(listener.wait_for(1)[0])["msg"] == BOM + good
    assert sender.pending() == 0 and sender.rejected() == 1
    assert (tmp_path / "rejected" / corrupt.name).read_bytes() == b"<AuditMessage"
    assert sender.last_error is not None and corrupt.name in sender.last_error


# -- UDP (RFC 5426) ---------------------------------------------------------------------------


def test_udp_delivery_one_message_per_datagram(udp_listener: UdpSyslogListener, tmp_path: Path) -> None:
    sender = forwarder(SyslogTarget("127.0.0.1", udp_listener.port, "udp"), tmp_path)
    spooled = [sender.enqueue(audit_event(f"p{n}")).read_bytes() for n in range(2)]
    assert sender.deliver_pending() == 2
    for xml in spooled:
        fields = parse_syslog(udp_listener.receive())
        assert (fields["pri"], fields["version"], fields["msgid"]) == (b"85", b"1", b"IHE+RFC-3881")
        assert fields["msg"] == BOM + xml
    assert sender.pending() == 0


def test_udp_oversize_message_is_refused_not_truncated(udp_listener: UdpSyslogListener, tmp_path: Path) -> None:
    target = SyslogTarget("127.0.0.1", udp_listener.port, "udp")
    with UdpSyslogSender(target) as sender, pytest.raises(SyslogMessageTooLarge):
        sender.send(b"<85>1 - - - - - - " + b"x" * 65_507)

    spool = forwarder(target, tmp_path)
    large = spool.enqueue(audit_event("big", outcome_description="x" * 70_000))
    small = spool.enqueue(audit_event("small")).read_bytes()
    assert spool.deliver_pending() == 1
    assert parse_syslog(udp_listener.receive())["msg"] == BOM + small
    assert spool.pending() == 0 and spool.rejected() == 1
    assert (tmp_path / "rejected" / large.name).exists()
    assert "UDP limit" in (spool.last_error or "")
