"""Black-box tests: OAuth clients talk plain HTTP to the server on 127.0.0.1."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _plain_http_on_loopback(monkeypatch: pytest.MonkeyPatch) -> None:
    """oauthlib and authlib insist on https; these tests talk to 127.0.0.1 (HTTPS itself is tested
    with TLS serving, tests/e2e/test_tls.py)."""
    monkeypatch.setenv("OAUTHLIB_INSECURE_TRANSPORT", "1")
    monkeypatch.setenv("AUTHLIB_INSECURE_TRANSPORT", "1")
