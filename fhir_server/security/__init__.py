"""Security: OAuth2/SMART tokens and scopes, accounts, tenants, consent, de-identification and
field encryption (issue 5; docs/security.md)."""

import hashlib


def digest(secret: str) -> str:
    """SHA-256 (hex) of a credential the server must recognise but never store: authorization
    codes, refresh tokens, session cookies, replay keys."""
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()
