"""API key + request signature (fhir_server.security.signatures): the documented canonical form,
and every refusal verify() promises."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from fhir_server.security.signatures import (
    NonceCache,
    NonceCacheFull,
    SignatureError,
    canonical_request,
    sign,
    verify,
)

SECRET = b"example-secret"
T = 1_700_000_000
NOW = datetime.fromtimestamp(T, UTC)
BODY = b'{"resourceType":"Patient","id":"p1"}'


def _secret_for(key_id: str) -> bytes | None:
    return {"lab-system": SECRET}.get(key_id)


def _signed(**overrides) -> dict[str, str]:
    request = {"method": "POST", "path": "/fhir/Patient", "query": "", "body": BODY, "timestamp": T}
    request.update(overrides)
    return {"X-Api-Key": "lab-system", **sign(SECRET, **request)}


def _verify(headers, *, cache=None, now=NOW, **overrides):
    request = {"method": "POST", "path": "/fhir/Patient", "query": "", "body": BODY}
    request.update(overrides)
    return verify(
        headers,
        secret_for=_secret_for,
        now=now,
        seen_nonce=cache if cache is not None else NonceCache(),
        **request,
    )


def test_worked_example_from_the_module_docstring():
    canonical = canonical_request(
        method="get",
        path="/fhir/Patient",
        query="name=王&_count=10",
        body=b"",
        timestamp="1700000000",
        nonce="abcdefghijklmnop",
    )
    assert canonical == (
        "GET\n/fhir/Patient\n_count=10&name=%E7%8E%8B\n1700000000\nabcdefghijklmnop\n"
        "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    headers = sign(
        SECRET,
        method="GET",
        path="/fhir/Patient",
        query="name=王&_count=10",
        body=b"",
        timestamp=T,
        nonce="abcdefghijklmnop",
    )
    # Computed independently: printf '<the six lines>' | openssl dgst -sha256 -hmac example-secret -binary | base64
    assert headers == {
        "X-Timestamp": "1700000000",
        "X-Nonce": "abcdefghijklmnop",
        "X-Signature": "v1rz53Pnaa7p9M2/5t4AygG0+1N8jyl/APGHhIaFZtU=",
    }
    # The server sees the query decoded, in its own order, and the headers in lower case.
    received = {k.lower(): v for k, v in headers.items()} | {"x-api-key": "lab-system"}
    key_id = verify(
        received,
        method="GET",
        path="/fhir/Patient",
        query=[("name", "王"), ("_count", "10")],
        body=b"",
        secret_for=_secret_for,
        now=NOW,
        seen_nonce=NonceCache(),
    )
    assert key_id == "lab-system"


def test_equivalent_encodings_verify():
    headers = _signed(query="given=a+b&family=%E7%8E%8B&family=li", path="/fhir/Patient/%70")
    assert _verify(headers, query={"family": ["li", "王"], "given": "a b"}, path="/fhir/Patient/p") == "lab-system"


def test_replay_is_refused():
    cache = NonceCache()
    headers = _signed()
    assert _verify(headers, cache=cache) == "lab-system"
    with pytest.raises(SignatureError) as refused:
        _verify(headers, cache=cache, now=NOW + timedelta(seconds=30))
    assert refused.value.reason == "replayed-nonce"


def test_timestamp_outside_the_window_is_refused():
    headers = _signed()
    assert _verify(headers, now=NOW + timedelta(minutes=4, seconds=59)) == "lab-system"
    assert _verify(headers, now=NOW - timedelta(minutes=5)) == "lab-system"
    for now in (NOW + timedelta(minutes=5, seconds=1), NOW - timedelta(hours=1)):
        with pytest.raises(SignatureError) as refused:
            _verify(headers, now=now)
        assert refused.value.reason == "stale-timestamp"


@pytest.mark.parametrize(
    "change",
    [
        {"body": BODY + b" "},
        {"body": b""},
        {"method": "PUT"},
        {"path": "/fhir/Patient/p1"},
        {"query": "_summary=true"},
    ],
)
def test_a_changed_request_is_refused(change):
    with pytest.raises(SignatureError) as refused:
        _verify(_signed(), **change)
    assert refused.value.reason == "bad-signature"


def test_forged_signature_does_not_burn_the_nonce():
    cache = NonceCache()
    genuine = _signed()
    guessed = sign(
        b"guess", method="POST", path="/fhir/Patient", query="", body=BODY, timestamp=T, nonce=genuine["X-Nonce"]
    )
    forged = genuine | {"X-Signature": guessed["X-Signature"]}
    with pytest.raises(SignatureError, match="bad-signature"):
        _verify(forged, cache=cache)
    assert len(cache) == 0
    assert _verify(genuine, cache=cache) == "lab-system"


def test_unknown_key_is_refused():
    headers = _signed() | {"X-Api-Key": "someone-else"}
    with pytest.raises(SignatureError) as refused:
        _verify(headers)
    assert refused.value.reason == "unknown-key"


@pytest.mark.parametrize("header", ["X-Api-Key", "X-Timestamp", "X-Nonce", "X-Signature"])
def test_missing_headers_are_refused(header):
    headers = _signed()
    del headers[header]
    with pytest.raises(SignatureError) as refused:
        _verify(headers)
    assert refused.value.reason == "missing-header" and header in str(refused.value)


@pytest.mark.parametrize(
    "override",
    [
        {"X-Signature": "not base64!"},
        {"X-Timestamp": "2023-11-14T22:13:20Z"},
        {"X-Nonce": "short"},
        {"X-Nonce": "abcdefghijklmnop\nGET"},
        {"X-Api-Key": "lab system"},
    ],
)
def test_malformed_headers_are_refused(override):
    with pytest.raises(SignatureError) as refused:
        _verify(_signed() | override)
    assert refused.value.reason == "malformed"


def test_sign_rejects_bad_input():
    with pytest.raises(ValueError, match="nonce"):
        sign(SECRET, method="GET", path="/fhir", query="", body=b"", nonce="x\ny" * 8)
    with pytest.raises(ValueError, match="path"):
        sign(SECRET, method="GET", path="fhir", query="", body=b"")
    with pytest.raises(ValueError, match="aware"):
        sign(SECRET, method="GET", path="/fhir", query="", body=b"", timestamp=datetime(2025, 1, 1))
    fresh = sign(SECRET, method="GET", path="/fhir", query="", body=b"")
    assert len(fresh["X-Nonce"]) == 24 and abs(int(fresh["X-Timestamp"]) - datetime.now(UTC).timestamp()) < 5


def test_nonce_cache_expires_and_is_bounded():
    clock = [0.0]
    cache = NonceCache(ttl=timedelta(minutes=10), max_entries=2, clock=lambda: clock[0])
    assert cache("k", "n1") is False
    assert cache("k", "n1") is True
    assert cache("other", "n1") is False  # per key id
    with pytest.raises(NonceCacheFull):
        cache("k", "n2")
    clock[0] = 601.0
    assert cache("k", "n1") is False  # expired, recorded anew
    assert cache("k", "n2") is False
    assert len(cache) == 2
