"""HTTP glue of the OAuth2 endpoints and SMART discovery (Flask ↔ ``security/oauth.py``).

URLs (ARCHITECTURE.md contracts): ``/fhir/.well-known/smart-configuration`` (SMART App Launch 2
§2.1, "well-known"), and under ``/auth``: ``authorize`` (with the login page), ``login``,
``logout``, ``patient`` (the patient picker of a standalone ``launch/patient``), ``token``,
``introspect``, ``revoke``, ``jwks``, ``launch`` (an EHR's launch context). Like ``adapter.py``
this is the only place these endpoints meet Flask; the protocol is in the core.

The login page and the patient picker are plain HTML (bilingual, no script, no outside
resources) served with a strict Content-Security-Policy and ``X-Frame-Options: DENY`` (no
clickjacking of the forms); the session cookie is ``HttpOnly``, ``SameSite=Lax`` and ``Secure``
when the request came over HTTPS. The picker's form also carries a token bound to that session
and to the pending authorization request (security/sessions.py ``form_token``), and the patient
chosen is checked again server-side (security/picker.py). Every login, failure and logout is
audited (DICOM "User Authentication", BALP-style), and so is a refused patient choice.
"""

from __future__ import annotations

import html
import re
import urllib.parse
from collections.abc import Callable
from typing import Any

import orjson
from flask import Flask, Response, request

from fhir_server.errors import FhirError
from fhir_server.security.authcode import AccountUser
from fhir_server.security.launch import CONTEXT_KEYS
from fhir_server.security.oauth import ASSERTION_ALGORITHMS, Authorization, HttpRequest
from fhir_server.security.picker import PAGE_SIZE, PatientChoice, PatientPage, person_principal
from fhir_server.security.scopes import IDENTITY_SCOPES
from fhir_server.security.service import Security
from fhir_server.security.sessions import COOKIE, check_form_token, form_token
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
            "context-standalone-patient",
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


def _page(body: str, status: int = 200, redirect_uri: str | None = None) -> Response:
    """An HTML page with the strict headers; a page whose form ends in a redirect to the client
    (``redirect_uri``, validated) lets its form go there too: Chrome and Safari apply
    ``form-action`` to every redirect that follows a form submission."""
    out = Response(body, status=status, mimetype="text/html")
    for name, value in _PAGE_HEADERS.items():
        out.headers[name] = value
    source = _csp_source(redirect_uri)
    if source:
        out.headers["Content-Security-Policy"] += f" {source}"
    return out


_SCHEME = re.compile(r"[a-z][a-z0-9+.-]*")
_HOST = re.compile(r"[A-Za-z0-9.\-]+(:[0-9]+)?|\[[0-9A-Fa-f:.]+\](:[0-9]+)?")


def _csp_source(uri: str | None) -> str:
    """The CSP source expression of a redirect URI's origin (``https://app.example:8443``, or
    ``com.example.app:`` for a private-use scheme); "" for anything that would not be one alone."""
    if not uri:
        return ""
    parts = urllib.parse.urlsplit(uri)
    scheme = parts.scheme.lower()
    if not _SCHEME.fullmatch(scheme):
        return ""
    if not parts.netloc:
        return f"{scheme}:"
    return f"{scheme}://{parts.netloc}" if _HOST.fullmatch(parts.netloc) else ""


def _redirect(location: str, status: int = 303) -> Response:
    out = Response(status=status)
    out.headers["Location"] = location
    return out


def _message_page(title: str, message: str, status: int) -> Response:
    body = f"<!doctype html><title>{html.escape(title)}</title><p>{html.escape(message)}</p>"
    return _page(body, status)


def _client_id(continuation: str) -> str | None:
    """The ``client_id`` of the authorization request a form continues."""
    return urllib.parse.parse_qs(continuation).get("client_id", [None])[0]


#: the purpose of the picker form's token (security/sessions.py ``form_token``)
_PICKER = "patient-picker"
_UNKNOWN_LAUNCH = (
    "The launch context is unknown, has expired, or was made for another person: open the app again from the EHR."
)
_SIGNED_OUT = "登录已失效,请从应用重新开始 / Your sign-in has ended: open the app again."
_NOT_BOUND = "此表单对您的登录无效,请从应用重新开始 / This form is not valid for your sign-in: open the app again."
_NOT_YOURS = "您不能选择此患者 / You may not choose this patient."
_GENDER = {"male": "男 male", "female": "女 female", "other": "其他 other", "unknown": "未知 unknown"}


def _patient_row(patient: PatientChoice) -> str:
    pid = html.escape(patient.id)
    gender = html.escape(_GENDER.get(patient.gender, patient.gender))
    return (
        f"<tr><td>{html.escape(patient.name) or '—'}</td><td>{gender}</td>"
        f"<td>{html.escape(patient.birth_date)}</td><td><code>{pid}</code></td>"
        f'<td><button type="submit" name="patient" value="{pid}">选择 Choose</button></td></tr>'
    )


def _no_patients(name: str) -> str:
    if name:
        shown = html.escape(name)
        return f"<p>没有姓名以“{shown}”开头的患者 / No patient's name starts with “{shown}”.</p>"
    return (
        '<p class="error" role="alert">没有您可以查看的患者,请取消以返回应用。 / '
        "There is no patient you may see: cancel to return to the app.</p>"
    )


def _picker_page(
    decision: Authorization, username: str, continuation: str, bind: str, name: str, found: PatientPage
) -> str:
    """The patient picker (standalone ``launch/patient``): a name search (GET, the same page),
    one choose button per patient and Cancel, in one form bound to the session and request."""
    keep = html.escape(continuation)
    rows = "".join(_patient_row(p) for p in found.patients)
    listing = (
        f"<table><tr><th>姓名 Name</th><th>性别 Gender</th><th>出生日期 Birth date</th><th>ID</th><th></th></tr>"
        f"{rows}</table>"
        if found.patients
        else _no_patients(name)
    )
    more = ""
    if found.next_after is not None:
        query = urllib.parse.urlencode({"continue": continuation, "name": name, "after": found.next_after})
        more = f'<p><a href="patient?{html.escape(query)}">下一页 Next {PAGE_SIZE}</a></p>'
    return f"""<!doctype html>
<html lang="zh-CN"><head><meta charset="utf-8"><title>选择患者 Choose a patient — telefhir</title>
<style>body{{font-family:sans-serif;max-width:44em;margin:3em auto}}td,th{{padding:.3em .6em;text-align:left}}
.error{{color:#a00}}</style></head>
<body><h1>远程会诊平台 · 选择患者 Choose a patient</h1>
<p>{html.escape(decision.client_name or "")} 请求访问一位患者的数据 / asks for one patient's data:
<code>{html.escape(decision.scope)}</code></p>
<p>已登录 / Signed in as <b>{html.escape(username)}</b></p>
<form method="get" action="patient" role="search">
<input type="hidden" name="continue" value="{keep}">
<label>按姓名搜索 / Search by name <input name="name" value="{html.escape(name)}" maxlength="100"></label>
<button type="submit">搜索 Search</button></form>
<form method="post" action="patient">
<input type="hidden" name="continue" value="{keep}">
<input type="hidden" name="bind" value="{html.escape(bind)}">
{listing}{more}
<p><button type="submit" name="cancel" value="1">取消 Cancel</button></p></form></body></html>"""


def _after(value: str | None) -> int | None:
    """The picker's page cursor (a row number), None when absent or not a number."""
    return int(value) if value and value.isdigit() and len(value) < 19 else None


#: whether a principal may see a resource (type, id): the launch context must be one the
#: launching person can see
CanSee = Callable[[Principal, str, str], bool]
#: a page of the Patients a principal may see, by name, after a row (security/picker.py)
FindPatients = Callable[[Principal, str, int | None], PatientPage]


def register(
    app: Flask,
    security: Security,
    fhir_base: Callable[[], str],
    audit: AuditAuth | None = None,
    can_see: CanSee | None = None,
    find_patients: FindPatients | None = None,
) -> None:
    oauth = security.oauth

    def root() -> str:
        return fhir_base().removesuffix("/fhir")

    def record(kind: str, status: int, detail: str | None, client_id: str | None, user: str | None) -> None:
        if audit is not None:
            audit(kind, status, detail, client_id, user, request.remote_addr)

    def signed_in() -> AccountUser | None:
        """The account of the browser's login session, if it is live and enabled."""
        username = security.sessions.user(request.cookies.get(COOKIE))
        account = security.users.get(username) if username else None
        return AccountUser(account) if account is not None and not account.disabled else None

    def picker(user: AccountUser, continuation: str, decision: Authorization, name: str, after: int | None) -> Response:
        """The patient picker for ``user``: the Patients a FHIR search by them would find."""
        principal = person_principal(user.user, _client_id(continuation) or "")
        try:
            found = find_patients(principal, name, after) if find_patients is not None else PatientPage([], None)
        except FhirError as err:
            return _message_page("Error", f"搜索失败 / The search failed: {err.diagnostics}", 400)
        bind = form_token(request.cookies.get(COOKIE, ""), _PICKER, continuation)
        body = _picker_page(decision, user.user.username, continuation, bind, name, found)
        return _page(body, redirect_uri=decision.redirect_uri)

    @app.get("/auth/authorize")
    def authorize() -> Response:
        user = signed_in()
        launch = request.args.get("launch")
        if user is not None and launch and security.launches.context(launch, user.user.username) is None:
            return _message_page("Error", _UNKNOWN_LAUNCH, 400)
        decision = oauth.authorization(_http_request(), user)
        if decision.error:
            return _message_page("Error", decision.error, 400)
        if decision.redirect:
            return _redirect(decision.redirect, decision.status)
        if decision.choose_patient and user is not None:
            return picker(user, request.query_string.decode(), decision, "", None)
        page = _login_page(decision.client_name or "", decision.scope, request.query_string.decode())
        return _page(page, redirect_uri=decision.redirect_uri)

    @app.get("/auth/patient")
    def patient_picker() -> Response:
        """The picker again: a name search, or the next page."""
        continuation = request.args.get("continue", "")
        user = signed_in()
        decision = oauth.pending(_http_request_from_query(continuation), user) if user is not None else None
        if decision is not None and decision.error:
            return _message_page("Error", decision.error, 400)
        # signed out meanwhile, or nothing to choose (a resident): the authorization request goes on
        if user is None or decision is None or not decision.choose_patient:
            return _redirect(f"authorize?{continuation}")
        name = request.args.get("name", "").strip()[:100]
        return picker(user, continuation, decision, name, _after(request.args.get("after")))

    @app.post("/auth/patient")
    def patient_chosen() -> Response:
        """The person chose a patient (or Cancel): checked against the session, the pending
        request and what the person may see, then the redirect to the app."""
        form = request.form
        continuation = form.get("continue", "")
        client_id = _client_id(continuation)
        user = signed_in()
        if user is None:
            return _message_page("Error", _SIGNED_OUT, 401)
        username = user.user.username
        if not check_form_token(request.cookies.get(COOKIE), _PICKER, continuation, form.get("bind", "")):
            record("login", 403, "patient picker: the form is not this session's for this request", client_id, username)
            return _message_page("Error", _NOT_BOUND, 403)
        http = _http_request_from_query(continuation)
        if form.get("cancel"):
            decision = oauth.patient_chosen(http, user, None)
        else:
            patient = form.get("patient", "")
            principal = person_principal(user.user, client_id or "")
            if not patient or can_see is None or not can_see(principal, "Patient", patient):
                refused = f"patient picker: Patient/{patient} is not one this person may see"
                record("login", 403, refused, client_id, username)
                return _message_page("Error", _NOT_YOURS, 403)
            decision = oauth.patient_chosen(http, user, patient)
        if decision.error or not decision.redirect:
            return _message_page("Error", decision.error or "no redirect", 400)
        return _redirect(decision.redirect)

    @app.post("/auth/login")
    def login() -> Response:
        form = request.form
        continuation = form.get("continue", "")
        username = form.get("username", "")
        result = security.users.login(
            username, form.get("password", ""), totp=form.get("totp") or None, address=request.remote_addr
        )
        client_id = _client_id(continuation)
        if result.outcome != LoginOutcome.OK:
            record("login", 401, f"{result.outcome}: {result.message}", client_id, username or None)
            decision = oauth.authorization(_http_request_from_query(continuation), None)
            page = _login_page(decision.client_name or "", decision.scope, continuation, result.message)
            return _page(page, 401, decision.redirect_uri)
        record("login", 200, None, client_id, result.user.username if result.user else username)
        session = security.sessions.open(result.user.username if result.user else username, request.remote_addr)
        out = _redirect(f"authorize?{continuation}")
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
