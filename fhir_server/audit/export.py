"""ITI-20 export of the audit records to an Audit Record Repository (``--audit-repository``).

The audit writer hands every record it stores to an ``AuditForwarder`` (``syslog.py``), which
turns it into a DICOM AuditMessage (``dicom_xml.py``), spools it in ``<data-dir>/audit/export/``
and sends it as RFC 5424 syslog over TLS (RFC 5425, our client certificate for ITI-19 mutual
authentication) or UDP (RFC 5426), storing and forwarding while the repository is down.
"""

from __future__ import annotations

import pathlib
import urllib.parse

from fhir_server.audit.syslog import AuditForwarder, SyslogTarget
from fhir_server.config import Settings


def repository_target(settings: Settings) -> SyslogTarget:
    """The repository named by ``--audit-repository`` (ValueError saying what is wrong)."""
    url = urllib.parse.urlsplit(settings.audit_repository or "")
    if url.scheme not in ("tls", "udp") or not url.hostname or not url.port:
        raise ValueError(
            f"--audit-repository must be tls://host:port or udp://host:port, not {settings.audit_repository!r}"
        )
    if url.scheme == "udp":
        return SyslogTarget(host=url.hostname, port=url.port, transport="udp")
    return SyslogTarget(
        host=url.hostname,
        port=url.port,
        transport="tls",
        ca_file=settings.audit_repository_ca,
        cert_file=settings.audit_client_cert,
        key_file=settings.audit_client_key,
    )


def exporter(settings: Settings) -> AuditForwarder | None:
    if not settings.audit_repository:
        return None
    return AuditForwarder(repository_target(settings), pathlib.Path(settings.data_dir) / "audit" / "export")
