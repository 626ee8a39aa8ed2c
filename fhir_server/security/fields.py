"""Field encryption at rest, wired into the repository: people's identifiers, contact points and
street addresses stored as AES-256-GCM tokens, searched by blind indexes (R24; security/crypto.py
has the cryptography and the field policy, ``SENSITIVE_PATHS``).

Where each piece runs:

* **write** — the stored content (current row and, later, its history row) is the resource with
  its sensitive values encrypted under the key ring's current key; the client gets back what it
  sent. The search index is computed from a *view* of the resource whose sensitive values are
  replaced by their blind indexes, so no clear identifier, phone number or street reaches an index
  table either.
* **read** — every version read from the database for one of those types is decrypted before any
  caller sees it (``Repository.reveal``), so handlers, shaping, Bundles and operations see clear
  content; the last two thousand decrypted versions are kept per worker.
* **search** — a value given for ``identifier``, ``telecom``, ``phone`` or ``email`` (and the value
  part of ``identifier:of-type``) of those types is replaced by its blind index before the
  predicate is built: exact matches only, case- and width-insensitive (crypto.normalise). A street
  address can no longer be searched by ``address`` (city, district, state, postal code and
  country still can).
* **rotation** — ``fhir-server keys rotate`` adds a key that becomes current (the server also
  rotates on start when the current key is 90 days old); ``fhir-server keys reencrypt`` moves
  every stored value (current rows and history) to the current key, resumably; ``keys retire``
  refuses a key any value still uses. Workers re-read the key file at most every 5 seconds.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.security import crypto
from fhir_server.security.keyring import KeyRing

#: search parameters whose values are blind indexes, per type: parameter -> sensitive path
BLINDED_PARAMS: dict[str, dict[str, str]] = {
    res_type: {
        name: path
        for name, path in (
            ("identifier", "identifier.value"),
            ("telecom", "telecom.value"),
            ("phone", "telecom.value"),
            ("email", "telecom.value"),
        )
        if path in paths
    }
    for res_type, paths in crypto.SENSITIVE_PATHS.items()
}
TYPES = frozenset(crypto.SENSITIVE_PATHS)
_REFRESH_S = 5.0


class FieldCrypto:
    """The key ring of one process, and what the repository and search ask of it."""

    types = TYPES

    def __init__(self, ring: KeyRing, cache_size: int = 2048) -> None:
        self.ring = ring
        #: stored bytes -> their clear form: keyed by the bytes themselves, so a version written
        #: again (a rolled-back create whose rid SQLite hands out once more) never gets another's
        self._cache: OrderedDict[bytes, bytes] = OrderedDict()
        self._cache_size = cache_size
        self._checked = time.monotonic()

    def _fresh(self) -> KeyRing:
        """The ring, re-read when another process rotated it (checked at most every 5 s)."""
        now = time.monotonic()
        if now - self._checked >= _REFRESH_S:
            self._checked = now
            self.ring.refresh()
        return self.ring

    # -- writes -----------------------------------------------------------------------------
    def seal(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource as stored: its sensitive values encrypted (other types unchanged)."""
        if resource.get("resourceType") not in TYPES:
            return resource
        return crypto.encrypt_resource(self._fresh(), resource)

    def index_view(self, resource: dict[str, Any]) -> dict[str, Any]:
        """The resource as the search index sees it: each sensitive value (clear or encrypted)
        replaced by its blind index."""
        if resource.get("resourceType") not in TYPES:
            return resource
        return crypto.blind_resource(self.ring, resource)

    # -- reads ------------------------------------------------------------------------------
    def reveal(self, content: bytes) -> bytes:
        """Stored content with its tokens decrypted (the last ``cache_size`` kept)."""
        content = bytes(content)
        clear = self._cache.get(content)
        if clear is None:
            try:
                clear = fjson.dumps(crypto.decrypt_resource(self.ring, fjson.loads(content)))
            except crypto.DecryptionError as exc:
                raise FhirError(
                    "exception",
                    f"Stored data could not be decrypted ({exc}): this server's field key ring "
                    "(FHIR_SERVER_FIELD_KEYS or <data-dir>/keys/field-keys.json) is not the one it was written with",
                ) from None
            self._cache[content] = clear
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return clear

    # -- search -----------------------------------------------------------------------------
    def blinded_path(self, res_type: str, param: str) -> str | None:
        return BLINDED_PARAMS.get(res_type, {}).get(param)

    def blind(self, res_type: str, path: str, value: str) -> str:
        return crypto.blind_index(self.ring, value, f"{res_type}.{path}")
