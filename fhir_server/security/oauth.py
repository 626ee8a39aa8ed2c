"""The OAuth2 authorization server (authlib), without a web framework.

Why framework-free: the core imports no I/O framework (ARCHITECTURE.md); authlib's
``AuthorizationServer`` only needs a request object and a way to return (status, body,
headers), which ``HttpRequest`` and ``handle_response`` give. ``rest/auth_http.py`` turns a
Flask request into an ``HttpRequest`` and the answer back into a response.

What it serves now (docs/security.md):
- token endpoint (RFC 6749 §3.2): ``client_credentials`` (SMART Backend Services) with
  ``client_secret_basic``, ``client_secret_post`` or ``private_key_jwt`` (RFC 7523 assertions,
  RS256/RS384/ES256/ES384, ``jti`` replay refused across workers);
- introspection (RFC 7662) and revocation (RFC 7009) of our access tokens, by the client the
  token was issued to;
- signed JWT access tokens (``tokens.py``), published keys at ``/auth/jwks``.
"""

from __future__ import annotations

import contextvars
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from authlib.oauth2 import AuthorizationServer as _AuthorizationServer
from authlib.oauth2.rfc6749 import OAuth2Payload, OAuth2Request
from authlib.oauth2.rfc6749.errors import InvalidClientError, InvalidRequestError, InvalidScopeError, OAuth2Error
from authlib.oauth2.rfc6749.grants import ClientCredentialsGrant
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7523 import JWTBearerClientAssertion
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_server.security.authcode import (
    AccountUser,
    Grants,
    OpenIdCode,
    make_code_grant,
    make_refresh_grant,
    new_refresh_token,
    request_urls,
)
from fhir_server.security.clients import Client, ClientStore
from fhir_server.security.granular import check_enforceable
from fhir_server.security.picker import needs_patient
from fhir_server.security.scopes import ScopeError, ScopeSet
from fhir_server.security.tokens import TokenService

ASSERTION_ALGORITHMS = ["RS384", "ES384", "RS256", "ES256"]
#: the token endpoint URL of the request being served (the audience of client assertions)
_token_url: contextvars.ContextVar[str] = contextvars.ContextVar("token_url", default="")
#: the x5t#S256 of the client certificate of the token request being served (RFC 8705)
_certificate: contextvars.ContextVar[str | None] = contextvars.ContextVar("certificate", default=None)


def _tls_client_auth(query_client: Any, request: Any) -> Client | None:
    """RFC 8705 §2.1 PKI mutual-TLS client authentication: the client names itself
    (``client_id``) and presents a certificate, verified by the TLS layer against the trusted
    CA, whose subject is the one it registered."""
    client_id = request.payload.data.get("client_id")
    cert = getattr(getattr(request, "_http", None), "client_cert", None)
    if not client_id or cert is None:
        return None
    client = query_client(client_id)
    if client is None or client.auth_method != "tls_client_auth" or client.tls_subject != cert[0]:
        return None
    return client  # type: ignore[no-any-return]


@dataclass
class HttpRequest:
    """What authlib needs of an HTTP request."""

    method: str
    url: str
    headers: dict[str, str]
    form: dict[str, list[str]] = field(default_factory=dict)
    args: dict[str, list[str]] = field(default_factory=dict)
    #: the verified TLS client certificate: (subject DN, x5t#S256), None without mutual TLS
    client_cert: tuple[str, str] | None = None


class _Payload(OAuth2Payload):
    def __init__(self, values: dict[str, list[str]]) -> None:
        self._values = values

    @property
    def data(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._values.items() if v}

    @property
    def datalist(self) -> defaultdict[str, list[str]]:
        return defaultdict(list, self._values)


class _Request(OAuth2Request):
    def __init__(self, http: HttpRequest) -> None:
        super().__init__(http.method, http.url, headers=http.headers)
        self._http = http
        self.payload = _Payload({**http.args, **http.form})

    @property
    def args(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._http.args.items() if v}

    @property
    def form(self) -> dict[str, str]:
        return {k: v[0] for k, v in self._http.form.items() if v}


@dataclass
class Authorization:
    """What the authorization endpoint does next: show an error, ask the user to log in (for
    ``client_name``) or to choose a patient, or redirect back to the client."""

    error: str | None = None
    client_name: str | None = None
    scope: str = ""
    redirect: str | None = None
    status: int = 302
    #: the validated redirect URI of a request awaiting the user (the page's form-action allows it)
    redirect_uri: str | None = None
    #: the person must choose the patient first (standalone ``launch/patient``: security/picker.py)
    choose_patient: bool = False


class _S256(CodeChallenge):  # type: ignore[misc]
    """PKCE with S256, for every client: SMART App Launch 2 requires it and forbids ``plain``
    (authlib alone lets a request without a challenge through)."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        if not data.get("code_challenge") or data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("PKCE is required: send code_challenge with code_challenge_method=S256")
        super().validate_code_challenge(grant, redirect_uri)


#: how confidential clients authenticate, at the token, introspection and revocation endpoints
CONFIDENTIAL_AUTH = ["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth"]


class _ClientCredentials(ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = CONFIDENTIAL_AUTH


class _PrivateKeyJwt(JWTBearerClientAssertion):
    """SMART Backend Services client authentication (RFC 7523 §2.2, ``private_key_jwt``)."""

    CLIENT_AUTH_METHOD = "private_key_jwt"

    def __init__(self, tokens: TokenService) -> None:
        super().__init__(validate_jti=True, leeway=60)
        self.tokens = tokens

    def get_audiences(self) -> list[str]:
        return [_token_url.get()]

    def process_assertion_claims(self, assertion: str, resolve_key: Any) -> dict[str, Any]:
        # SMART Backend Services: servers SHALL support RS384 and ES384 (joserfc's default list
        # leaves RS384 out as "not recommended"), and SHOULD support the 256-bit variants
        try:
            token = jwt.decode(assertion, resolve_key, algorithms=ASSERTION_ALGORITHMS)
        except JoseError as exc:
            raise InvalidClientError(description=exc.description) from exc
        self.verify_claims(token.claims)
        return dict(token.claims)

    def validate_jti(self, claims: dict[str, Any], jti: str) -> bool:
        # SMART: "the authorization server SHALL reject a jti it has seen before" (until exp)
        return self.tokens.remember_assertion(str(claims["iss"]), jti, int(claims["exp"]))

    def resolve_client_public_key(self, client: Client) -> KeySet:
        return KeySet.import_key_set(client.jwks or {"keys": []})


class _Token(dict):  # type: ignore[type-arg]
    """The claims of one of our access tokens, with what authlib's endpoints ask of a token."""

    def __init__(self, claims: dict[str, Any], tokens: TokenService) -> None:
        super().__init__(claims)
        self._tokens = tokens

    def is_expired(self) -> bool:
        return False  # decode() returns only unexpired tokens

    def is_revoked(self) -> bool:
        return self._tokens.is_revoked(self["jti"])

    def check_client(self, client: Client) -> bool:
        return bool(self.get("client_id") == client.get_client_id())


def _query(tokens: TokenService, token: str) -> _Token | None:
    claims = tokens.decode(token)
    return _Token(claims, tokens) if claims is not None else None


class _Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def __init__(self, server: OAuthServer) -> None:
        super().__init__(server)
        self.tokens = server.tokens

    def query_token(self, token: str, token_type_hint: str | None) -> _Token | None:
        return _query(self.tokens, token)

    def check_permission(self, token: _Token, client: Client, request: Any) -> bool:
        return token.check_client(client)

    def introspect_token(self, token: _Token) -> dict[str, Any]:
        return {"active": True, "token_type": "Bearer", **token}


class _Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = CONFIDENTIAL_AUTH

    def __init__(self, server: OAuthServer) -> None:
        super().__init__(server)
        self.tokens = server.tokens

    def query_token(self, token: str, token_type_hint: str | None) -> _Token | None:
        return _query(self.tokens, token)

    def revoke_token(self, token: _Token, request: Any) -> None:
        self.tokens.revoke(token["jti"], int(token["exp"]))


def _check_scope(scope: str | None) -> None:
    """``invalid_scope`` for a scope this server does not understand, or whose query it could not
    enforce (security/granular.py): a scope granted is a scope enforced."""
    try:
        check_enforceable(ScopeSet.parse(scope))
    except ScopeError as exc:
        raise InvalidScopeError(description=str(exc)) from None


def _wants_patient(grant: Any, user: AccountUser) -> bool:
    """Whether the person must choose the patient before the code is issued: the client may have
    ``launch/patient`` and asked for it, without an EHR's ``launch``, and the person is not a
    resident (whose own patient is the context)."""
    granted = grant.client.get_allowed_scope(grant.request.scope or "")
    launch = grant.request.payload.data.get("launch")
    return needs_patient(granted, launch, user.user) and not user.context.get("patient")


class OAuthServer(_AuthorizationServer):  # type: ignore[misc]
    def __init__(self, clients: ClientStore, tokens: TokenService, grants: Grants) -> None:
        super().__init__()
        self.clients = clients
        self.tokens = tokens
        self.grants = grants
        generator = BearerTokenGenerator(self._access_token, new_refresh_token, expires_generator=self._ttl)
        self.register_token_generator("default", generator)
        self.register_grant(_ClientCredentials)
        self.register_grant(make_code_grant(grants), [_S256(required=True), OpenIdCode(grants)])
        self.register_grant(make_refresh_grant(grants))
        self.register_client_auth_method("private_key_jwt", _PrivateKeyJwt(tokens))
        self.register_client_auth_method("tls_client_auth", _tls_client_auth)
        self.register_endpoint(_Introspection(self))
        self.register_endpoint(_Revocation(self))

    # -- what authlib asks of a server ---------------------------------------------------
    def query_client(self, client_id: str) -> Client | None:
        return self.clients.get(client_id)

    def save_token(self, token: dict[str, Any], request: Any) -> None:
        """Access tokens are self-contained JWTs: nothing to store (revocation keeps a denylist);
        a refresh token is stored as its hash."""
        if token.get("refresh_token"):
            user = request.user.get_user_id() if request.user is not None else None
            launch = getattr(request.user, "context", None)
            self.grants.save_refresh(
                token["refresh_token"], request.client.get_client_id(), user, token["scope"], launch
            )

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        """No signals: audit records are written by the HTTP glue, which knows the outcome."""

    def create_oauth2_request(self, request: HttpRequest) -> OAuth2Request:
        return _Request(request)

    def handle_response(self, status: int, body: Any, headers: Any) -> tuple[int, Any, dict[str, str]]:
        return status, body, dict(headers)

    def validate_requested_scope(self, scope: str | None) -> None:
        _check_scope(scope)

    # -- tokens ----------------------------------------------------------------------------
    def _ttl(self, client: Client, grant_type: str) -> int:
        return self.tokens.lifetime_s

    def _access_token(self, client: Client, grant_type: str, user: Any, scope: str) -> str:
        if not scope:
            raise InvalidScopeError(description="none of the requested scopes is allowed for this client")
        _check_scope(scope)  # what was granted, the registration's scopes when none were asked for
        bound = _certificate.get() if client.auth_method == "tls_client_auth" else None
        return self.tokens.issue(client, scope, user=user, certificate=bound)

    # -- entry points for the HTTP glue ----------------------------------------------------
    def token(self, request: HttpRequest, issuer: str, fhir_base: str) -> tuple[int, Any, dict[str, str]]:
        _token_url.set(request.url.split("?", 1)[0])
        _certificate.set(request.client_cert[1] if request.client_cert else None)
        request_urls.set((issuer, fhir_base))
        status, body, headers = self.create_token_response(request)
        if isinstance(body, dict) and body.get("refresh_token", "") is None:
            del body["refresh_token"]  # none was asked for
        if isinstance(body, dict) and body.get("access_token"):
            claims = self.tokens.decode(body["access_token"]) or {}
            for key in ("patient", "encounter"):  # SMART: the launch context beside the token
                if key in claims:
                    body[key] = claims[key]
        return status, body, headers

    def authorization(self, request: HttpRequest, user: AccountUser | None) -> Authorization:
        """Validate an authorization request; with a logged-in ``user``, the redirect with the
        code, unless the user must choose a patient first (``choose_patient``). Errors before the
        client and redirect URI are known are not redirected (RFC 6749 §4.1.2.1): they are shown
        to the user."""
        grant = self._grant(request, user)
        if isinstance(grant, Authorization):
            return grant
        waiting = self._pending(grant, user)
        if user is None or waiting.choose_patient:
            return waiting
        status, _body, headers = self.create_authorization_response(request, grant_user=user, grant=grant)
        return Authorization(redirect=dict(headers).get("Location"), status=status)

    def pending(self, request: HttpRequest, user: AccountUser | None) -> Authorization:
        """Validate an authorization request without answering it: whom it is for, where it
        returns, and whether ``user`` must choose a patient (the picker page shows it)."""
        grant = self._grant(request, user)
        return grant if isinstance(grant, Authorization) else self._pending(grant, user)

    def patient_chosen(self, request: HttpRequest, user: AccountUser, patient: str | None) -> Authorization:
        """The redirect once the person has chosen ``patient`` on the picker (its code carries it
        as an EHR launch's does), or declined (None: ``error=access_denied``, RFC 6749 §4.1.2.1).
        Whether the person may see ``patient`` is the caller's check, made before this."""
        grant = self._grant(request, user)
        if isinstance(grant, Authorization):
            return grant
        if not _wants_patient(grant, user):
            return Authorization(error="invalid_request: this authorization request asks for no patient to be chosen")
        chosen = AccountUser(user.user, {"patient": patient}) if patient else None
        status, _body, headers = self.create_authorization_response(request, grant_user=chosen, grant=grant)
        return Authorization(redirect=dict(headers).get("Location"), status=status)

    def _grant(self, request: HttpRequest, user: AccountUser | None) -> Any:
        """The validated grant of an authorization request, or the error to show."""
        try:
            return self.get_consent_grant(request=request, end_user=user)
        except OAuth2Error as error:
            return Authorization(error=f"{error.error}: {error.description or ''}".strip(": "))

    @staticmethod
    def _pending(grant: Any, user: AccountUser | None) -> Authorization:
        return Authorization(
            client_name=grant.client.name,
            scope=grant.request.scope or "",
            redirect_uri=grant.redirect_uri,
            choose_patient=user is not None and _wants_patient(grant, user),
        )

    def introspect(self, request: HttpRequest) -> tuple[int, Any, dict[str, str]]:
        _token_url.set(request.url.split("?", 1)[0].rsplit("/", 1)[0] + "/token")
        return self.create_endpoint_response(IntrospectionEndpoint.ENDPOINT_NAME, request)  # type: ignore[no-any-return]

    def revoke(self, request: HttpRequest) -> tuple[int, Any, dict[str, str]]:
        _token_url.set(request.url.split("?", 1)[0].rsplit("/", 1)[0] + "/token")
        return self.create_endpoint_response(RevocationEndpoint.ENDPOINT_NAME, request)  # type: ignore[no-any-return]
