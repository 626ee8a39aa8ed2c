"""The security services of one process, and the bearer-token check every request passes.

Why the 401 carries ``WWW-Authenticate``: RFC 6750 §3 — a client that gets 401 learns from it
whether it sent no token (``realm`` only) or a bad one (``error="invalid_token"`` and why).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.engine import Engine

from fhir_server.config import Settings
from fhir_server.errors import FhirError
from fhir_server.rest.messages import FhirRequest
from fhir_server.security.authcode import Grants
from fhir_server.security.clients import ClientStore, ensure_bootstrap
from fhir_server.security.keyring import KeyRing
from fhir_server.security.keys import SigningKeys
from fhir_server.security.launch import LaunchContexts
from fhir_server.security.oauth import OAuthServer
from fhir_server.security.sessions import Sessions
from fhir_server.security.signatures import SignatureError
from fhir_server.security.signing import RequestSigning, key_ring
from fhir_server.security.tokens import InvalidToken, Principal, TokenService
from fhir_server.security.users import UserStore

REALM = "telefhir"


@dataclass
class Security:
    clients: ClientStore
    keys: SigningKeys
    tokens: TokenService
    oauth: OAuthServer
    users: UserStore
    sessions: Sessions
    signing: RequestSigning
    launches: LaunchContexts

    def check_binding(self, principal: Principal, req: FhirRequest) -> None:
        """401 when a certificate-bound token comes without its certificate (RFC 8705 §3)."""
        if principal.certificate is not None and principal.certificate != req.client_certificate:
            raise FhirError(
                "unauthorized",
                "This access token is bound to a client certificate: present it (mutual TLS) with every request",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'},
            )

    def check_signature(self, principal: Principal, req: FhirRequest) -> None:
        """401 unless a client that must sign its requests signed this one."""
        if not principal.signed:
            return
        try:
            self.signing.check(
                principal.client_id, req.headers, req.method, req.raw_path or "", req.raw_query or "", req.body
            )
        except SignatureError as exc:
            raise FhirError(
                "unauthorized",
                f"This client must sign its requests (X-Api-Key, X-Timestamp, X-Nonce, X-Signature): {exc}",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_request"'},
            ) from None

    def authenticate(self, authorization: str | None) -> Principal:
        """The principal of an ``Authorization: Bearer`` header, or 401 saying what is wrong."""
        scheme, _, token = (authorization or "").partition(" ")
        if not authorization:
            raise FhirError(
                "unauthorized",
                "This server needs an access token (Authorization: Bearer ...); "
                "see /fhir/.well-known/smart-configuration",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}"'},
            )
        if scheme.lower() != "bearer" or not token.strip():
            raise FhirError(
                "unauthorized",
                "The Authorization header must be 'Bearer <access token>'",
                headers={"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_request"'},
            )
        try:
            return self.tokens.authenticate(token.strip())
        except InvalidToken as exc:
            reason = str(exc)
            raise FhirError(
                "unauthorized",
                reason[:1].upper() + reason[1:],
                headers={
                    "WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token", error_description="{reason}"'
                },
            ) from None


def build_security(engine: Engine, settings: Settings, prepare: bool, ring: KeyRing | None = None) -> Security:
    """``prepare``: in the process that starts the server (before workers fork), make sure a
    signing key exists and the bootstrap client is registered."""
    clients = ClientStore(engine)
    keys = SigningKeys(engine, rotate_after_days=settings.signing_key_days, publish_for_s=2 * settings.token_lifetime)
    tokens = TokenService(engine, keys, lifetime_s=settings.token_lifetime)
    if prepare:
        keys.ensure_current()
        if settings.bootstrap_client:
            ensure_bootstrap(clients, settings.bootstrap_client)
    ring = ring or key_ring(settings.data_dir)
    users = UserStore(engine, ring=ring)
    launches = LaunchContexts(engine)
    oauth = OAuthServer(clients, tokens, Grants(engine, users, keys, launches))
    signing = RequestSigning(engine, ring)
    return Security(clients, keys, tokens, oauth, users, Sessions(engine), signing, launches)
