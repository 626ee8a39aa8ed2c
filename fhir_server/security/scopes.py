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

Departure: a v2 scope's ``?query`` (e.g. ``patient/Observation.rs?category=laboratory``) is parsed
but refused when requested, because narrowing every search, include and read by an arbitrary
query is not implemented yet; refusing is safer than granting more than was asked for.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

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

    def covers(self, other: ResourceScope) -> bool:
        """Whether this grant includes all of ``other`` (same context, type and letters)."""
        return (
            self.context == other.context
            and self.resource_type in ("*", other.resource_type)
            and set(other.letters) <= set(self.letters)
            and self.query is None
        )


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

    def allows(self, context: str, resource_type: str, letter: str) -> bool:
        """Whether some scope of ``context`` grants ``letter`` on ``resource_type``."""
        return any(
            s.context == context and s.resource_type in ("*", resource_type) and letter in s.letters and s.query is None
            for s in self.resource
        )

    def contexts(self) -> frozenset[str]:
        return frozenset(s.context for s in self.resource)

    def narrowed_to(self, allowed: ScopeSet) -> ScopeSet:
        """The requested scopes that ``allowed`` covers (RFC 6749 §3.3: the server may grant
        fewer than asked); queried scopes are never granted (see the module docstring)."""
        keep = tuple(s for s in self.resource if s.query is None and any(a.covers(s) for a in allowed.resource))
        return ScopeSet(keep, self.other & allowed.other)
