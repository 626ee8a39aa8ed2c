"""Request signatures required of the clients that registered a signing secret (R24: "API key +
request signature" for system integrations), on top of their OAuth token and TLS.

``fhir-server clients signing-secret ID`` makes a secret (shown once) and stores it encrypted
with the field key ring (``crypto.py``, AES-256-GCM, bound to the client's row). Tokens issued to
such a client carry ``"sig": true``; every request with one must then carry ``X-Api-Key`` (the
client id), ``X-Timestamp``, ``X-Nonce`` and ``X-Signature`` as ``signatures.py`` defines, or it is
a 401. A nonce is refused a second time across all workers (recorded in the database until it can
no longer be accepted), so a captured request cannot be replayed within the five-minute window.
"""

from __future__ import annotations

import os
import pathlib
import secrets
from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.engine import Engine

from fhir_server.security import crypto
from fhir_server.security.keyring import KeyRing
from fhir_server.security.signatures import DEFAULT_MAX_SKEW, SignatureError, verify
from fhir_server.security.tokens import first_use
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_clients as C
from fhir_server.util.clock import now_us

ENV = "FHIR_SERVER_FIELD_KEYS"


def key_ring(data_dir: pathlib.Path) -> KeyRing:
    """The field key ring: ``FHIR_SERVER_FIELD_KEYS`` (its JSON; read-only), else
    ``<data-dir>/keys/field-keys.json`` (made on first use, 0600)."""
    given = os.environ.get(ENV)
    if given:
        return KeyRing.from_env(given)
    return KeyRing.open(pathlib.Path(data_dir) / "keys" / "field-keys.json")


def secret_aad(client_id: str) -> str:
    return f"auth_clients/{client_id}#signing_secret"


class RequestSigning:
    def __init__(self, engine: Engine, ring: KeyRing) -> None:
        self.engine = engine
        self.ring = ring
        self._secrets: dict[str, bytes] = {}

    def new_secret(self, client_id: str) -> str:
        """A fresh secret for ``client_id`` (replacing any other), to be shown once."""
        secret = secrets.token_urlsafe(32)
        with begin_write(self.engine) as conn:
            stored = crypto.encrypt(self.ring, secret, secret_aad(client_id))
            if not conn.execute(update(C).where(C.c.client_id == client_id).values(signing_secret=stored)).rowcount:
                raise LookupError(f"no client {client_id!r}")
        self._secrets.pop(client_id, None)
        return secret

    def _secret(self, client_id: str) -> bytes | None:
        if client_id not in self._secrets:
            with self.engine.connect() as conn:
                stored = conn.execute(select(C.c.signing_secret).where(C.c.client_id == client_id)).scalar()
            if stored is None:
                return None
            self._secrets[client_id] = crypto.decrypt(self.ring, stored, secret_aad(client_id)).encode()
        return self._secrets[client_id]

    def _seen(self, key_id: str, nonce: str) -> bool:
        """Record a nonce for as long as its timestamp can be accepted; True if it was there."""
        expires = now_us() + 2 * int(DEFAULT_MAX_SKEW.total_seconds() * 1_000_000)
        return not first_use(self.engine, "nonce", f"{key_id}\0{nonce}", expires)

    def check(self, client_id: str, headers: dict[str, str], method: str, path: str, query: str, body: bytes) -> None:
        """Verify the request's signature for ``client_id``; ``SignatureError`` saying why not."""
        key_id = verify(
            headers,
            method=method,
            path=path,
            query=query,
            body=body,
            secret_for=self._secret,
            now=datetime.now(UTC),
            seen_nonce=self._seen,
        )
        if key_id != client_id:
            raise SignatureError("unknown-key", "X-Api-Key is not the client the access token was issued to")
