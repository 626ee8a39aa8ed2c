"""The signature of a published document: a detached JWS in ``Bundle.signature``.

Why this shape: it is the enveloped signature FHIR describes for a Bundle (signatures.html; the
form Da Vinci CDex profiles): ``sigFormat`` ``application/jose``, ``data`` the base64 of a compact
JWS whose payload is left out (RFC 7515 appendix F) and is the canonical JSON (RFC 8785, FHIR's
``http://hl7.org/fhir/canonicalization/json``) of the Bundle without ``id``, ``meta`` and
``signature`` — the parts a server may change when it stores the Bundle. Anyone holding the
Bundle and the published keys (``GET /document-keys``, a JWKS apart from the token keys of
``/auth/jwks``: a token verifier must never accept a document key) can verify it with any JOSE
library; nothing of this server is needed. RS256 with the platform's document key
(security/keys.py, ``purpose = "document"``).
"""

from __future__ import annotations

import base64
from typing import Any

import rfc8785
from joserfc import jws
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from fhir_server.security.keys import ALG, SigningKeys

#: ASTM E1762 signature type: the source's signature (the publishing institution, through the platform)
SOURCE_SIGNATURE = {"system": "urn:iso-astm:E1762-95:2013", "code": "1.2.840.10065.1.12.1.14", "display": "Source"}
TARGET_FORMAT = "application/fhir+json;canonicalization=http://hl7.org/fhir/canonicalization/json"
SIG_FORMAT = "application/jose"
_UNSIGNED = ("id", "meta", "signature")


class SignatureInvalid(ValueError):
    """The Bundle does not carry a valid signature of a published key (the reason says why)."""


def signed_bytes(bundle: dict[str, Any]) -> bytes:
    """What the signature covers: the canonical JSON of the Bundle without id, meta, signature."""
    return bytes(rfc8785.dumps({k: v for k, v in bundle.items() if k not in _UNSIGNED}))


def sign(bundle: dict[str, Any], keys: SigningKeys, who: dict[str, Any], when: str) -> dict[str, Any]:
    """The ``Signature`` of ``bundle`` by the current document key, on behalf of ``who``."""
    key = keys.signing_key()
    token = jws.serialize_compact({"alg": ALG, "kid": key.kid}, signed_bytes(bundle), key)
    header, _, signature = token.split(".")
    detached = f"{header}..{signature}"
    return {
        "type": [SOURCE_SIGNATURE],
        "when": when,
        "who": who,
        "targetFormat": TARGET_FORMAT,
        "sigFormat": SIG_FORMAT,
        "data": base64.b64encode(detached.encode()).decode(),
    }


def verify(bundle: dict[str, Any], published: KeySet) -> str:
    """The kid that signed ``bundle``; raises :class:`SignatureInvalid` otherwise."""
    signature = bundle.get("signature")
    if not isinstance(signature, dict) or signature.get("sigFormat") != SIG_FORMAT:
        raise SignatureInvalid("the Bundle carries no JWS signature")
    try:
        detached = base64.b64decode(signature.get("data") or "", validate=True).decode()
        parsed = jws.deserialize_compact(detached, published, algorithms=[ALG], payload=signed_bytes(bundle))
    except (ValueError, JoseError) as exc:
        raise SignatureInvalid(f"the signature does not match the Bundle ({type(exc).__name__})") from None
    return str(parsed.headers().get("kid"))
