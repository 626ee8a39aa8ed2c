"""Field encryption at rest (AES-256-GCM), blind indexes for search, and statistics hashes
(MISSION.md R24; issue 5 §6).

**Tokens.** ``encrypt`` turns a string into ``enc1.<kid>.<base64url(nonce ‖ ciphertext ‖ tag)>``:
self-describing, so a reader knows the format version and which key to use, and a re-encryption
job can tell from the kid alone whether a value is already under the current key. The nonce is 12
random bytes per call (NIST SP 800-38D §8.2.2, the RBG construction; with at most 2^32
encryptions per key — far more than one rotation period of patient fields — the collision
bound of §8.3 holds). The tag is the full 16 bytes.

**Associated data.** Every value is bound to where it lives, ``"Patient/123#identifier.value"``,
through GCM's additional authenticated data (SP 800-38D §7.1): a token copied into another
resource or another element does not decrypt. The AAD also carries the format version and the
kid, so neither can be swapped. It does not carry the array position: reordering
``identifier`` (a PATCH move) must not break the values, so tokens of one element of one
resource are interchangeable with each other, and only with each other. GCM cannot tell a
tampered token from a wrong AAD; ``DecryptionError`` says so.

**Blind indexes.** An encrypted field cannot be searched by value, so the integration indexes
``blind_index(value)`` — HMAC-SHA256 (RFC 2104, FIPS 198-1) under a key of its own — in place
of the clear text, and searches by the blind index of the query value: exact match only. The
value is normalised first, as Unicode "default caseless matching" (The Unicode Standard §3.13)
with compatibility normalisation (UAX #15 NFKC): ``NFKC(casefold(NFKC(value)))``, then trimmed.
NFKC matters here: a phone number typed with full-width digits (``１３８…``, common with Chinese
input methods) matches one typed with ASCII digits, and the check character of a resident ID
(GB 11643-1999) matches as ``x`` or ``X``. Internal spaces are kept ("138 0013 8000" does not match
"13800138000"): that is formatting the client should not add to identifiers. The ``purpose``
(e.g. ``"Patient.identifier"``) is hashed in first, so the same number used as a phone and as an
identifier gives unrelated indexes and one column cannot be joined against another.

**Statistics hashes.** ``statistics_hash`` is the irreversible identifier hash of R24 for
statistics exports: HMAC-SHA256 under the statistics key, hex. A plain SHA-256 of an 18-digit
resident ID is reversible by enumeration: for one district and one decade of birth there are
only about 3.7 million (3,653 dates x 1,000 sequence numbers; the last character is a checksum,
GB 11643-1999); a keyed hash cannot be enumerated without the key. It is stable across exports
(same key) and unrelated to the blind index of the same value (another key, another domain tag).

**Field policy.** ``SENSITIVE_PATHS`` lists, per resource type, the elements encrypted at rest:
the identifiers (resident ID, medical-record and insurance numbers), contact points and street
addresses of people. Names stay in clear: they are searched by prefix and fuzzily (``name``,
``family``, ``given``, ``phonetic``), which a blind index cannot do, and a name alone identifies
far less than an ID number; de-identification (R25) still masks them wherever data leaves its
institution. City, district and postal code stay in clear for the same reason as names and for
statistics by region. Resources inside ``contained`` are handled with their container (one level:
FHIR does not nest contained resources, R4 §2.11 "Contained Resources"); resources inside a stored
Bundle are not.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterator
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from fhir_server.security.keyring import KeyRing, UnknownKeyError

TOKEN_VERSION = "enc1"
NONCE_BYTES = 12
TAG_BYTES = 16
_TOKEN = re.compile(r"enc1\.([A-Za-z0-9_-]{1,64})\.([A-Za-z0-9_-]+)")

#: Elements encrypted at rest, per resource type (dotted paths below the resource; each step may
#: be an array). See the module docstring for what stays in clear and why.
SENSITIVE_PATHS: dict[str, tuple[str, ...]] = {
    "Patient": (
        "identifier.value",
        "telecom.value",
        "address.line",
        "address.text",
        "contact.telecom.value",
        "contact.address.line",
        "contact.address.text",
    ),
    "RelatedPerson": ("identifier.value", "telecom.value", "address.line", "address.text"),
    "Practitioner": ("identifier.value", "telecom.value", "address.line", "address.text"),
    "Person": ("identifier.value", "telecom.value", "address.line", "address.text"),
}


class DecryptionError(ValueError):
    """A token that is malformed, names an unknown key, or fails authentication."""


def _b64encode(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def _aad_bytes(kid: str, aad: str) -> bytes:
    return f"{TOKEN_VERSION}\0{kid}\0{aad}".encode()


def _check_aad(aad: str) -> None:
    if not isinstance(aad, str) or not aad:
        raise ValueError("aad must be a non-empty string saying where the value lives")


def is_token(value: object) -> bool:
    """True when ``value`` has the shape of a token made by ``encrypt`` (not that it decrypts)."""
    return isinstance(value, str) and _TOKEN.fullmatch(value) is not None


def encrypt(ring: KeyRing, plaintext: str, aad: str) -> str:
    """Encrypt ``plaintext`` under the ring's current key, bound to ``aad``."""
    if not isinstance(plaintext, str):
        raise TypeError(f"plaintext must be a string, not {type(plaintext).__name__}")
    _check_aad(aad)
    key = ring.current
    nonce = secrets.token_bytes(NONCE_BYTES)
    sealed = AESGCM(key.key).encrypt(nonce, plaintext.encode("utf-8"), _aad_bytes(key.kid, aad))
    return f"{TOKEN_VERSION}.{key.kid}.{_b64encode(nonce + sealed)}"


def token_kid(token: str) -> str:
    """The kid a token was encrypted under (for the re-encryption job's bookkeeping)."""
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise DecryptionError("not an encrypted value: expected enc1.<kid>.<base64url data>")
    return match.group(1)


def decrypt(ring: KeyRing, token: str, aad: str) -> str:
    """The clear text of ``token``, which must have been encrypted with the same ``aad``.

    An unknown kid makes the ring re-read its file once (another process may have rotated)."""
    _check_aad(aad)
    match = _TOKEN.fullmatch(token) if isinstance(token, str) else None
    if match is None:
        raise DecryptionError("not an encrypted value: expected enc1.<kid>.<base64url data>")
    kid, data = match.groups()
    try:
        raw = base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))
    except (binascii.Error, ValueError) as exc:
        raise DecryptionError(f"encrypted value is not valid base64url: {exc}") from exc
    if len(raw) < NONCE_BYTES + TAG_BYTES:
        raise DecryptionError("encrypted value is too short to hold a nonce and a tag")
    if kid not in ring:
        ring.refresh()
    try:
        key = ring.key(kid)
    except UnknownKeyError as exc:
        raise DecryptionError(f"unknown key {kid!r}: not in the key ring (lost, or from another server)") from exc
    try:
        clear = AESGCM(key).decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], _aad_bytes(kid, aad))
    except InvalidTag:
        raise DecryptionError(
            f"authentication failed for the value at {aad!r}: the token was altered, "
            "or it belongs to another resource or element"
        ) from None
    try:
        return clear.decode("utf-8")
    except UnicodeDecodeError as exc:  # authenticated, so only a foreign encryptor could cause it
        raise DecryptionError(f"decrypted value is not UTF-8: {exc}") from exc


def reencrypt(ring: KeyRing, token: str, aad: str) -> str | None:
    """``token`` re-encrypted under the current key, or None when it already is under it."""
    if token_kid(token) == ring.current.kid:
        return None
    return encrypt(ring, decrypt(ring, token, aad), aad)


def normalise(value: str) -> str:
    """The form hashed by ``blind_index`` and ``statistics_hash``: NFKC, case-folded, trimmed."""
    if not isinstance(value, str):
        raise TypeError(f"value must be a string, not {type(value).__name__}")
    return unicodedata.normalize("NFKC", unicodedata.normalize("NFKC", value).casefold()).strip()


def blind_index(ring: KeyRing, value: str, purpose: str) -> str:
    """HMAC-SHA256 under the blind-index key of ``purpose + "\\0" + normalise(value)``,
    base64url without padding: equal for equal (normalised) values and purposes."""
    if not isinstance(purpose, str) or not purpose or "\0" in purpose:
        raise ValueError("purpose must be a non-empty string without NUL")
    message = f"{purpose}\0{normalise(value)}".encode()
    return _b64encode(hmac.new(ring.blind_index_key, message, hashlib.sha256).digest())


def statistics_hash(ring: KeyRing, system: str, value: str) -> str:
    """Irreversible, stable identifier hash for statistics exports: HMAC-SHA256 under the
    statistics key of ``"stat1\\0" + system + "\\0" + normalise(value)``, hex. The identifier
    ``system`` takes part so the same digits under two systems stay two identities."""
    if not isinstance(system, str) or "\0" in system:
        raise ValueError("system must be a string without NUL")
    message = f"stat1\0{system}\0{normalise(value)}".encode()
    return hmac.new(ring.statistics_key, message, hashlib.sha256).hexdigest()


# -- resources -------------------------------------------------------------------------------


def _address(resource: dict[str, Any]) -> tuple[str, str]:
    resource_type = resource.get("resourceType")
    resource_id = resource.get("id")
    if not isinstance(resource_type, str) or not resource_type:
        raise ValueError("resource has no resourceType")
    if not isinstance(resource_id, str) or not resource_id:
        raise ValueError(f"{resource_type} has no id: encrypted values are bound to the resource id")
    return resource_type, resource_id


def _map_path(node: Any, steps: list[str], where: str, change: Callable[[str], str]) -> tuple[Any, bool]:
    """``node`` with ``change`` applied to every string reached by ``steps``; new containers only
    along the way (others are shared), and the original object back when nothing changed."""
    if isinstance(node, list):
        changed = False
        items = []
        for item in node:
            new_item, item_changed = _map_path(item, steps, where, change)
            items.append(new_item)
            changed = changed or item_changed
        return (items, True) if changed else (node, False)
    if not steps:
        if node is None:  # a null in a primitive array, its extension in the "_" sibling
            return node, False
        if not isinstance(node, str):
            raise ValueError(f"{where} must be a string, found {type(node).__name__}")
        new_value = change(node)
        return new_value, new_value != node
    if not isinstance(node, dict) or steps[0] not in node:
        return node, False
    new_child, changed = _map_path(node[steps[0]], steps[1:], where, change)
    if not changed:
        return node, False
    copy = dict(node)
    copy[steps[0]] = new_child
    return copy, True


def _transform(resource: dict[str, Any], change: Callable[[str, str], str]) -> tuple[dict[str, Any], bool]:
    """Apply ``change(value, aad)`` at every sensitive path of ``resource`` and of the resources in
    its ``contained``; a new top-level dict (and new containers along changed paths)."""
    if not isinstance(resource, dict):
        raise TypeError("resource must be a dict (parsed FHIR JSON)")
    resource_type, resource_id = _address(resource)
    result = dict(resource)
    changed = False
    for path in SENSITIVE_PATHS.get(resource_type, ()):
        aad = f"{resource_type}/{resource_id}#{path}"
        result, path_changed = _map_path(
            result, path.split("."), f"{resource_type}.{path}", lambda value, aad=aad: change(value, aad)
        )
        changed = changed or path_changed
    contained = resource.get("contained")
    if isinstance(contained, list):
        new_contained = []
        for inner in contained:
            if isinstance(inner, dict) and inner.get("resourceType") in SENSITIVE_PATHS:
                inner_type, inner_id = _address(inner)
                prefix = f"{resource_type}/{resource_id}#contained/{inner_type}/{inner_id}#"
                for path in SENSITIVE_PATHS[inner_type]:
                    aad = prefix + path
                    inner, inner_changed = _map_path(
                        inner,
                        path.split("."),
                        f"{resource_type}.contained({inner_type}).{path}",
                        lambda value, aad=aad: change(value, aad),
                    )
                    changed = changed or inner_changed
            new_contained.append(inner)
        result["contained"] = new_contained
    return result, changed


def _decrypts_here(ring: KeyRing, value: str, aad: str) -> bool:
    try:
        decrypt(ring, value, aad)
    except DecryptionError:
        return False
    return True


def encrypt_resource(ring: KeyRing, resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resource`` with every string at its ``SENSITIVE_PATHS`` replaced by a token
    (aad ``"<type>/<id>#<path>"``). A value that already is a token valid at that place is left
    alone; a token-shaped string that does not decrypt there is client data and is encrypted like
    any other (so nobody can plant an undecryptable value). The input is not changed; members off
    the sensitive paths are shared with it, not copied."""

    def seal(value: str, aad: str) -> str:
        if is_token(value) and _decrypts_here(ring, value, aad):
            return value
        return encrypt(ring, value, aad)

    return _transform(resource, seal)[0]


def decrypt_resource(ring: KeyRing, resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resource`` with its tokens decrypted. Clear strings at sensitive paths (stored
    before encryption was enabled) are returned as they are."""
    return _transform(resource, lambda value, aad: decrypt(ring, value, aad) if is_token(value) else value)[0]


def reencrypt_resource(ring: KeyRing, resource: dict[str, Any]) -> tuple[dict[str, Any], bool]:
    """For the re-encryption job: a copy with every value under the current key — old tokens
    re-encrypted, clear strings at sensitive paths encrypted — and whether anything changed."""

    def to_current(value: str, aad: str) -> str:
        if not is_token(value):
            return encrypt(ring, value, aad)
        return reencrypt(ring, value, aad) or value

    return _transform(resource, to_current)


def blind_resource(ring: KeyRing, resource: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``resource`` whose sensitive values (clear or tokens) are their blind indexes,
    with purpose ``"<type>.<path>"``: what the search index is computed from, so that no clear
    value reaches an index table and a search by ``blind_index`` of the query value matches."""
    res_type = resource.get("resourceType")

    def blind(value: str, aad: str) -> str:
        clear = decrypt(ring, value, aad) if is_token(value) else value
        return blind_index(ring, clear, f"{res_type}.{aad.rsplit('#', 1)[1]}")

    return _transform(resource, blind)[0]


def _walk(node: Any, steps: list[str]) -> Iterator[str]:
    if isinstance(node, list):
        for item in node:
            yield from _walk(item, steps)
    elif not steps:
        if isinstance(node, str):
            yield node
    elif isinstance(node, dict) and steps[0] in node:
        yield from _walk(node[steps[0]], steps[1:])


def sensitive_values(resource: dict[str, Any]) -> list[tuple[str, str]]:
    """``(path, clear value)`` for every string at the resource's own sensitive paths, in policy
    order, tokens skipped: what the integration indexes as blind indexes instead of clear text.
    Contained resources are not included (search does not index them)."""
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    return [
        (path, value)
        for path in SENSITIVE_PATHS.get(resource_type or "", ())
        for value in _walk(resource, path.split("."))
        if not is_token(value)
    ]
