"""De-identification where data leaves its institution inside the platform (R25).

Why at the repository's read: another institution's data reaches a request only through a grant
(a consultation, a referral, a share) or a supervisor's oversight, and whatever path reads it — a
read, a search page, an include, history, ``$everything``, a Bundle entry, an operation's input —
goes through the session's reads. De-identifying there (``Repository.egress``, after decryption)
means no path can hand another institution the identified record: the one rule set of
security/deidentify.py, with pseudonyms stable per receiving institution (the same patient, the
same pseudonym in all its consultations), and with resource ids and references kept — they are the
server's random UUIDs, and the reader must be able to follow them. An institution's own data, the
shared catalogue, the platform's own clients and a resident reading their own records see the
record as stored.
"""

from __future__ import annotations

from collections import OrderedDict

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.security.deidentify import DeidContext, DeidentificationError, deidentify


class Egress:
    def __init__(self, key: bytes, cache_size: int = 2048) -> None:
        self.key = key
        self._cache: OrderedDict[tuple[bytes, str], bytes] = OrderedDict()
        self._cache_size = cache_size

    def __call__(self, content: bytes, receiver: str) -> bytes:
        """``content`` de-identified for the institution ``receiver`` (an Organization id)."""
        key = (content, receiver)
        out = self._cache.get(key)
        if out is None:
            ctx = DeidContext(self.key, f"Organization/{receiver}", keep_links=True)
            try:
                out = fjson.dumps(deidentify(fjson.loads(content), ctx))
            except DeidentificationError as exc:  # stored data no rule covers: never passed on as it is
                raise FhirError("exception", f"Stored data could not be de-identified for sharing: {exc}") from None
            self._cache[key] = out
            if len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return out
