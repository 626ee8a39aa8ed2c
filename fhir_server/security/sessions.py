"""Browser login sessions of the authorization endpoint (the login page's cookie).

Why server-side sessions: logging out, locking or disabling an account must end its sessions at
once, which a self-contained cookie could not do. The cookie holds 32 random bytes; the table
keeps their SHA-256 (a copy of the database opens no session) with the account, the address it
was opened from and its expiry (8 hours).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy import and_, delete, insert, select
from sqlalchemy.engine import Engine

from fhir_server.security import digest
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import auth_sessions as S
from fhir_server.util.clock import now_us

LIFETIME_US = 8 * 3600 * 1_000_000
COOKIE = "telefhir_session"


class Sessions:
    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def open(self, username: str, address: str | None) -> str:
        token = secrets.token_urlsafe(32)
        now = now_us()
        with begin_write(self.engine) as conn:
            conn.execute(delete(S).where(S.c.expires_us < now))
            conn.execute(insert(S).values(session_hash=digest(token), username=username, created_us=now,
                                          expires_us=now + LIFETIME_US, address=address))  # fmt: skip
        return token

    def user(self, token: str | None) -> str | None:
        """The account of a live session, else None."""
        if not token:
            return None
        with self.engine.connect() as conn:
            row = conn.execute(
                select(S.c.username).where(and_(S.c.session_hash == digest(token), S.c.expires_us > now_us()))
            ).first()
        return str(row.username) if row is not None else None

    def close(self, token: str | None) -> str | None:
        """End a session; its account (for the logout audit record), or None."""
        username = self.user(token)
        if token:
            with begin_write(self.engine) as conn:
                conn.execute(delete(S).where(S.c.session_hash == digest(token)))
        return username

    def close_all(self, username: str) -> None:
        with begin_write(self.engine) as conn:
            conn.execute(delete(S).where(S.c.username == username))


def form_token(session: str, purpose: str, request: str) -> str:
    """The hidden field that binds a form to the browser session ``session`` (the cookie's value)
    and to the pending authorization ``request`` (its query): an HMAC under the session's secret.
    Why: a page of another site cannot post the form (the ``SameSite=Lax`` cookie stays home), and
    a form posted with another authorization request — another client, redirect URI or PKCE
    challenge — does not match, so a choice made on one request cannot issue a code for another."""
    return hmac.new(session.encode(), f"{purpose}\0{request}".encode(), hashlib.sha256).hexdigest()


def check_form_token(session: str | None, purpose: str, request: str, token: str) -> bool:
    """Whether ``token`` is :func:`form_token` of this session, purpose and request."""
    expected = form_token(session or "", purpose, request)
    return bool(session) and hmac.compare_digest(expected.encode(), token.encode())
