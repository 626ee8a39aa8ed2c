"""HTTPS served directly, TLS 1.2 at least and 1.3 preferred, and mutual TLS (ITI-19), against a
real server with certificates made in the test (tests/pki.py)."""

from __future__ import annotations

import pathlib
import socket
import ssl
import warnings
from collections.abc import Iterator

import pytest
import requests

from tests.conftest import ServerProcess
from tests.pki import Pki


def _tls_args(pki: Pki, *extra: str) -> tuple[str, ...]:
    return ("--tls-cert", str(pki.server_cert), "--tls-key", str(pki.server_key), *extra)


def _sqlite(directory: pathlib.Path) -> str:
    return f"sqlite:///{directory / 'fhir.db'}"


@pytest.fixture(scope="module")
def https(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("tls")
    server = ServerProcess(_sqlite(data), data, args=_tls_args(pki), ready={"verify": str(pki.ca)})
    yield server
    server.stop()


def _handshake(port: int, pki: Pki, maximum: ssl.TLSVersion | None = None, cert: bool = False) -> str:
    context = ssl.create_default_context(cafile=str(pki.ca))
    if maximum is not None:
        context.maximum_version = maximum
    if cert:
        context.load_cert_chain(str(pki.client_cert), str(pki.client_key))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        tls.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        answer = tls.recv(64)
        assert answer.startswith(b"HTTP/1.1 200"), answer
        return str(tls.version())


def test_https_prefers_tls13_and_accepts_tls12(https: ServerProcess, pki: Pki) -> None:
    assert requests.get(https.base + "/metadata", verify=str(pki.ca), timeout=10).status_code == 200
    assert _handshake(https.port, pki) == "TLSv1.3"
    assert _handshake(https.port, pki, ssl.TLSVersion.TLSv1_2) == "TLSv1.2"


def test_older_tls_and_plain_http_are_refused(https: ServerProcess, pki: Pki) -> None:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with warnings.catch_warnings():  # the client offers TLS 1.1 on purpose
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        context.maximum_version = ssl.TLSVersion.TLSv1_1
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with socket.create_connection(("127.0.0.1", https.port), timeout=5) as raw:
            context.wrap_socket(raw).close()
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{https.port}/fhir/metadata", timeout=5)


def test_mutual_tls_refuses_clients_without_a_certificate(pki: Pki, tmp_path: pathlib.Path) -> None:
    args = _tls_args(pki, "--tls-client-ca", str(pki.ca), "--tls-require-client-cert")
    client = {"verify": str(pki.ca), "cert": (str(pki.client_cert), str(pki.client_key))}
    server = ServerProcess(_sqlite(tmp_path), tmp_path, args=args, ready=client)
    try:
        assert requests.get(server.base + "/metadata", timeout=10, **client).status_code == 200
        assert _handshake(server.port, pki, cert=True) == "TLSv1.3"
        with pytest.raises(requests.exceptions.SSLError):
            requests.get(server.base + "/metadata", verify=str(pki.ca), timeout=10)
    finally:
        server.stop()
