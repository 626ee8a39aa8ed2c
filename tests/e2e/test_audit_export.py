"""ITI-20 export against a real server: every audit record reaches a TLS syslog repository that
requires our client certificate (ITI-19), as a DICOM AuditMessage in RFC 5424, and records made
while the repository was down arrive once it is back (store and forward)."""

from __future__ import annotations

import pathlib
import time

import requests
from lxml import etree

from tests.conftest import ServerProcess
from tests.pki import Pki
from tests.syslog_listener import TlsSyslogListener, free_port


def _wait(listener: TlsSyslogListener, predicate, seconds: float = 15.0) -> list[bytes]:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        found = [m for m in listener.wait_for(1) if predicate(m)]
        if found:
            return found
        time.sleep(0.2)
    return []


def test_records_reach_the_repository_and_wait_while_it_is_down(pki: Pki, tmp_path: pathlib.Path) -> None:
    port = free_port()
    args = ("--audit-repository", f"tls://localhost:{port}", "--audit-repository-ca", str(pki.ca),
            "--audit-client-cert", str(pki.client_cert), "--audit-client-key", str(pki.client_key))  # fmt: skip
    server = ServerProcess(f"sqlite:///{tmp_path / 'fhir.db'}", tmp_path, args=args)
    try:
        # the repository is down: a read is audited and its export waits in the spool
        pid = requests.post(server.base + "/Patient", json={"resourceType": "Patient"}, timeout=10).json()["id"]
        assert requests.get(f"{server.base}/Patient/{pid}", timeout=10).status_code == 200
        time.sleep(1.0)
        assert list((tmp_path / "audit" / "export").glob("*.xml"))  # spooled, not lost
        listener = TlsSyslogListener(pki.server_cert, pki.server_key, pki.ca, port=port)
        try:
            reads = _wait(listener, lambda m: pid.encode() in m and b'EventActionCode="R"' in m)
            assert reads, listener.messages[:3]
            message = reads[0]
            assert message.startswith(b"<85>1 ") and b" IHE+RFC-3881 - " in message
            xml = etree.fromstring(message[message.index(b"<?xml") :])
            assert xml.tag == "AuditMessage"
            assert xml.find("EventIdentification").get("EventOutcomeIndicator") == "0"
            ids = [p.get("ParticipantObjectID") for p in xml.iter("ParticipantObjectIdentification")]
            assert any(i and pid in i for i in ids)
        finally:
            listener.close()
    finally:
        server.stop()
