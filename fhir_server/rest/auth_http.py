"""HTTP glue of the OAuth2 endpoints and SMART discovery (Flask ↔ ``security/oauth.py``).

URLs (ARCHITECTURE.md contracts): ``/fhir/.well-known/smart-configuration`` (SMART App Launch 2
§2.1, "well-known"), and under ``/auth``: ``authorize`` (with the login page), ``login``,
``logout``, ``token``, ``introspect``, ``revoke``, ``jwks``, ``launch`` (an EHR's launch
context). Like ``adapter.py`` this is the only place these endpoints meet Flask; the protocol is
in the core.

The login page is plain HTML (bilingual, no script, no outside resources) served with a strict
Content-Security-Policy and ``X-Frame-Options: DENY`` (no clickjacking of the form); its session
cookie is ``HttpOnly``, ``SameSite=Lax`` and ``Secure`` when the request came over HTTPS. Every
login, failure and logout is audited (DICOM "User Authentication", BALP-style).
"""

from __future__ import annotations

import html
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, request

from fhir_server.errors import FhirError
from fhir_server.security.authcode import AccountUser
from fhir_server.security.launch import CONTEXT_KEYS
from fhir_server.security.oauth import ASSERTION_ALGORITHMS, HttpRequest
from fhir_server.security.scopes import IDENTITY_SCOPES
from fhir_server.security.service import Security
from fhir_server.security.sessions import COOKIE
from fhir_server.security.tls import CERT_SUBJECT, CERT_THUMBPRINT
from fhir_server.security.tokens import Principal
from fhir_server.security.users import LoginOutcome

_NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def _http_request() -> HttpRequest:
    form = {k: request.form.getlist(k) for k in request.form} if request.method == "POST" else {}
    return HttpRequest(
        method=request.method,
        url=request.url,
        headers=dict(request.headers.items()),
        form=form,
        args={k: request.args.getlist(k) for k in request.args},
        client_cert=_client_cert(),
    )


def _client_cert() -> tuple[str, str] | None:
    subject, thumbprint = request.environ.get(CERT_SUBJECT), request.environ.get(CERT_THUMBPRINT)
    return (subject, thumbprint) if subject and thumbprint else None


def _http_request_from_query(query: str) -> HttpRequest:
    """The authorization request a login form continues (to show whom it is for)."""
    args = urllib.parse.parse_qs(query, keep_blank_values=True)
    return HttpRequest(method="GET", url=request.url_root + "auth/authorize?" + query, headers={}, args=args)


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
        "authorization_endpoint": f"{root}/auth/authorize",
        "grant_types_supported": ["authorization_code", "client_credentials", "refresh_token"],
        "token_endpoint_auth_methods_supported": [
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt",
            "tls_client_auth",
        ],
        "tls_client_certificate_bound_access_tokens": True,
        "token_endpoint_auth_signing_alg_values_supported": ASSERTION_ALGORITHMS,
        "scopes_supported": [
            *(f"{ctx}/*.{p}" for ctx in ("system", "user", "patient") for p in ("*", "cruds", "read", "rs")),
            *sorted(IDENTITY_SCOPES),
        ],
        "response_types_supported": ["code"],
        "capabilities": [
            "launch-standalone",
            "launch-ehr",
            "context-ehr-patient",
            "context-ehr-encounter",
            "permission-patient",
            "permission-user",
            "client-public",
            "client-confidential-symmetric",
            "client-confidential-asymmetric",
            "sso-openid-connect",
            "permission-offline",
            "permission-online",
            "permission-v1",
            "permission-v2",
        ],
        "code_challenge_methods_supported": ["S256"],
    }


AuditAuth = Callable[[str, int, str | None, str | None, str | None, str | None], None]
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
}


def _login_page(client_name: str, scope: str, continuation: str, message: str = "") -> str:
    totp = (
        "<label>一次性验证码 / One-time code (if enrolled) "
        '<input name="totp" inputmode="numeric" autocomplete="one-time-code"></label>'
    )
    note = f'<p class="error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>登录 Sign in — telefhir</title>
<style>body{{font-family:sans-serif;max-width:26em;margin:3em auto}}label{{display:block;margin:.8em 0}}
input{{display:block;width:100%;padding:.4em}}.error{{color:#a00}}</style></head>
<body><h1>远程会诊平台 · Sign in</h1>
<p>{html.escape(client_name)} 请求访问 / asks for: <code>{html.escape(scope)}</code></p>{note}
<form method="post" action="login">
<input type="hidden" name="continue" value="{html.escape(continuation)}">
<label>用户名 / User name <input name="username" autocomplete="username" required></label>
<label>密码 / Password <input name="password" type="password" autocomplete="current-password" required></label>
{totp}<button type="submit">登录 Sign in</button></form></body></html>"""


def _page(body: str, status: int = 200) -> Response:
    out = Response(body, status=status, mimetype="text/html")
    for name, value in _PAGE_HEADERS.items():
        out.headers[name] = value
    return out


#: whether a principal may see a resource (type, id): the launch context must be one the
#: launching person can see
CanSee = Callable[[Principal, str, str], bool]


def register(
    app: Flask,
    security: Security,
    fhir_base: Callable[[], str],
    audit: AuditAuth | None = None,
    can_see: CanSee | None = None,
) -> None:
    oauth = security.oauth

    def root() -> str:
        return fhir_base().removesuffix("/fhir")

    def record(kind: str, status: int, detail: str | None, client_id: str | None, user: str | None) -> None:
        if audit is not None:
            audit(kind, status, detail, client_id, user, request.remote_addr)

    @app.get("/auth/authorize")
    def authorize() -> Response:
        username = security.sessions.user(request.cookies.get(COOKIE))
        account = security.users.get(username) if username else None
        user = AccountUser(account) if account is not None and not account.disabled else None
        launch = request.args.get("launch")
        if user is not None and launch and security.launches.context(launch, user.user.username) is None:
            return _page(
                "<!doctype html><title>Error</title><p>The launch context is unknown, has expired, or was "
                "made for another person: open the app again from the EHR.</p>",
                400,
            )
        decision = oauth.authorization(_http_request(), user)
        if decision.error:
            return _page(f"<!doctype html><title>Error</title><p>{html.escape(decision.error)}</p>", 400)
        if decision.redirect:
            out = Response(status=decision.status)
            out.headers["Location"] = decision.redirect
            return out
        return _page(_login_page(decision.client_name or "", decision.scope, request.query_string.decode()))

    @app.post("/auth/login")
    def login() -> Response:
        form = request.form
        continuation = form.get("continue", "")
        username = form.get("username", "")
        result = security.users.login(
            username, form.get("password", ""), totp=form.get("totp") or None, address=request.remote_addr
        )
        client_id = urllib.parse.parse_qs(continuation).get("client_id", [None])[0]
        if result.outcome != LoginOutcome.OK:
            record("login", 401, f"{result.outcome}: {result.message}", client_id, username or None)
            decision = oauth.authorization(_http_request_from_query(continuation), None)
            page = _login_page(decision.client_name or "", decision.scope, continuation, result.message)
            return _page(page, 401)
        record("login", 200, None, client_id, result.user.username if result.user else username)
        session = security.sessions.open(result.user.username if result.user else username, request.remote_addr)
        out = Response(status=303)
        out.headers["Location"] = f"authorize?{continuation}"
        out.set_cookie(COOKIE, session, httponly=True, samesite="Lax", secure=request.is_secure, path="/auth")
        return out

    @app.post("/auth/logout")
    def logout() -> Response:
        username = security.sessions.close(request.cookies.get(COOKIE))
        if username:
            record("logout", 200, None, None, username)
        out = _page("<!doctype html><title>Signed out</title><p>已退出 / Signed out.</p>")
        out.delete_cookie(COOKIE, path="/auth")
        return out

    @app.post("/auth/launch")
    def launch() -> Response:
        """An EHR asks for a launch id naming the patient (and encounter) in front of the person
        signed in to it (security/launch.py)."""
        try:
            principal = security.authenticate(request.headers.get("Authorization"))
        except FhirError as err:
            return _json(401, {"error": "invalid_token", "error_description": err.diagnostics}, err.headers)
        if not principal.person:
            return _json(403, {"error": "access_denied", "error_description": "a launch is made by a person's token"})
        values = request.get_json(silent=True) if request.is_json else request.form
        context = {k: str(values[k]) for k in CONTEXT_KEYS if isinstance(values, dict) and values.get(k)}
        patient = context.get("patient")
        if not patient or (can_see is not None and not can_see(principal, "Patient", patient)):
            return _json(400, {"error": "invalid_request", "error_description": "patient: a Patient id you can see"})
        encounter = context.get("encounter")
        if encounter and can_see is not None and not can_see(principal, "Encounter", encounter):
            return _json(400, {"error": "invalid_request", "error_description": "encounter: an Encounter you can see"})
        return _json(201, {"launch": security.launches.create(principal.subject, context)}, _NO_STORE)

    @app.get("/fhir/.well-known/smart-configuration")
    def smart() -> Response:
        return _json(200, smart_configuration(root()))

    @app.post("/auth/token")
    def token() -> Response:
        http = _http_request()
        status, body, headers = oauth.token(http, f"{root()}/auth", fhir_base())
        client_id = request.authorization.username if request.authorization else request.form.get("client_id")
        failure = f"{body.get('error')}: {body.get('error_description', '')}" if status >= 400 else None
        record("login", status, failure, client_id, None)
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
