"""The standalone launch's patient picker, piece by piece (security/picker.py, the picker form's
token in security/sessions.py, the page's form-action in rest/auth_http.py); the whole flow on a
started server is tests/e2e/test_standalone_launch.py."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey

from fhir_server.rest.auth_http import _csp_source, smart_configuration
from fhir_server.security.authcode import AccountUser
from fhir_server.security.picker import display_name, needs_patient, person_principal
from fhir_server.security.sessions import check_form_token, form_token
from fhir_server.security.tenancy import access_for
from fhir_server.security.tokens import TokenService
from fhir_server.security.users import User

DOCTOR = User(
    username="a-doc",
    fhir_user="Practitioner/p1",
    organization="Organization/o1",
    roles=("requesting-doctor",),
    totp_enrolled=False,
    locked_until=None,
    password_changed=0,
    allowed_networks=(),
    disabled=False,
    failed_logins=0,
    created=0,
    last_login=None,
)
RESIDENT = replace(DOCTOR, username="zhang-san", fhir_user="Patient/pa", organization=None, roles=("resident",))


def test_a_patient_is_chosen_for_launch_patient_without_an_ehr_launch() -> None:
    assert needs_patient("launch/patient patient/*.rs openid", None, DOCTOR)
    assert not needs_patient("launch/patient patient/*.rs", "an-ehr-launch-id", DOCTOR)  # the EHR named one
    assert not needs_patient("patient/*.rs openid", None, DOCTOR)  # not asked for (or not granted)
    assert not needs_patient("launch/patient patient/*.rs", None, RESIDENT)  # their own patient


def test_the_picker_searches_with_the_persons_own_access() -> None:
    principal = person_principal(DOCTOR, "app")
    assert principal.person and principal.subject == "a-doc" and principal.patient is None
    access = access_for(principal)
    assert access.organization == "o1" and not access.platform and access.patient is None
    assert principal.scopes.allows("user", "Patient", "s") and not principal.scopes.allows("user", "Observation", "r")


def test_the_chosen_patient_goes_into_the_token_with_launch_patient() -> None:
    key = RSAKey.generate_key(2048, parameters={"kid": "k1"})
    service = TokenService(engine=None, keys=SimpleNamespace(signing_key=lambda: key))  # type: ignore[arg-type]
    client = SimpleNamespace(get_client_id=lambda: "app", organization=None, signs=False)
    user = AccountUser(DOCTOR, {"patient": "pa"})

    def claims(scope: str) -> dict:
        return dict(jwt.decode(service.issue(client, scope, user=user), key).claims)

    assert claims("launch/patient patient/*.rs")["patient"] == "pa"
    assert "patient" not in claims("patient/*.rs")  # not granted launch/patient: no context


def test_the_picker_form_is_bound_to_the_session_and_the_request() -> None:
    token = form_token("session-1", "patient-picker", "client_id=app&state=s1")
    assert check_form_token("session-1", "patient-picker", "client_id=app&state=s1", token)
    assert not check_form_token("session-2", "patient-picker", "client_id=app&state=s1", token)
    assert not check_form_token("session-1", "patient-picker", "client_id=app&state=s2", token)
    assert not check_form_token("session-1", "other-form", "client_id=app&state=s1", token)
    assert not check_form_token(None, "patient-picker", "client_id=app&state=s1", token)
    assert not check_form_token("session-1", "patient-picker", "client_id=app&state=s1", "令牌")


@pytest.mark.parametrize(
    ("uri", "source"),
    [
        ("https://app.example.cn:8443/cb?x=1", "https://app.example.cn:8443"),
        ("http://127.0.0.1:9/callback", "http://127.0.0.1:9"),
        ("http://[::1]:8080/cb", "http://[::1]:8080"),
        ("cn.telefhir.app:/oauth", "cn.telefhir.app:"),
        ("https://user@app.example.cn/cb", ""),  # not an origin alone
        ("https://app.example.cn;script-src *", ""),
        (None, ""),
    ],
)
def test_the_pages_form_action_lets_the_redirect_to_the_client_through(uri: str | None, source: str) -> None:
    assert _csp_source(uri) == source


@pytest.mark.parametrize(
    ("names", "shown"),
    [
        ([{"family": "张", "given": ["三"]}], "张三"),
        ([{"text": "李四", "family": "李"}], "李四"),
        ([{"family": "Smith", "given": ["Anna", "B"]}], "Anna B Smith"),
        ([{"use": "old"}, {"family": "王"}], "王"),
        (None, ""),
    ],
)
def test_names_are_shown_as_people_write_them(names: object, shown: str) -> None:
    assert display_name(names) == shown


def test_discovery_names_the_standalone_patient_context() -> None:
    capabilities = smart_configuration("https://fhir.example.cn")["capabilities"]
    assert "launch-standalone" in capabilities and "context-standalone-patient" in capabilities
