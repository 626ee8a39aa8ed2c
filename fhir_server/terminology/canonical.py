"""How a ValueSet or CodeSystem is named: canonical ``url|version`` or literal ``Type/id``.

Why a module of its own: the same parsing serves ``:in`` values, ``compose.include.valueSet``
imports, ``include.system`` + ``include.version`` and ``:below`` systems, and it decides which
cheap lookup can tell whether a cached result is still current (see ``store.py``).
See http://hl7.org/fhir/R4/references.html#canonical and http://hl7.org/fhir/R4/search.html#token.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from fhir_server.errors import FhirError

_LITERAL = re.compile(r"(ValueSet|CodeSystem)/([A-Za-z0-9\-.]{1,64})")


class Ref(NamedTuple):
    """A parsed reference: by canonical ``url`` (optionally one ``version``) or by ``res_id``."""

    res_type: str
    url: str | None = None
    version: str | None = None
    res_id: str | None = None

    @property
    def key(self) -> tuple[str, str, str]:
        """What a cheap probe looks up: ("url", type, url) or ("id", type, id); version-free,
        so that any change to any version under the same url is noticed."""
        if self.res_id is not None:
            return ("id", self.res_type, self.res_id)
        assert self.url is not None
        return ("url", self.res_type, self.url)

    def __str__(self) -> str:
        if self.res_id is not None:
            return f"{self.res_type}/{self.res_id}"
        return f"{self.url}|{self.version}" if self.version else str(self.url)


def parse(res_type: str, reference: str, version: str | None = None) -> Ref:
    """``url``, ``url|version`` or (relative literal) ``ValueSet/id``; ``version`` given apart
    (``include.version``) wins over none in the string, and must agree with one that is there."""
    reference = reference.strip()
    if not reference:
        raise FhirError("invalid-param", f"An empty {res_type} reference was given")
    literal = _LITERAL.fullmatch(reference)
    if literal is not None and literal.group(1) == res_type:
        return Ref(res_type, res_id=literal.group(2))
    url, bar, in_string = reference.partition("|")
    if not url:
        raise FhirError("invalid-param", f"{res_type} reference {reference!r} has no url")
    in_string = in_string or None
    if bar and in_string is None:
        raise FhirError("invalid-param", f"{res_type} reference {reference!r} has an empty version after '|'")
    if version and in_string and version != in_string:
        raise FhirError("invalid-param", f"{res_type} reference {reference!r} conflicts with version {version!r}")
    return Ref(res_type, url=url, version=version or in_string)


def escape_search_value(value: str) -> str:
    """``value`` as one search parameter value: ``\\``, ``,``, ``|`` and ``$`` escaped."""
    return value.replace("\\", "\\\\").replace(",", "\\,").replace("|", "\\|").replace("$", "\\$")
