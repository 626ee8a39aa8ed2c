"""HTTP glue of the OAuth2 endpoints and SMART discovery (Flask ↔ ``security/oauth.py``).

URLs (ARCHITECTURE.md contracts): ``/fhir/.well-known/smart-configuration`` (SMART App Launch 2
§2.1, "well-known"), and under ``/auth``: ``token``, ``introspect``, ``revoke``, ``jwks``. Like
``adapter.py`` this is the only place these endpoints meet Flask; the protocol is in the core.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, request

from fhir_server.security.oauth import ASSERTION_ALGORITHMS, HttpRequest
from fhir_server.security.scopes import IDENTITY_SCOPES
from fhir_server.security.service import Security

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _http_request() -> HttpRequest:
    form = {k: request.form.getlist(k) for k in request.form} if request.method == "POST" else {}
    return HttpRequest(
        method=request.method,
        url=request.url,
        headers=dict(request.headers.items()),
        form=form,
        args={k: request.args.getlist(k) for k in request.args},
    )


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    out = Response(orjson.dumps(body), status=status, mimetype="application/json")
    for name, value in (headers or {}).items():
        if name.lower() != "content-type":
            out.headers[name] = value
    return out


def smart_configuration(root: str) -> dict[str, Any]:
    """What SMART clients discover (http://hl7.org/fhir/smart-app-launch/conformance.html)."""
    return {
        "issuer": f"{root}/auth",
        "jwks_uri": f"{root}/auth/jwks",
        "token_endpoint": f"{root}/auth/token",
        "introspection_endpoint": f"{root}/auth/introspect",
        "revocation_endpoint": f"{root}/auth/revoke",
        "grant_types_supported": ["client_credentials"],
        "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "private_key_jwt"],
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": ["system/*.*", "system/*.cruds", "system/*.read", "system/*.rs", *sorted(IDENTITY_SCOPES)],
        "response_types_supported": ["token"],
        "capabilities": [
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "permission-v1",
            "permission-v2",
        ],
        "code_challenge_methods_supported": ["S256"],
    }


def register(app: Flask, security: Security, fhir_base: Callable[[], str]) -> None:
    oauth = security.oauth

    def root() -> str:
        return fhir_base().removesuffix("/fhir")

    @app.get("/fhir/.well-known/smart-configuration")
    def smart() -> Response:
        return _json(200, smart_configuration(root()))

    @app.post("/auth/token")
    def token() -> Response:
        status, body, headers = oauth.token(_http_request())
        return _json(status, body, {**headers, **_NO_STORE})

    @app.post("/auth/introspect")
    def introspect() -> Response:
        status, body, headers = oauth.introspect(_http_request())
        return _json(status, body, {**headers, **_NO_STORE})

    @app.post("/auth/revoke")
    def revoke() -> Response:
        status, body, headers = oauth.revoke(_http_request())
        return _json(status, body, headers)

    @app.get("/auth/jwks")
    def jwks() -> Response:
        return _json(200, security.keys.jwks(), {"Cache-Control": "max-age=300"})
