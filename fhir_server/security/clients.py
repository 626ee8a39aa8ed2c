"""Registered OAuth2 clients (``auth_clients``) and the bootstrap client.

Client kinds (SMART App Launch 2, "client authentication"):
- confidential with a shared secret (``client_secret_basic`` or ``client_secret_post``): the secret
  is stored as an argon2id hash, never in clear (``argon2-cffi``'s defaults, RFC 9106);
- confidential asymmetric (``private_key_jwt``, SMART Backend Services): the client's public
  JWKS is registered and it signs a short assertion per token request;
- confidential by certificate (``tls_client_auth``, RFC 8705 §2.1, ITI-19): the client presents its
  TLS client certificate (issued by the CA the server trusts, ``--tls-client-ca``) whose subject is
  the registered one; its access tokens are bound to that certificate (``cnf.x5t#S256``) and are
  refused on a connection that does not present it;
- public (``none``): browser or native apps using authorization code + PKCE.

``FHIR_SERVER_BOOTSTRAP_CLIENT=id:secret`` (ARCHITECTURE.md) makes a confidential client allowed
``system/*.*`` at start, for integrators and tests; starting again with another secret replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import orjson
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, insert, select, update
from sqlalchemy.engine import Engine

from fhir_server.security.scopes import ScopeSet
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_clients as C
from fhir_server.util.clock import now_us

AUTH_METHODS = ("client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none")
GRANT_TYPES = ("client_credentials", "authorization_code", "refresh_token")
_HASHER = PasswordHasher()


@dataclass(frozen=True)
class Client:
    """One registration, with the methods authlib's grants ask of a client (``ClientMixin``)."""

    client_id: str
    name: str
    secret_hash: str | None
    jwks: dict[str, Any] | None
    auth_method: str
    grant_types: tuple[str, ...]
    redirect_uris: tuple[str, ...]
    scope: str
    organization: str | None
    disabled: bool = False
    #: a signing secret is registered: its requests must be signed (signing.py)
    signs: bool = False
    #: tls_client_auth: the subject DN its certificate must have ("CN=lab,O=Hospital")
    tls_subject: str | None = None

    # -- authlib ClientMixin ---------------------------------------------------------------
    def get_client_id(self) -> str:
        return self.client_id

    def get_default_redirect_uri(self) -> str | None:
        return self.redirect_uris[0] if self.redirect_uris else None

    def get_allowed_scope(self, scope: str | None) -> str:
        """The requested scopes this registration covers; all it may have when none asked."""
        allowed = ScopeSet.parse(self.scope)
        if not scope:
            return str(allowed)
        return str(ScopeSet.parse(scope).narrowed_to(allowed))

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.redirect_uris

    def check_client_secret(self, client_secret: str) -> bool:
        if not self.secret_hash:
            return False
        try:
            return bool(_HASHER.verify(self.secret_hash, client_secret))
        except (VerificationError, InvalidHashError):
            return False

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        """A client authenticates the way it registered, at every endpoint (token,
        introspection, revocation)."""
        return method == self.auth_method

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code" and "authorization_code" in self.grant_types

    def check_grant_type(self, grant_type: str) -> bool:
        return grant_type in self.grant_types


def _row_to_client(row: Any) -> Client:
    return Client(
        client_id=row.client_id,
        name=row.name,
        secret_hash=row.secret_hash,
        jwks=orjson.loads(row.jwks) if row.jwks else None,
        auth_method=row.auth_method,
        grant_types=tuple(row.grant_types.split()),
        redirect_uris=tuple(row.redirect_uris.split()),
        scope=row.scope,
        organization=row.organization,
        disabled=bool(row.disabled),
        signs=row.signing_secret is not None,
        tls_subject=row.tls_subject,
    )


class ClientStore:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def get(self, client_id: str) -> Client | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(C).where(C.c.client_id == client_id)).first()
        client = _row_to_client(row) if row is not None else None
        return client if client is not None and not client.disabled else None

    def list(self) -> list[Client]:
        with self.engine.connect() as conn:
            return [_row_to_client(r) for r in conn.execute(select(C).order_by(C.c.client_id))]

    def save(
        self,
        client_id: str,
        *,
        name: str | None = None,
        secret: str | None = None,
        jwks: dict[str, Any] | None = None,
        auth_method: str = "client_secret_basic",
        grant_types: tuple[str, ...] = ("client_credentials",),
        redirect_uris: tuple[str, ...] = (),
        scope: str = "system/*.*",
        organization: str | None = None,
        tls_subject: str | None = None,
    ) -> Client:
        """Create or replace a registration (validated: a bad one raises ValueError)."""
        if not client_id or any(c.isspace() for c in client_id) or len(client_id) > 128:
            raise ValueError("a client id is 1-128 characters without spaces")
        if auth_method not in AUTH_METHODS:
            raise ValueError(f"auth method must be one of {', '.join(AUTH_METHODS)}")
        unknown = set(grant_types) - set(GRANT_TYPES)
        if unknown:
            raise ValueError(f"unknown grant type {sorted(unknown)[0]!r} (known: {', '.join(GRANT_TYPES)})")
        if auth_method.startswith("client_secret") and not secret:
            raise ValueError(f"{auth_method} needs a secret")
        if auth_method == "private_key_jwt" and not (jwks and jwks.get("keys")):
            raise ValueError("private_key_jwt needs the client's public keys (a JWKS)")
        if (auth_method == "tls_client_auth") != bool(tls_subject):
            raise ValueError("tls_client_auth goes with the subject of the client's certificate (--tls-subject)")
        if "client_credentials" in grant_types and auth_method == "none":
            raise ValueError("client_credentials is for confidential clients (RFC 6749 §4.4)")
        if "authorization_code" in grant_types and not redirect_uris:
            raise ValueError("authorization_code needs at least one redirect URI")
        ScopeSet.parse(scope)  # raises ScopeError (a ValueError) for an unknown scope
        values = {
            "name": name or client_id,
            "secret_hash": _HASHER.hash(secret) if secret else None,
            "jwks": orjson.dumps(jwks).decode() if jwks else None,
            "auth_method": auth_method,
            "grant_types": " ".join(grant_types),
            "redirect_uris": " ".join(redirect_uris),
            "scope": scope,
            "organization": organization,
            "disabled": False,
            "tls_subject": tls_subject,
        }
        with begin_write(self.engine) as conn:
            conn.execute(delete(C).where(C.c.client_id == client_id))
            conn.execute(insert(C).values(client_id=client_id, created_us=now_us(), **values))
        client = self.get(client_id)
        assert client is not None
        return client

    def disable(self, client_id: str) -> bool:
        with begin_write(self.engine) as conn:
            return bool(conn.execute(update(C).where(C.c.client_id == client_id).values(disabled=True)).rowcount)

    def remove(self, client_id: str) -> bool:
        with begin_write(self.engine) as conn:
            return bool(conn.execute(delete(C).where(C.c.client_id == client_id)).rowcount)


def ensure_bootstrap(store: ClientStore, spec: str) -> Client:
    """``id:secret`` → a confidential client allowed ``system/*.*`` (replaced if it exists with
    another secret, left alone otherwise so a restart does not re-hash for nothing)."""
    client_id, sep, secret = spec.partition(":")
    if not sep or not client_id or not secret:
        raise ValueError("FHIR_SERVER_BOOTSTRAP_CLIENT must be id:secret")
    existing = store.get(client_id)
    if existing is not None and existing.scope == "system/*.*" and existing.check_client_secret(secret):
        return existing
    return store.save(client_id, name="bootstrap client", secret=secret, scope="system/*.*")
