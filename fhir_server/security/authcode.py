"""Authorization code + PKCE, refresh tokens and OpenID Connect ``id_token`` (authlib grants).

SMART App Launch 2 (standalone launch): the app sends the user to ``/auth/authorize``; after the
login page (``rest/auth_http.py``) the server redirects back with a one-time code (10 minutes;
stored as its SHA-256, never in clear), which the app exchanges at ``/auth/token`` with its
``code_verifier``. PKCE is required (RFC 7636, S256 only: SMART 2 forbids ``plain``), for
confidential clients too. With ``openid`` the answer carries an ``id_token`` (OpenID Connect
Core §3.1.3.3) signed with the same keys as access tokens, ``sub`` the account, and ``fhirUser``
(the absolute URL of the user's FHIR resource) with the ``fhirUser`` scope. With
``offline_access`` or ``online_access`` it carries a refresh token (90 days or 1 day; stored as
a hash); each use replaces it by a new one and a replaced token cannot be used again (RFC 6749
§10.4 rotation). The launch context a code carries — an EHR launch's (security/launch.py) or the
patient chosen on the picker of a standalone ``launch/patient`` (security/picker.py) — passes to
its access token and refresh tokens.

Consent: a registered client is trusted for the scopes it was registered with (no consent
screen yet; docs/security.md says so).
"""

from __future__ import annotations

import contextvars
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

import orjson
from authlib.oauth2.rfc6749.grants import AuthorizationCodeGrant, RefreshTokenGrant
from authlib.oidc.core.grants import OpenIDCode
from joserfc.jwk import RSAKey
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.engine import Engine

from fhir_server.security import digest
from fhir_server.security.clients import Client
from fhir_server.security.keys import ALG, SigningKeys
from fhir_server.security.launch import LaunchContexts
from fhir_server.security.picker import STANDALONE_PATIENT
from fhir_server.security.users import User, UserStore
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_codes as CODES
from fhir_server.storage.schema import auth_refresh_tokens as REFRESH
from fhir_server.util.clock import now_us

CODE_LIFETIME_US = 600 * 1_000_000
OFFLINE_US = 90 * 86_400 * 1_000_000
ONLINE_US = 86_400 * 1_000_000
#: the issuer and FHIR base of the request being served (the id_token's ``iss``, ``fhirUser``)
request_urls: contextvars.ContextVar[tuple[str, str]] = contextvars.ContextVar("request_urls", default=("", ""))
CLIENT_AUTH = ["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none"]


@dataclass(frozen=True)
class AccountUser:
    """A user account as authlib's grants see it, with the launch context its tokens carry."""

    user: User
    #: SMART launch context: ``patient``, ``encounter`` of an EHR launch (security/launch.py), or
    #: the ``patient`` chosen on the picker (security/picker.py)
    context: dict[str, Any] = field(default_factory=dict)

    def get_user_id(self) -> str:
        return self.user.username


class _Code:
    """A stored authorization code (authlib's ``AuthorizationCodeMixin``)."""

    def __init__(self, row: Any) -> None:
        self.row = row
        self.context = orjson.loads(row.context)

    def get_redirect_uri(self) -> str:
        return str(self.row.redirect_uri)

    def get_scope(self) -> str:
        return str(self.row.scope)

    def get_nonce(self) -> str | None:
        return self.row.nonce

    def get_auth_time(self) -> int | None:
        return self.context.get("auth_time")

    def get_acr(self) -> str | None:
        return None

    def get_amr(self) -> list[str] | None:
        return self.context.get("amr")

    @property
    def code_challenge(self) -> str | None:
        return self.row.code_challenge

    @property
    def code_challenge_method(self) -> str | None:
        return self.row.code_challenge_method


class _Refresh:
    """A stored refresh token (what ``RefreshTokenGrant`` asks of a credential)."""

    def __init__(self, row: Any) -> None:
        self.row = row

    def get_scope(self) -> str:
        return str(self.row.scope)

    def check_client(self, client: Client) -> bool:
        return bool(self.row.client_id == client.get_client_id())

    def is_expired(self) -> bool:
        return bool(self.row.expires_us <= now_us())

    def is_revoked(self) -> bool:
        return bool(self.row.revoked)


class Grants:
    """The database side of the code and refresh grants, shared by the grant classes."""

    def __init__(self, engine: Engine, users: UserStore, keys: SigningKeys, launches: LaunchContexts) -> None:
        self.engine = engine
        self.users = users
        self.keys = keys
        self.launches = launches

    def save_code(
        self, code: str, client_id: str, username: str, request: Any, amr: list[str], chosen: dict[str, Any]
    ) -> None:
        """Store a code with its launch context: an EHR's (``launch`` with the ``launch`` scope), or
        the patient the person chose on the picker (``chosen``, with ``launch/patient``)."""
        payload = request.payload.data
        context: dict[str, Any] = {"auth_time": int(time.time()), "amr": amr}
        launch = payload.get("launch")
        scopes = (request.scope or "").split()
        if launch and "launch" in scopes:
            context["launch"] = self.launches.context(launch, username) or {}
        elif chosen.get("patient") and STANDALONE_PATIENT in scopes:
            context["launch"] = {"patient": chosen["patient"]}
        with begin_write(self.engine) as conn:
            conn.execute(delete(CODES).where(CODES.c.expires_us < now_us()))
            conn.execute(
                insert(CODES).values(
                    code_hash=digest(code),
                    client_id=client_id,
                    username=username,
                    scope=request.scope or "",
                    redirect_uri=request.payload.redirect_uri or "",
                    code_challenge=payload.get("code_challenge"),
                    code_challenge_method=payload.get("code_challenge_method"),
                    nonce=payload.get("nonce"),
                    context=orjson.dumps(context).decode(),
                    expires_us=now_us() + CODE_LIFETIME_US,
                    used=False,
                )
            )

    def code(self, code: str, client_id: str) -> _Code | None:
        with self.engine.connect() as conn:
            row = conn.execute(
                select(CODES).where(
                    and_(
                        CODES.c.code_hash == digest(code),
                        CODES.c.client_id == client_id,
                        CODES.c.used.is_(False),
                        CODES.c.expires_us > now_us(),
                    )
                )
            ).first()
        return _Code(row) if row is not None else None

    def use_code(self, code: _Code) -> bool:
        """Mark used; False when another request used it first (a code works once)."""
        with begin_write(self.engine) as conn:
            changed = conn.execute(
                update(CODES)
                .where(and_(CODES.c.code_hash == code.row.code_hash, CODES.c.used.is_(False)))
                .values(used=True)
            ).rowcount
        return bool(changed)

    def nonce_used(self, nonce: str, client_id: str) -> bool:
        with self.engine.connect() as conn:
            found = conn.execute(
                select(CODES.c.code_hash).where(and_(CODES.c.nonce == nonce, CODES.c.client_id == client_id))
            ).first()
        return found is not None

    def account(self, username: str, launch: dict[str, Any] | None = None) -> AccountUser | None:
        user = self.users.get(username)
        return AccountUser(user, dict(launch or {})) if user is not None and not user.disabled else None

    def save_refresh(
        self, token: str, client_id: str, username: str | None, scope: str, launch: dict[str, Any] | None = None
    ) -> None:
        lifetime = OFFLINE_US if "offline_access" in scope.split() else ONLINE_US
        with begin_write(self.engine) as conn:
            conn.execute(
                insert(REFRESH).values(
                    token_hash=digest(token),
                    client_id=client_id,
                    username=username,
                    scope=scope,
                    context=orjson.dumps({"launch": launch or {}}).decode(),
                    created_us=now_us(),
                    expires_us=now_us() + lifetime,
                    revoked=False,
                )
            )

    def refresh(self, token: str) -> _Refresh | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(REFRESH).where(REFRESH.c.token_hash == digest(token))).first()
        return _Refresh(row) if row is not None else None

    def revoke_refresh(self, credential: _Refresh) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(update(REFRESH).where(REFRESH.c.token_hash == credential.row.token_hash).values(revoked=True))


def make_code_grant(grants: Grants) -> type[AuthorizationCodeGrant]:
    class CodeGrant(AuthorizationCodeGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH

        def save_authorization_code(self, code: str, request: Any) -> None:
            user: AccountUser = request.user
            amr = ["pwd", "otp"] if user.user.totp_enrolled else ["pwd"]
            grants.save_code(code, request.client.get_client_id(), user.get_user_id(), request, amr, user.context)

        def query_authorization_code(self, code: str, client: Client) -> _Code | None:
            return grants.code(code, client.get_client_id())

        def delete_authorization_code(self, authorization_code: _Code) -> None:
            grants.use_code(authorization_code)

        def authenticate_user(self, authorization_code: _Code) -> AccountUser | None:
            if not grants.use_code(authorization_code):
                return None  # used meanwhile by a concurrent request: a code works once
            return grants.account(authorization_code.row.username, authorization_code.context.get("launch"))

    return CodeGrant


def make_refresh_grant(grants: Grants) -> type[RefreshTokenGrant]:
    class RefreshGrant(RefreshTokenGrant):  # type: ignore[misc]
        TOKEN_ENDPOINT_AUTH_METHODS = CLIENT_AUTH
        INCLUDE_NEW_REFRESH_TOKEN = True

        def authenticate_refresh_token(self, refresh_token: str) -> _Refresh | None:
            credential = grants.refresh(refresh_token)
            if credential is None or credential.is_revoked() or credential.is_expired():
                return None
            return credential

        def authenticate_user(self, credential: _Refresh) -> AccountUser | None:
            username = credential.row.username
            launch = orjson.loads(credential.row.context).get("launch")
            return grants.account(username, launch) if username else None

        def revoke_old_credential(self, credential: _Refresh) -> None:
            grants.revoke_refresh(credential)

    return RefreshGrant


class OpenIdCode(OpenIDCode):  # type: ignore[misc]
    """``id_token`` for ``openid`` requests, signed with the server's current key."""

    def __init__(self, grants: Grants) -> None:
        super().__init__(require_nonce=False)
        self.grants = grants
        self._key: RSAKey | None = None

    def exists_nonce(self, nonce: str, request: Any) -> bool:
        return self.grants.nonce_used(nonce, request.payload.client_id)

    def resolve_client_private_key(self, client: Client) -> RSAKey:
        self._key = self.grants.keys.signing_key()
        return self._key

    def get_client_algorithm(self, client: Client) -> str:
        return ALG

    def get_encode_header(self, client: Client) -> dict[str, str]:
        key = self._key or self.grants.keys.signing_key()
        return {"alg": ALG, "kid": str(key.kid)}

    def get_client_claims(self, client: Client) -> dict[str, Any]:
        issuer, _ = request_urls.get()
        return {"iss": issuer, "aud": [client.get_client_id()]}

    def generate_user_info(self, user: AccountUser, scope: str) -> dict[str, Any]:
        info: dict[str, Any] = {"sub": user.get_user_id()}
        _, fhir_base = request_urls.get()
        if "fhirUser" in scope.split() and user.user.fhir_user:
            info["fhirUser"] = f"{fhir_base}/{user.user.fhir_user}"
        return info


def new_refresh_token(client: Client, grant_type: str, user: Any, scope: str) -> str | None:
    """A refresh token only when asked for (``offline_access``/``online_access``) by a user grant."""
    if user is None or not ({"offline_access", "online_access"} & set((scope or "").split())):
        return None
    return secrets.token_urlsafe(32)
