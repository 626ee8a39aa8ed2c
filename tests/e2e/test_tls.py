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


def test_a_client_authenticates_with_its_certificate_and_its_tokens_are_bound_to_it(
    pki: Pki, tmp_path: pathlib.Path
) -> None:
    """RFC 8705: tls_client_auth at the token endpoint, certificate-bound access tokens."""
    import subprocess
    import sys

    from joserfc import jwt
    from joserfc.jwk import KeySet

    fhir_server = str(pathlib.Path(sys.executable).with_name("fhir-server"))
    database = _sqlite(tmp_path)
    registered = subprocess.run(
        [fhir_server, "clients", "add", "lab", "--tls-subject", "CN=client", "--scope", "system/*.rs",
         "--database-url", database, "--data-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert registered.returncode == 0 and "tls_client_auth" in registered.stdout, registered.stderr
    server = ServerProcess(
        database,
        tmp_path,
        auth=True,
        args=_tls_args(pki, "--tls-client-ca", str(pki.ca)),
        ready={"verify": str(pki.ca)},
    )
    mine = (str(pki.client_cert), str(pki.client_key))
    other = (str(pki.other_client_cert), str(pki.other_client_key))
    token_url = server.root + "/auth/token"
    form = {"grant_type": "client_credentials", "client_id": "lab", "scope": "system/Patient.rs"}
    try:
        conf = requests.get(server.base + "/.well-known/smart-configuration", verify=str(pki.ca), timeout=10).json()
        assert "tls_client_auth" in conf["token_endpoint_auth_methods_supported"]
        assert conf["tls_client_certificate_bound_access_tokens"] is True
        refused = requests.post(token_url, data=form, verify=str(pki.ca), timeout=10)
        assert refused.status_code in (400, 401) and refused.json()["error"] == "invalid_client"
        wrong = requests.post(token_url, data=form, verify=str(pki.ca), cert=other, timeout=10)
        assert wrong.status_code in (400, 401) and wrong.json()["error"] == "invalid_client"
        issued = requests.post(token_url, data=form, verify=str(pki.ca), cert=mine, timeout=10)
        assert issued.status_code == 200, issued.text
        token = issued.json()["access_token"]
        keys = KeySet.import_key_set(requests.get(server.root + "/auth/jwks", verify=str(pki.ca), timeout=10).json())
        claims = jwt.decode(token, keys).claims
        assert "x5t#S256" in claims["cnf"]
        bearer = {"Authorization": f"Bearer {token}"}
        ok = requests.get(server.base + "/Patient", headers=bearer, verify=str(pki.ca), cert=mine, timeout=10)
        assert ok.status_code == 200, ok.text
        for cert in (None, other):  # stolen: the token is useless without its certificate
            stolen = requests.get(server.base + "/Patient", headers=bearer, verify=str(pki.ca), cert=cert, timeout=10)
            assert stolen.status_code == 401 and "bound to a client certificate" in stolen.text
    finally:
        server.stop()
