"""SMART v2 scopes with a query ("granular" scopes): which rows they let a token read and write.

SMART App Launch 2, "Finer-grained resource constraints using search parameters":
``patient/Observation.rs?category=http://terminology.hl7.org/CodeSystem/observation-category|laboratory``
grants read and search on the Observations that query matches, and on no other Observation.

Why the search compiler decides: a scope's query is compiled by search/query.py into the very
predicates on the index tables that a search by it uses, so a row is allowed exactly when that
search would find it — no second, ad-hoc reading of the resource that could disagree with it.

* Reading: the predicate joins the request's access predicate (security/tenancy.py,
  ``Access.visible``), which every query of ``resources`` gets; so search, ``_include`` and
  ``_revinclude``, chains, ``_has``, compartments, ``$everything``, history, conditional
  interactions, Bundles, paging and ``_total`` reach only allowed rows, and a client's own search
  parameters are ANDed with the scope's. Several scopes on one type: a row is allowed when any of
  them matches it (OR); a scope without a query on the type, or on ``*``, allows every row. The
  reads have one view of the rows, so where the scopes granting ``r`` and those granting ``s`` on a
  type differ, a row must be allowed by both (never more than either grants).
* Naming an instance the scopes do not allow (read, vread, its history, update, patch, delete,
  an instance operation) is a 403 whose OperationOutcome names the scopes (:func:`check_instance`),
  as a missing scope is; a row the request may not see at all (another institution's) stays a 404.
* Writing: a row created or updated must match a scope granting ``c`` or ``u`` on its type, and
  the row an update or a delete replaces must match one granting ``u`` or ``d``; checked on the
  index rows inside the write's transaction (:func:`install`), so a refusal (403) stores nothing.

What a query may say is checked when a token is issued (:func:`check_enforceable`): a scope that
is granted is a scope that is enforced.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import ColumnElement, and_, false, not_, or_, select
from sqlalchemy.sql.util import ClauseAdapter

from fhir_server.errors import FhirError
from fhir_server.search.query import compile_query
from fhir_server.search.registry import get_registry
from fhir_server.security.fields import BLINDED_PARAMS
from fhir_server.security.scopes import ResourceScope, ScopeError, ScopeSet
from fhir_server.storage.schema import resources

if TYPE_CHECKING:
    from fhir_server.security.tenancy import Access
    from fhir_server.storage.repository import Repository, Session, StoredVersion

#: a scope's query: its (parameter, value) pairs, all of which a row must match
Query = tuple[tuple[str, str], ...]
#: modifiers a scope's query may use, by parameter type: those answered by the row's own index
#: rows with a fixed statement (not the terminology modifiers, which read stored ValueSets and
#: CodeSystems, nor ``uri:above``); a reference parameter also takes a resource type
_MODIFIERS: dict[str, frozenset[str | None]] = {
    "token": frozenset({None, "not", "text", "missing", "of-type"}),
    "string": frozenset({None, "exact", "contains", "missing"}),
    "reference": frozenset({None, "missing", "identifier"}),
    "date": frozenset({None, "missing"}),
    "number": frozenset({None, "missing"}),
    "quantity": frozenset({None, "missing"}),
    "uri": frozenset({None, "below", "missing"}),
}
#: parameters about the row itself rather than its index
_ROW_PARAMS = frozenset({"_lastUpdated"})
#: kept in the audit store, not in ``resources``: a query could not be matched there
_OUTSIDE_THE_INDEX = frozenset({"AuditEvent"})
_VERB = {"c": "create", "u": "update", "d": "delete"}


# -- at the token endpoint ---------------------------------------------------------------------
def check_enforceable(scopes: ScopeSet) -> None:
    """ScopeError (``invalid_scope``) naming the first scope whose query this server could not
    enforce on every interaction its letters allow."""
    for scope in scopes.resource:
        if scope.query is not None:
            _check_query(scope)


def _check_query(scope: ResourceScope) -> None:
    registry = get_registry()
    res_type = scope.resource_type
    if res_type == "*":
        raise ScopeError(f"scope {scope.text!r}: a query needs a resource type (its parameters are the type's)")
    if res_type not in registry.resource_types or res_type in _OUTSIDE_THE_INDEX:
        raise ScopeError(f"scope {scope.text!r}: {res_type} cannot be limited by a query")
    for key, value in scope.params:
        reason = _unenforceable(registry, res_type, key, value)
        if reason is not None:
            raise ScopeError(f"scope {scope.text!r}: {reason}")
    try:  # the values themselves (a date, a token's system|code), as a search would check them
        compile_query(registry, res_type, list(scope.params))
    except FhirError as exc:
        raise ScopeError(f"scope {scope.text!r}: {exc.diagnostics}") from None


def _unenforceable(registry: Any, res_type: str, key: str, value: str) -> str | None:
    """Why ``key=value`` cannot limit a scope on ``res_type``, or None when it can."""
    name, _, modifier = key.partition(":")
    if not value:
        return f"{key} has no value (a search ignores it: the scope would not be limited)"
    if name in _ROW_PARAMS:
        return None
    param = registry.get(res_type, name) if "." not in name else None
    if param is None or param.type not in _MODIFIERS or not (param.indexed or param.union_of):
        return (
            f"{key!r} cannot limit a scope: use a token, reference, string, date, number, quantity or uri "
            f"parameter of {res_type}, or _lastUpdated (no chains, _has, _include, _id or result parameters)"
        )
    if name in BLINDED_PARAMS.get(res_type, {}):
        return f"{key} is searched by blind index (security/fields.py), which a scope's query cannot use"
    typed = param.type == "reference" and modifier in registry.resource_types
    if (modifier or None) not in _MODIFIERS[param.type] and not typed:
        allowed = ", ".join(f":{m}" for m in sorted(m for m in _MODIFIERS[param.type] if m)) or "none"
        return f"modifier :{modifier} cannot limit a scope on a {param.type} parameter (allowed: {allowed})"
    return None


# -- the rows a token's scopes allow -----------------------------------------------------------
@dataclass(frozen=True)
class ScopeFilter:
    """The token's resource scopes in the contexts that count for it (``system/`` for a client,
    ``user/`` and ``patient/`` for a person), some with a query."""

    scopes: tuple[ResourceScope, ...]

    @classmethod
    def of(cls, scopes: ScopeSet, contexts: tuple[str, ...]) -> ScopeFilter | None:
        """None when no scope that counts has a query: nothing to limit beyond the types."""
        counted = tuple(s for s in scopes.resource if s.context in contexts)
        return cls(counted) if any(s.query is not None for s in counted) else None

    @functools.cached_property
    def types(self) -> frozenset[str]:
        """The types some scope limits by a query (a type not named here is not limited)."""
        return frozenset(s.resource_type for s in self.scopes if s.query is not None)

    def queries(self, res_type: str, letter: str) -> frozenset[Query] | None:
        """The queries a row of ``res_type`` must match one of for ``letter``; None: no limit (a
        scope grants it without a query, or none grants it and the route check refuses it)."""
        granting = [s for s in self.scopes if letter in s.letters and s.resource_type in ("*", res_type)]
        if not granting or any(s.query is None for s in granting):
            return None
        return frozenset(s.params for s in granting)

    def permits(self, res: Any, res_type: str, letter: str) -> ColumnElement[bool] | None:
        """The predicate on a ``resources`` row (or alias) ``res`` of ``res_type`` that ``letter``
        needs; None: every row. ``r`` and ``s`` are one view: the row must be allowed for each."""
        letters = "rs" if letter in "rs" else letter
        needed = {q for c in letters if (q := self.queries(res_type, c)) is not None}
        if not needed:
            return None
        return and_(*[or_(*[_matches(res, res_type, q) for q in sorted(qs)]) for qs in sorted(needed, key=sorted)])

    def readable(self, res: Any) -> ColumnElement[bool] | None:
        """The rows of every type that reads may see; None: every row."""
        limited = [(t, p) for t in sorted(self.types) if (p := self.permits(res, t, "r")) is not None]
        if not limited:
            return None
        other_types = and_(*[res.c.res_type != t for t, _ in limited])
        return or_(other_types, *[and_(res.c.res_type == t, p) for t, p in limited])

    def naming(self, res_type: str, letter: str) -> str:
        """The scopes that grant ``letter`` (``r`` or ``s``: either) on ``res_type``, for a message."""
        letters = "rs" if letter in "rs" else letter
        found = [s.text for s in self.scopes if set(letters) & set(s.letters) and s.resource_type in ("*", res_type)]
        return ", ".join(found)


def _matches(res: Any, res_type: str, query: Query) -> ColumnElement[bool]:
    """``res`` is found by a search of ``res_type`` with ``query``; nothing matches a query that
    no longer compiles (a custom SearchParameter it names was retired since the token was issued)."""
    try:
        filters = compile_query(get_registry(), res_type, list(query)).filters
    except FhirError:
        return false()
    pred = and_(*filters)
    return pred if res is resources else ClauseAdapter(res).traverse(pred)


# -- naming an instance ------------------------------------------------------------------------
def check_instance(
    session: Session, access: Access, interaction: str, res_type: str, res_id: str, letters: str
) -> None:
    """403 naming the scopes when their queries refuse one of ``letters`` on ``res_type/res_id``, a
    row the request could see but for them; nothing when there is no such row (the interaction
    then answers as for any unknown id, and another institution's row stays unknown)."""
    scopes = access.scopes
    assert scopes is not None
    r = resources
    for letter in letters:
        pred = scopes.permits(r, res_type, letter)
        if pred is None:
            continue
        session.flush()
        query = select(r.c.rid).where(r.c.res_type == res_type, r.c.res_id == res_id, r.c.deleted.is_(False))
        seen = access.tenancy(r)
        query = query.where(not_(pred)) if seen is None else query.where(seen, not_(pred))
        if session.conn.execute(query.limit(1)).first() is not None:
            raise FhirError(
                "forbidden",
                f"The access token's scopes do not allow {interaction} of {res_type}/{res_id}: it matches none "
                f"of {scopes.naming(res_type, letter)}",
            )


# -- writing -----------------------------------------------------------------------------------
def install(repo: Repository) -> None:
    """Check every write made under a token with such scopes (the server's own writes, made
    without the request's access, are not the token's)."""
    repo.write_checks.append(_check_replaced)
    repo.after_any_write.append(_check_written)


def _check_replaced(
    session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
) -> None:
    """The row an update (``resource`` set) or a delete replaces must match a ``u`` or ``d`` scope."""
    scopes = getattr(session.access, "scopes", None)
    if scopes is None or current is None or current.deleted or current.res_type not in scopes.types:
        return
    _require(session, scopes, current, "u" if resource is not None else "d", "the stored version")


def _check_written(session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
    """The row a create or an update wrote must match a ``c`` or ``u`` scope (a refusal rolls the
    write back with the transaction)."""
    scopes = getattr(session.access, "scopes", None)
    if scopes is None or written.deleted or written.res_type not in scopes.types:
        return
    _require(session, scopes, written, "c" if previous is None or previous.deleted else "u", "it")


def _require(session: Session, scopes: ScopeFilter, version: StoredVersion, letter: str, what: str) -> None:
    pred = scopes.permits(resources, version.res_type, letter)
    if pred is None:
        return
    session.flush()  # a create's row and index rows are buffered until then
    found = session.conn.execute(select(resources.c.rid).where(resources.c.rid == version.rid, pred)).first()
    if found is None:
        raise FhirError(
            "forbidden",
            f"The access token's scopes do not allow {_VERB[letter]} of {version.res_type}/{version.res_id}: "
            f"{what} matches none of {scopes.naming(version.res_type, letter)}; nothing was changed",
        )
