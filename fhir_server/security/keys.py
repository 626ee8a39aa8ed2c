"""Token signing keys: one RS256 key signs, every published key verifies, keys rotate.

Why RS256: every SMART client library verifies it, and verifying costs ~30 µs (measured with
joserfc on these machines), which matters because every request with a token verifies one.

Rotation: when the signing key is older than ``rotate_after`` a new one is made and the old one
is retired — it stops signing but stays in the JWKS (``/auth/jwks``) until every token it
signed has expired (``publish_for`` after retirement), so rotation never invalidates a token in
flight. Keys live in the database (``auth_signing_keys``) so every worker and node signs with
the same key and verifies the others'. The private keys are stored as JWK JSON in that table:
whoever can read the database can mint tokens, which is why the database credentials are
secrets (docs/security.md).

The same table holds the keys that sign published documents (``purpose = "document"``,
workflow/documents.py): they rotate yearly and stay published for good, since a report must stay
verifiable for as long as it is kept. The two kinds never sign for each other.
"""

from __future__ import annotations

import secrets
from typing import Any

import orjson
from joserfc.jwk import KeySet, RSAKey
from sqlalchemy import insert, select, update
from sqlalchemy.engine import Engine

from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_signing_keys as K
from fhir_server.util.clock import now_us

ALG = "RS256"
DAY_US = 86_400_000_000


class SigningKeys:
    """The key ring as the database holds it, re-read when it may have changed."""

    def __init__(
        self,
        engine: Engine,
        *,
        rotate_after_days: float = 30.0,
        publish_for_s: float | None = 7_200.0,
        purpose: str = "token",
    ) -> None:
        """``publish_for_s``: how long a retired key stays published (None: for good)."""
        self.engine = engine
        self.rotate_after_us = int(rotate_after_days * DAY_US)
        self.publish_for_us = None if publish_for_s is None else int(publish_for_s * 1_000_000)
        self.purpose = purpose
        self._rows: list[Any] = []
        self._keyset: KeySet | None = None

    def _load(self) -> None:
        with self.engine.connect() as conn:
            self._rows = list(conn.execute(select(K).where(K.c.purpose == self.purpose).order_by(K.c.created_us)))
        self._keyset = KeySet([RSAKey.import_key(orjson.loads(r.private_jwk)) for r in self._rows])

    def ensure_current(self) -> str:
        """Make a signing key if there is none or the newest is due for rotation; its kid.
        Called once at start (before workers fork) and by a worker that finds its key stale."""
        self._load()
        now = now_us()
        active = [r for r in self._rows if r.retired_us is None]
        newest = active[-1] if active else None
        if newest is not None and now - newest.created_us < self.rotate_after_us:
            return str(newest.kid)
        kid = secrets.token_urlsafe(12)
        key = RSAKey.generate_key(2048, parameters={"kid": kid, "alg": ALG, "use": "sig"}, private=True)
        with begin_write(self.engine) as conn:
            private_jwk = orjson.dumps(key.as_dict(private=True)).decode()
            conn.execute(
                insert(K).values(
                    kid=kid, alg=ALG, private_jwk=private_jwk, created_us=now, retired_us=None, purpose=self.purpose
                )
            )
            for row in active:
                conn.execute(update(K).where(K.c.kid == row.kid).values(retired_us=now))
        self._load()
        return kid

    def signing_key(self) -> RSAKey:
        """The newest active key (made or rotated if needed)."""
        if not self._rows or now_us() - self._rows[-1].created_us >= self.rotate_after_us:
            self.ensure_current()
        active = [r for r in self._rows if r.retired_us is None] or self._rows
        return RSAKey.import_key(orjson.loads(active[-1].private_jwk))

    def verification_keys(self, kid: str | None = None) -> KeySet:
        """The keys tokens are verified with; re-read once when ``kid`` is not known here (a key
        another worker just made)."""
        if self._keyset is None or (kid is not None and not any(r.kid == kid for r in self._rows)):
            self._load()
        assert self._keyset is not None
        return self._keyset

    def jwks(self) -> dict[str, Any]:
        """The published public keys: active ones and retired ones whose tokens may still live."""
        self._load()
        cutoff = None if self.publish_for_us is None else now_us() - self.publish_for_us
        keys = []
        for row in self._rows:
            if row.retired_us is None or cutoff is None or row.retired_us > cutoff:
                keys.append(RSAKey.import_key(orjson.loads(row.private_jwk)).as_dict(private=False))
        return {"keys": keys}
