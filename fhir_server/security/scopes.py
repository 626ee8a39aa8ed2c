"""SMART on FHIR scopes, v1 and v2 syntax, and what they permit.

Grammar (http://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
``<context>/<resource type or *>.<permissions>[?<query>]`` with context ``patient``, ``user`` or
``system``. v1 permissions are ``read``, ``write`` or ``*``; v2 are a subset of ``cruds`` written
in that order (create, read, update, delete, search). A v1 ``read`` means v2 ``rs``, ``write``
means ``cud``, ``*`` means ``cruds`` (the spec's own equivalence table). Other scopes
(``openid``, ``fhirUser``, ``launch``, ``launch/patient``, ``offline_access``, ``online_access``)
are kept as they are: they ask for identity or context, not for data.

Why one parser for both syntaxes: a client may hold v1 scopes while the server checks v2
letters; comparing letters makes ``system/*.read`` and ``system/*.rs`` the same grant, and lets
``get_allowed_scope`` narrow a request to what a client registration allows, scope by scope.

A v2 scope may end in a ``?query`` of search parameters (SMART 2 "finer-grained resource
constraints"): ``patient/Observation.rs?category=…|laboratory`` grants ``rs`` on the Observations
that query matches. Here it is only parsed and compared; what a query may say, and how the rows
are limited by it, is security/granular.py. A scope with a query covers less than the same scope
without one, and a query with more parameters less than one with fewer (each parameter is ANDed),
which is what ``covers`` compares.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl

LETTERS = "cruds"
_V1 = {"read": "rs", "write": "cud", "*": "cruds"}
_RESOURCE_SCOPE = re.compile(r"(patient|user|system)/(\*|[A-Z][A-Za-z]+)\.([a-z*]+)(\?.*)?")
#: scopes that ask for identity or launch context rather than data
IDENTITY_SCOPES = frozenset({"openid", "fhirUser", "profile", "launch", "launch/patient", "launch/encounter",
                             "offline_access", "online_access"})  # fmt: skip


class ScopeError(ValueError):
    """A scope string this server does not understand (OAuth ``invalid_scope``)."""


@dataclass(frozen=True)
class ResourceScope:
    context: str  # patient | user | system
    resource_type: str  # a type or "*"
    letters: str  # subset of "cruds", in that order
    query: str | None = None
    #: as written (v1 or v2), so a token says what the client asked for
    text: str = ""

    @property
    def params(self) -> tuple[tuple[str, str], ...]:
        """The query's (parameter, value) pairs, decoded as a search URL's are; () without one."""
        return query_params(self.query) if self.query is not None else ()

    def covers(self, other: ResourceScope) -> bool:
        """Whether this grant includes all of ``other``: the same context, a type and letters that
        include its, and no query or one whose every parameter ``other`` has too (``other`` then
        asks for the same rows, or fewer: its further parameters are ANDed)."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.letters) <= set(self.letters)
            and set(self.params) <= set(other.params)
        )


@functools.lru_cache(maxsize=256)
def query_params(query: str) -> tuple[tuple[str, str], ...]:
    """``a=1&b=2`` → ``(("a", "1"), ("b", "2"))``; ScopeError for an empty or malformed query."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        pairs = []
    if not pairs:
        raise ScopeError(f"scope query {query!r} is not name=value pairs joined by &")
    return tuple(pairs)


def parse_scope(text: str) -> ResourceScope | str:
    """A resource scope, or the text itself for an identity/launch scope."""
    if text in IDENTITY_SCOPES or text.startswith("launch/"):
        return text
    m = _RESOURCE_SCOPE.fullmatch(text)
    if not m:
        raise ScopeError(f"unknown scope {text!r}")
    context, resource_type, perms, query = m.groups()
    if perms in _V1:
        letters = _V1[perms]
    elif perms and all(c in LETTERS for c in perms) and "".join(c for c in LETTERS if c in perms) == perms:
        letters = perms
    else:
        raise ScopeError(f"scope {text!r}: permissions must be read, write, * or letters of 'cruds' in that order")
    if query:
        query_params(query[1:])  # a malformed query is refused with its scope
    return ResourceScope(context, resource_type, letters, query[1:] if query else None, text)


@dataclass(frozen=True)
class ScopeSet:
    """The scopes of one token or registration."""

    resource: tuple[ResourceScope, ...] = ()
    other: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str | None) -> ScopeSet:
        resource: list[ResourceScope] = []
        other: set[str] = set()
        for word in (text or "").split():
            parsed = parse_scope(word)
            if isinstance(parsed, ResourceScope):
                resource.append(parsed)
            else:
                other.add(parsed)
        return cls(tuple(resource), frozenset(other))

    def __str__(self) -> str:
        return " ".join([s.text for s in self.resource] + sorted(self.other))

    @functools.cached_property
    def queried(self) -> bool:
        """Whether some scope has a query: only then are rows limited beyond the type (the
        common token pays for no more than this flag, computed once per token)."""
        return any(s.query is not None for s in self.resource)

    def allows(self, context: str, resource_type: str, letter: str) -> bool:
        """Whether some scope of ``context`` grants ``letter`` on ``resource_type``, on every row
        or on the rows its query matches (security/granular.py limits the rows)."""
        return any(
            s.context == context and s.resource_type in ("*", resource_type) and letter in s.letters
            for s in self.resource
        )

    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.resource)

    def narrowed_to(self, allowed: ScopeSet) -> ScopeSet:
        """The requested scopes that ``allowed`` covers (RFC 6749 §3.3: the server may grant
        fewer than asked), each as asked: never more than asked, nor than registered."""
        keep = tuple(s for s in self.resource if any(a.covers(s) for a in allowed.resource))
        return ScopeSet(keep, self.other & allowed.other)
