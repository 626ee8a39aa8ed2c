"""Access tokens: issued as signed JWTs (RFC 9068 shape), checked on every request.

Why self-contained JWTs: a request then costs a signature check (~30 µs), not a database
read; and because a worker keeps the tokens it has checked (until they expire), a client
reusing its token costs one dictionary lookup. What a JWT cannot do by itself is be taken back:
revoked tokens (RFC 7009) are listed in ``auth_revoked`` by ``jti``, and each worker re-reads
the recent revocations at most every ``revocation_poll_s`` seconds, so a revocation takes effect
everywhere within that time (docs/security.md states it).

The same table remembers the ``jti`` of client assertions (``private_key_jwt``) until they
expire, so an assertion replayed to another worker is refused too (SMART Backend Services:
"the authorization server SHALL check the jti ... has not been used before").
"""

from __future__ import annotations

import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import JoseError
from sqlalchemy import delete, insert, select
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError

from fhir_server.security import digest
from fhir_server.security.keys import ALG, SigningKeys
from fhir_server.security.scopes import ScopeError, ScopeSet
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_revoked as R
from fhir_server.util.clock import now_us

ISSUER = "urn:telefhir:oauth"
#: the ``aud`` of our access tokens: this FHIR server, whatever host name reached it
AUDIENCE = "urn:telefhir:fhir"


class InvalidToken(Exception):
    """The bearer token is not one of ours, is expired, revoked or malformed (reason in args)."""


@dataclass(frozen=True)
class Principal:
    """Who a request acts for, from its access token."""

    client_id: str
    scopes: ScopeSet
    jti: str
    expires: int  # seconds since the epoch
    subject: str
    user: str | None = None  # fhirUser: "Practitioner/12"
    organization: str | None = None  # the tenant
    token_tail: str = ""  # the token's last 32 characters, for audit (BALP "Opaque")
    signed: bool = False  # requests must carry a valid signature (signing.py)
    #: a person signed in (their account's roles decide with the scopes), not a client acting alone
    person: bool = False
    roles: tuple[str, ...] = ()  # the account's roles (security/roles.py)
    patient: str | None = None  # the patient in context (SMART ``patient``): a Patient id
    certificate: str | None = None  # x5t#S256 of the client certificate the token is bound to (RFC 8705)


class TokenService:
    def __init__(
        self,
        engine: Engine,
        keys: SigningKeys,
        *,
        lifetime_s: int = 3600,
        revocation_poll_s: float = 2.0,
        cache_size: int = 4096,
    ) -> None:
        self.engine = engine
        self.keys = keys
        self.lifetime_s = lifetime_s
        self.revocation_poll_s = revocation_poll_s
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._cache_size = cache_size
        self._revoked: set[str] = set()
        self._revoked_seen_us = 0
        self._revoked_checked = 0.0

    # -- issuing -----------------------------------------------------------------------------
    def issue(self, client: Any, scope: str, *, user: Any = None, certificate: str | None = None) -> str:
        """A signed access token; ``certificate``: the x5t#S256 it is bound to (RFC 8705 §3)."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": ISSUER,
            "aud": AUDIENCE,
            "sub": str(user.get_user_id()) if user is not None else client.get_client_id(),
            "client_id": client.get_client_id(),
            "scope": scope,
            "iat": now,
            "exp": now + self.lifetime_s,
            "jti": secrets.token_urlsafe(16),
        }
        account = getattr(user, "user", None)  # authcode.AccountUser: a person logged in
        if account is not None:
            claims["roles"] = list(account.roles)  # present, even empty: the token is a person's
            if account.fhir_user:
                claims["fhirUser"] = account.fhir_user
                if account.fhir_user.startswith("Patient/"):
                    claims["patient"] = account.fhir_user.split("/", 1)[1]
            launched = getattr(user, "context", None) or {}
            # SMART launch context: an EHR launch's (security/launch.py), a chosen patient's (picker.py)
            if {"launch", "launch/patient"} & set(scope.split()):
                for key in ("patient", "encounter"):
                    if launched.get(key) and key not in claims:
                        claims[key] = launched[key]
            if account.organization:
                claims["organization"] = account.organization
        elif getattr(client, "organization", None):
            claims["organization"] = client.organization
        if getattr(client, "signs", False):
            claims["sig"] = True  # every request with this token must be signed (signing.py)
        if certificate:
            claims["cnf"] = {"x5t#S256": certificate}
        key = self.keys.signing_key()
        return jwt.encode({"alg": ALG, "typ": "at+jwt", "kid": key.kid}, claims, key)

    # -- checking ----------------------------------------------------------------------------
    def decode(self, token: str) -> dict[str, Any] | None:
        """The claims of a token we signed that has not expired, else None."""
        try:
            header = jws.extract_compact(token.encode()).headers()
            parsed = jwt.decode(token, self.keys.verification_keys(header.get("kid")), algorithms=[ALG])
        except (JoseError, ValueError):
            return None
        claims = dict(parsed.claims)
        if claims.get("iss") != ISSUER or claims.get("aud") != AUDIENCE or "jti" not in claims:
            return None
        if int(claims.get("exp", 0)) <= time.time():
            return None
        return claims

    def authenticate(self, token: str) -> Principal:
        """The principal of a valid bearer token; ``InvalidToken`` with the reason otherwise."""
        principal = self._cache.get(token)
        if principal is None:
            claims = self.decode(token)
            if claims is None:
                raise InvalidToken("the access token is not valid (unknown signer, malformed or expired)")
            try:
                scopes = ScopeSet.parse(claims.get("scope"))
            except ScopeError as exc:
                raise InvalidToken(str(exc)) from None
            principal = Principal(
                client_id=str(claims.get("client_id")),
                scopes=scopes,
                jti=str(claims["jti"]),
                expires=int(claims["exp"]),
                subject=str(claims.get("sub")),
                user=claims.get("fhirUser"),
                organization=claims.get("organization"),
                token_tail=token[-32:],
                signed=claims.get("sig") is True,
                person=isinstance(claims.get("roles"), list),
                roles=tuple(str(r) for r in claims.get("roles") or ()),
                patient=claims.get("patient") if isinstance(claims.get("patient"), str) else None,
                certificate=(claims.get("cnf") or {}).get("x5t#S256") if isinstance(claims.get("cnf"), dict) else None,
            )
            self._cache[token] = principal
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        if principal.expires <= time.time():
            self._cache.pop(token, None)
            raise InvalidToken("the access token has expired")
        if self.is_revoked(principal.jti):
            self._cache.pop(token, None)
            raise InvalidToken("the access token has been revoked")
        return principal

    def is_revoked(self, jti: str) -> bool:
        now = time.monotonic()
        if now - self._revoked_checked >= self.revocation_poll_s:
            self._revoked_checked = now
            with self.engine.connect() as conn:
                rows = conn.execute(select(R.c.jti, R.c.revoked_us).where(R.c.revoked_us > self._revoked_seen_us)).all()
            for row in rows:
                self._revoked.add(row.jti)
                self._revoked_seen_us = max(self._revoked_seen_us, row.revoked_us)
        return jti in self._revoked

    # -- revoking and replay -----------------------------------------------------------------
    def revoke(self, jti: str, expires: int) -> None:
        """Revoke (idempotent); this worker stops accepting it at once, others within the poll."""
        now = now_us()
        with begin_write(self.engine) as conn:
            conn.execute(delete(R).where(R.c.expires_us < now))  # expired entries are useless
            try:
                with conn.begin_nested():
                    conn.execute(insert(R).values(jti=jti, expires_us=expires * 1_000_000, revoked_us=now))
            except IntegrityError:
                pass
        self._revoked.add(jti)

    def remember_assertion(self, client_id: str, jti: str, expires: int) -> bool:
        """False when this client assertion ``jti`` was seen before (a replay)."""
        return first_use(self.engine, "assertion", f"{client_id}\0{jti}", expires * 1_000_000)


def first_use(engine: Engine, kind: str, value: str, expires_us: int) -> bool:
    """Record ``value`` (a client assertion's jti, a signed request's nonce) until ``expires_us``;
    False if it was recorded already — a replay, whichever worker saw it first. The rows share
    ``auth_revoked`` (``revoked_us`` 0, so the revocation poll never loads them)."""
    key = f"{kind}:{digest(value)}"[:64]
    try:
        with begin_write(engine) as conn:
            conn.execute(insert(R).values(jti=key, expires_us=expires_us, revoked_us=0))
    except IntegrityError:
        return False
    return True
