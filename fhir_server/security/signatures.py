"""API key + request signature for system integrations (MISSION.md R24, "API key + request
signature", 001 §8.2; issue 5 §6): an optional second check for systems that call the API with a
shared secret, on top of (not instead of) TLS and OAuth.

The client sends four headers:

``X-Api-Key``
    the key id; the server looks up the shared secret with it.
``X-Timestamp``
    the signing time as **Unix seconds** (decimal integer, UTC by definition). Chosen over
    RFC 3339 because it has one spelling: no offsets, fractions or ``T``/``t`` to normalise.
``X-Nonce``
    16–128 characters of ``[A-Za-z0-9_-]`` (``new_nonce()`` makes 24), fresh per request.
``X-Signature``
    base64 (RFC 4648 §4, with padding) of HMAC-SHA256 (RFC 2104) under the secret of the
    canonical request below.

**Canonical request** — six lines joined by ``"\\n"``, no trailing newline::

    METHOD            upper case, e.g. POST
    path              the request path as sent, with percent-encoding normalised (decoded, then
                      every octet outside RFC 3986 ``pchar`` and ``/`` re-encoded, upper-case hex)
    query             the query parameters decoded (``+`` is a space, as in HTML forms), each
                      name and value re-encoded keeping only RFC 3986 unreserved characters,
                      ``name=value`` sorted by name then value, joined by ``&``; empty if none
    timestamp         the X-Timestamp value
    nonce             the X-Nonce value
    body hash         lower-case hex SHA-256 of the body bytes (of b"" when there is none)

Worked example (see the test): secret ``b"example-secret"``, ``GET /fhir/Patient?name=王&_count=10``
at 1700000000 with nonce ``abcdefghijklmnop`` and no body gives the canonical request::

    GET
    /fhir/Patient
    _count=10&name=%E7%8E%8B
    1700000000
    abcdefghijklmnop
    e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

and the header ``X-Signature: v1rz53Pnaa7p9M2/5t4AygG0+1N8jyl/APGHhIaFZtU=`` (the same as
``openssl dgst -sha256 -hmac example-secret -binary | base64`` of those six lines).

Normalising path and query lets any HTTP client sign (they percent-encode differently), while
the signed content stays the request the server acts on. The key id is not in the canonical
request: it selects the secret, so a changed key id fails verification anyway.

**Checks** (``verify``), in this order: every header present and well-formed; key known;
timestamp within ``max_skew`` of the server clock (5 minutes, as AWS SigV4 and Kerberos allow);
signature equal in constant time (``hmac.compare_digest``); and only then the nonce recorded and
refused if seen — recording after the signature check means forged requests cannot fill the
nonce store or burn a legitimate client's nonces. A nonce must be remembered as long as its
timestamp is acceptable: ``2 × max_skew`` (``NonceCache``'s default ten minutes).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from urllib.parse import parse_qsl, quote, unquote

HEADER_KEY = "X-Api-Key"
HEADER_TIMESTAMP = "X-Timestamp"
HEADER_NONCE = "X-Nonce"
HEADER_SIGNATURE = "X-Signature"
DEFAULT_MAX_SKEW = timedelta(minutes=5)

_NONCE = re.compile(r"[A-Za-z0-9_-]{16,128}")
_KEY_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}")
_METHOD = re.compile(r"[A-Za-z]{1,16}")
#: RFC 3986 §3.3 pchar minus "%" (re-encoded), plus "/" between segments
_PATH_SAFE = "/-._~!$&'()*+,;=:@"
#: RFC 3986 §2.3 unreserved
_QUERY_SAFE = "-._~"

Query = str | Mapping[str, str | Iterable[str]] | Iterable[tuple[str, str]]


class SignatureError(Exception):
    """A signed request refused. ``reason`` is one of ``missing-header``, ``malformed``,
    ``unknown-key``, ``stale-timestamp``, ``bad-signature``, ``replayed-nonce`` (for the audit
    record); the message says more, for the log, not for the client."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class NonceCacheFull(RuntimeError):
    """Every slot holds a nonce still inside its replay window; accepting another would mean
    forgetting one that could still be replayed, so the request is refused (service unavailable)."""


def new_nonce() -> str:
    """A fresh nonce: 18 random bytes, base64url (24 characters)."""
    return secrets.token_urlsafe(18)


def _query_pairs(query: Query) -> list[tuple[str, str]]:
    if isinstance(query, str):
        return parse_qsl(query.removeprefix("?"), keep_blank_values=True, errors="strict")
    if isinstance(query, Mapping):
        pairs: list[tuple[str, str]] = []
        for name, values in query.items():
            if isinstance(values, str):
                pairs.append((name, values))
            else:
                pairs.extend((name, value) for value in values)
        return pairs
    return [(name, value) for name, value in query]


def canonical_query(query: Query) -> str:
    """The query line of the canonical request (module docstring). ``query`` is the raw query
    string, or the decoded parameters as a mapping or as (name, value) pairs."""
    encoded = sorted(
        (quote(name, safe=_QUERY_SAFE), quote(value, safe=_QUERY_SAFE)) for name, value in _query_pairs(query)
    )
    return "&".join(f"{name}={value}" for name, value in encoded)


def canonical_path(path: str) -> str:
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"path must start with '/', found {path!r}")
    return quote(unquote(path, errors="strict"), safe=_PATH_SAFE)


def canonical_request(*, method: str, path: str, query: Query, body: bytes, timestamp: str, nonce: str) -> str:
    """The string that is signed (module docstring)."""
    if not isinstance(method, str) or not _METHOD.fullmatch(method):
        raise ValueError(f"not an HTTP method: {method!r}")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise ValueError(f"timestamp must be Unix seconds (digits only), found {timestamp!r}")
    if not _NONCE.fullmatch(nonce):
        raise ValueError(f"nonce must be 16-128 characters of A-Z a-z 0-9 _ -, found {nonce!r}")
    if not isinstance(body, bytes | bytearray | memoryview):
        raise TypeError(f"body must be bytes, not {type(body).__name__}")
    return "\n".join(
        (
            method.upper(),
            canonical_path(path),
            canonical_query(query),
            timestamp,
            nonce,
            hashlib.sha256(body).hexdigest(),
        )
    )


def _mac(secret: bytes, canonical: str) -> bytes:
    return hmac.new(secret, canonical.encode("utf-8"), hashlib.sha256).digest()


def _timestamp_text(timestamp: datetime | int | None) -> str:
    if timestamp is None:
        return str(int(time.time()))
    if isinstance(timestamp, datetime):
        if timestamp.tzinfo is None or timestamp.utcoffset() is None:
            raise ValueError("timestamp must be an aware datetime")
        return str(int(timestamp.timestamp()))
    if isinstance(timestamp, int) and not isinstance(timestamp, bool) and timestamp >= 0:
        return str(timestamp)
    raise ValueError(f"timestamp must be an aware datetime or Unix seconds, found {timestamp!r}")


def sign(
    secret: bytes,
    *,
    method: str,
    path: str,
    query: Query,
    body: bytes,
    timestamp: datetime | int | None = None,
    nonce: str | None = None,
) -> dict[str, str]:
    """The X-Timestamp, X-Nonce and X-Signature headers for a request (the caller adds
    X-Api-Key). ``timestamp`` defaults to now and ``nonce`` to ``new_nonce()``."""
    if not isinstance(secret, bytes) or not secret:
        raise ValueError("secret must be non-empty bytes")
    timestamp_text = _timestamp_text(timestamp)
    nonce = new_nonce() if nonce is None else nonce
    canonical = canonical_request(
        method=method, path=path, query=query, body=body, timestamp=timestamp_text, nonce=nonce
    )
    return {
        HEADER_TIMESTAMP: timestamp_text,
        HEADER_NONCE: nonce,
        HEADER_SIGNATURE: base64.b64encode(_mac(secret, canonical)).decode("ascii"),
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    """Header lookup that works for case-insensitive (werkzeug) and plain mappings alike."""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lowered), None)
    if value is None or not value.strip():
        raise SignatureError("missing-header", f"{name} header missing")
    return value.strip()


def verify(
    headers: Mapping[str, str],
    *,
    method: str,
    path: str,
    query: Query,
    body: bytes,
    secret_for: Callable[[str], bytes | None],
    now: datetime,
    seen_nonce: Callable[[str, str], bool],
    max_skew: timedelta = DEFAULT_MAX_SKEW,
) -> str:
    """Check a signed request; returns the key id, or raises ``SignatureError`` (module docstring
    for the order of the checks). ``seen_nonce(key_id, nonce)`` records the nonce and says whether
    it had been seen before (``NonceCache`` is one)."""
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    key_id = _header(headers, HEADER_KEY)
    timestamp = _header(headers, HEADER_TIMESTAMP)
    nonce = _header(headers, HEADER_NONCE)
    signature = _header(headers, HEADER_SIGNATURE)
    if not _KEY_ID.fullmatch(key_id):
        raise SignatureError("malformed", f"{HEADER_KEY} has characters outside A-Z a-z 0-9 . _ : -")
    if not _TIMESTAMP.fullmatch(timestamp):
        raise SignatureError("malformed", f"{HEADER_TIMESTAMP} must be Unix seconds (digits only)")
    if not _NONCE.fullmatch(nonce):
        raise SignatureError("malformed", f"{HEADER_NONCE} must be 16-128 characters of A-Z a-z 0-9 _ -")
    try:
        presented = base64.b64decode(signature, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("malformed", f"{HEADER_SIGNATURE} is not base64") from None
    secret = secret_for(key_id)
    if not secret:
        raise SignatureError("unknown-key", f"no secret for key id {key_id!r}")
    skew_seconds = abs(now.timestamp() - int(timestamp))
    if skew_seconds > max_skew.total_seconds():
        raise SignatureError(
            "stale-timestamp", f"{HEADER_TIMESTAMP} is {skew_seconds:.0f} s away from the server clock"
        )
    try:
        canonical = canonical_request(
            method=method, path=path, query=query, body=body, timestamp=timestamp, nonce=nonce
        )
    except (ValueError, UnicodeDecodeError) as exc:
        raise SignatureError("malformed", f"request cannot be canonicalised: {exc}") from exc
    if not hmac.compare_digest(presented, _mac(secret, canonical)):
        raise SignatureError("bad-signature", "signature does not match the request")
    if seen_nonce(key_id, nonce):
        raise SignatureError("replayed-nonce", f"nonce {nonce} was already used with key {key_id!r}")
    return key_id


class NonceCache:
    """In-memory record of recent nonces, usable as ``verify``'s ``seen_nonce``.

    Bounded: expired entries are dropped first; when every slot is still inside its window the
    call raises ``NonceCacheFull`` rather than forget a replayable nonce. Per process: with
    several worker processes, pass a shared store instead (a replay sent to another worker would
    otherwise pass). Thread-safe.
    """

    def __init__(
        self,
        ttl: timedelta = 2 * DEFAULT_MAX_SKEW,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if ttl <= timedelta(0) or max_entries < 1:
            raise ValueError("ttl must be positive and max_entries at least 1")
        self._ttl = ttl.total_seconds()
        self._max_entries = max_entries
        self._clock = clock
        self._expiry: OrderedDict[tuple[str, str], float] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._expiry)

    def __call__(self, key_id: str, nonce: str) -> bool:
        """Record ``(key_id, nonce)``; True if it was already recorded and has not expired."""
        now = self._clock()
        entry = (key_id, nonce)
        with self._lock:
            # Insertion order is expiry order (constant ttl), so expired entries are at the front.
            while self._expiry:
                oldest, expires = next(iter(self._expiry.items()))
                if expires > now:
                    break
                del self._expiry[oldest]
            if entry in self._expiry:
                return True
            if len(self._expiry) >= self._max_entries:
                raise NonceCacheFull(f"{self._max_entries} nonces inside their replay window")
            self._expiry[entry] = now + self._ttl
            return False
