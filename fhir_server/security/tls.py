"""HTTPS served directly, and mutual TLS for system clients (IHE ITI-19 Authenticate Node).

Why the settings chosen: ITI-19's STX "TLS 1.2 floor using BCP195" — TLS 1.2 at least (1.3 is
negotiated when the client offers it, and preferred), TLS 1.2 suites limited to ECDHE/DHE with
AES-GCM (forward secrecy, AEAD), no compression or renegotiation (the ``ssl`` module's
defaults). With ``client_ca`` the server asks for a client certificate signed by that CA
(mutual TLS); ``require_client_cert`` refuses connections without one — an Audit Record
Repository or a regional platform that only talks to authenticated nodes runs this way. The
subject and the SHA-256 thumbprint of the certificate a client presented are put in the WSGI
environ for the application: a ``tls_client_auth`` client (RFC 8705) authenticates with them and
its tokens are bound to the thumbprint (security/clients.py).
"""

from __future__ import annotations

import base64
import hashlib
import ssl
from typing import Any

TLS12_CIPHERS = "ECDHE+AESGCM:DHE+AESGCM"


def server_context(
    cert_file: str, key_file: str, client_ca: str | None = None, require_client_cert: bool = False
) -> ssl.SSLContext:
    """The server side: raises ``ssl.SSLError``/``OSError`` for unreadable keys or certificates."""
    if require_client_cert and not client_ca:
        raise ValueError("requiring client certificates needs the CA that signs them (--tls-client-ca)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(TLS12_CIPHERS)
    context.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    context.load_cert_chain(cert_file, key_file)
    if client_ca:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED if require_client_cert else ssl.CERT_OPTIONAL
    return context


#: WSGI environ keys of a verified client certificate (set by server.py, read by the app)
CERT_SUBJECT = "telefhir.client_cert_subject"
CERT_THUMBPRINT = "telefhir.client_cert_sha256"


def peer_certificate(sock: Any) -> dict[str, Any] | None:
    """The verified client certificate of a TLS connection (``getpeercert()``), if any."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        cert = getpeercert()
    except (ValueError, OSError):
        return None
    return cert or None


def peer_thumbprint(sock: Any) -> str | None:
    """``x5t#S256`` of the verified client certificate: base64url (no padding) of the SHA-256 of
    its DER encoding (RFC 8705 §3.1), if the connection presented one."""
    getpeercert = getattr(sock, "getpeercert", None)
    if getpeercert is None:
        return None
    try:
        der = getpeercert(binary_form=True)
    except (ValueError, OSError):
        return None
    if not der:
        return None
    return base64.urlsafe_b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


#: RFC 4514 §3 short names of the attributes ``getpeercert`` spells out
_SHORT = {
    "commonName": "CN",
    "organizationName": "O",
    "organizationalUnitName": "OU",
    "countryName": "C",
    "stateOrProvinceName": "ST",
    "localityName": "L",
    "streetAddress": "STREET",
    "domainComponent": "DC",
    "userId": "UID",
}


def subject_name(cert: dict[str, Any]) -> str:
    """``CN=…,O=…`` (RFC 4514 short names, in the certificate's order) of a certificate as
    ``getpeercert`` gives it: the form a ``tls_client_auth`` client is registered with."""
    return ",".join(f"{_SHORT.get(k, k)}={v}" for rdn in cert.get("subject", ()) for k, v in rdn)
