"""Security: OAuth2/SMART tokens and scopes, accounts, tenants, consent, de-identification and
field encryption (issue 5; docs/security.md)."""
