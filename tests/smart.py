"""A SMART app and its user, for black-box tests: authorization code + PKCE through the login page.

The app is a requests-oauthlib ``OAuth2Session`` (a real OAuth client); the browser is a requests
session that keeps the login cookie and follows the form as a person would.
"""

from __future__ import annotations

import pathlib
import re
import subprocess
import sys

import requests
from requests_oauthlib import OAuth2Session

REDIRECT = "http://127.0.0.1:9/callback"  # never fetched: the tests read the Location header
FHIR_SERVER = str(pathlib.Path(sys.executable).with_name("fhir-server"))
#: the password the tests give accounts (on standard input, for --password-stdin)
PASSWORD = "Str0ng-passw0rd!"


def cli(*args: str, stdin: str = PASSWORD + "\n") -> None:
    """Run ``fhir-server`` with ``args``; it must succeed."""
    result = subprocess.run([FHIR_SERVER, *args], capture_output=True, text=True, timeout=120, input=stdin)
    assert result.returncode == 0, result.stderr


class SmartApp:
    def __init__(self, root: str, base: str, client_id: str, scope: list[str]) -> None:
        self.root = root
        self.base = base
        self.client_id = client_id
        self.scope = scope
        self.authorize_url = root + "/auth/authorize"
        self.token_url = root + "/auth/token"

    def oauth(self) -> OAuth2Session:
        return OAuth2Session(client_id=self.client_id, redirect_uri=REDIRECT, scope=self.scope, pkce="S256")

    def login(
        self, browser: requests.Session, url: str, username: str, password: str, totp: str = ""
    ) -> requests.Response:
        """Open the login page at ``url`` and submit the form."""
        page = browser.get(url, allow_redirects=False)
        assert page.status_code == 200 and "Sign in" in page.text, page.text
        continuation = re.search(r'name="continue" value="([^"]*)"', page.text).group(1)  # type: ignore[union-attr]
        form = {
            "continue": continuation.replace("&amp;", "&"),
            "username": username,
            "password": password,
            "totp": totp,
        }
        return browser.post(self.root + "/auth/login", data=form, allow_redirects=False)

    def code_flow(self, username: str, password: str, totp: str = "", **params: str) -> tuple[OAuth2Session, dict]:
        """Sign ``username`` in and exchange the code: the app's session and its token.
        ``params``: more authorization request parameters (an EHR launch's ``launch``)."""
        session = self.oauth()
        url, _state = session.authorization_url(self.authorize_url, aud=self.base, **params)
        browser = requests.Session()
        logged_in = self.login(browser, url, username, password, totp)
        assert logged_in.status_code == 303, logged_in.text
        back = browser.get(self.root + "/auth/" + logged_in.headers["Location"], allow_redirects=False)
        assert back.status_code == 302 and back.headers["Location"].startswith(REDIRECT), back.text
        token = session.fetch_token(
            self.token_url, authorization_response=back.headers["Location"], include_client_id=True
        )
        return session, token
