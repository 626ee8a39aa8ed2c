"""Custom SearchParameter resources: checked when written, registered in every worker process.

How it behaves (as HAPI FHIR and Smile CDR do):

- A ``SearchParameter`` resource with ``status = active`` is registered in the process-wide
  :class:`~fhir_server.search.registry.Registry`; ``draft``, ``retired`` and ``unknown`` ones are
  stored only, and retiring or deleting one unregisters it. From then on new writes are indexed
  with it; resources stored before need ``$reindex`` (search/reindex.py) to be found by it.
- An active one that cannot work is refused when written (422 with an OperationOutcome): no
  ``expression``, an expression that does not parse, that selects nothing of its base type or only
  values its search type cannot index, an unsupported type (composite, special), a ``code`` that
  a built-in R4 parameter or another custom one already uses on one of its base types, or a ``url``
  that another SearchParameter resource already has. A copy of an official R4 parameter (same
  url, code and type; e.g. from loading the specification's definitions) is stored and not
  registered again.
- The database is the source of truth. Workers are separate processes, so every write of a
  SearchParameter increments the ``search_parameters`` counter (table ``counters``) in the same
  transaction; each worker compares the counter with the one it loaded at most once per
  ``Settings.search_param_refresh`` seconds (on the next request) and reloads all active
  SearchParameters when it changed. The worker that took the write reloads right after the
  commit, so its next request already uses the parameter.

The reload is a diff: parameters whose definition did not change are left compiled.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import Connection, Engine, select

from fhir_server.errors import FhirError, Issue
from fhir_server.formats import json as fjson
from fhir_server.model import get_model
from fhir_server.search.expression import compile_expression, expression_for_type
from fhir_server.search.index import QUANTITY_TYPES
from fhir_server.search.registry import DEFINITION_FIELDS, NOT_DOMAIN_RESOURCES, Registry
from fhir_server.storage.jobs import bump_counter, read_counter
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import resources

log = logging.getLogger("fhir_server.search.custom")

COUNTER = "search_parameters"
INDEXABLE_TYPES = ("number", "date", "string", "token", "reference", "quantity", "uri")
_CODE_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,63}")

# FHIR types whose values each search type can index (search/index.py), to refuse an expression
# that can only select something else (e.g. a token parameter on ``extension('u')`` without ``.value``).
_STRINGS = frozenset(
    {"string", "code", "id", "markdown", "uri", "url", "canonical", "oid", "uuid", "base64Binary", "xhtml"}
)
_NUMBERS = frozenset({"integer", "decimal", "positiveInt", "unsignedInt", "integer64"})
_DATES = frozenset({"date", "dateTime", "instant", "Period", "Timing"})
_ACCEPTS: dict[str, frozenset[str]] = {
    "string": _STRINGS | {"HumanName", "Address"},
    "token": _STRINGS | _NUMBERS | {"boolean", "CodeableConcept", "Coding", "Identifier", "ContactPoint"},
    "date": _DATES,
    "number": _NUMBERS | {"Range"},
    "quantity": QUANTITY_TYPES | {"Money", "Range"},
    "reference": frozenset({"Reference", "canonical", "uri", "url", "Attachment", "Resource"}),
    "uri": frozenset({"uri", "url", "canonical", "oid", "uuid"}),
}


@dataclass(frozen=True)
class _Definition:
    res_id: str
    url: str
    code: str
    bases: tuple[str, ...]
    fingerprint: bytes  # the registered fields, serialised: unchanged → no recompilation
    resource: dict[str, Any]


class CustomSearchParameters:
    """Keeps ``registry``'s custom parameters equal to the active SearchParameters in the database."""

    def __init__(self, engine: Engine, registry: Registry, refresh_interval: float = 1.0) -> None:
        self.engine = engine
        self.registry = registry
        self.refresh_interval = refresh_interval
        self._generation: int | None = None
        self._next_check = 0.0
        self._reload_lock = threading.Lock()
        self._owners: dict[str, str] = {}  # url -> id of the SearchParameter resource registered
        self._fingerprints: dict[str, bytes] = {}

    # ------------------------------------------------------------------ writes

    def on_write(
        self, session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
    ) -> None:
        """Repository write hook for SearchParameter: check, bump the counter, reload after commit."""
        if resource is not None and resource.get("status") == "active":
            self.check(resource, res_id)
        if self._reload_after_commit not in session.after_commit:
            bump_counter(session.conn, COUNTER)
            session.after_commit.append(self._reload_after_commit)

    def check(self, resource: dict[str, Any], res_id: str | None = None) -> bool:
        """Raise a 422 ``FhirError`` if ``resource`` cannot be registered; False for a copy of a
        built-in R4 parameter (nothing to register), True otherwise."""
        problems, builtin = self._problems(resource, res_id, self._owners, against_custom=True)
        if problems:
            raise FhirError(
                "invalid",
                problems[0][1],
                issues=[Issue("error", "invalid", msg, [where]) for where, msg in problems],
            )
        return not builtin

    def _problems(
        self, sp: dict[str, Any], res_id: str | None, owners: dict[str, str], against_custom: bool
    ) -> tuple[list[tuple[str, str]], bool]:
        """(location, message) of each problem, and whether ``sp`` copies a built-in parameter.

        ``against_custom``: also refuse a code that a registered custom parameter (with another
        url) uses; a reload checks conflicts among the stored ones itself.
        """
        reg = self.registry
        out: list[tuple[str, str]] = []
        url, code, bases, ptype = sp.get("url"), sp.get("code"), sp.get("base"), sp.get("type")
        if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
            out.append(("SearchParameter.code", f"code {code!r} must be 1-64 letters, digits, '_' or '-'"))
        if not isinstance(bases, list) or not bases:
            out.append(("SearchParameter.base", "base is required"))
            bases = []
        known = reg.resource_types | {"Resource", "DomainResource"}
        for b in bases:
            if b not in known:
                out.append(("SearchParameter.base", f"base {b!r} is not a resource type"))
        if out:
            return out, False
        official = reg.by_url(url) if isinstance(url, str) and url not in reg.custom_urls() else None
        if official is not None:
            if official.get("code") == code and official.get("type") == ptype:
                return [], True  # a copy of a built-in R4 parameter
            return [("SearchParameter.url", f"url {url} is the built-in R4 parameter {official.get('code')!r}")], False
        if ptype not in INDEXABLE_TYPES:
            msg = f"type {ptype!r} is not supported for custom parameters (use {', '.join(INDEXABLE_TYPES)})"
            return [("SearchParameter.type", msg)], False
        owner = owners.get(url) if isinstance(url, str) else None
        if owner is not None and owner != res_id:
            msg = f"url {url} is already used by SearchParameter/{owner}; update that resource instead"
            return [("SearchParameter.url", msg)], False
        types = _types_of(reg, bases)
        for rt in sorted(types):
            p = reg.get(rt, code)
            if p is not None and p.url != url and (against_custom or not p.custom):
                kind = "custom parameter" if p.custom else "built-in R4 parameter"
                return [("SearchParameter.code", f"code {code!r} is already the {kind} {p.url} of {rt}")], False
        expression = sp.get("expression")
        if not isinstance(expression, str) or not expression.strip():
            return [("SearchParameter.expression", "expression is required (xpath is not supported)")], False
        # Resource/DomainResource bases: checking one type is enough (the expression starts the same).
        check_types = sorted(b for b in bases if b not in ("Resource", "DomainResource")) or ["Basic"]
        for rt in check_types:
            problem = _expression_problem(expression, rt, ptype)
            if problem:
                out.append(("SearchParameter.expression", problem))
        return out, False

    # ------------------------------------------------------------------ reloading

    def maybe_refresh(self) -> None:
        """Reload if another worker changed the SearchParameters (checked once per interval).

        A database error propagates: the request it runs for would meet it anyway (a lost
        connection is then the one 503 of rest/adapter.py); the next check is an interval later.
        """
        now = time.monotonic()
        if now < self._next_check:
            return
        self._next_check = now + self.refresh_interval
        self.refresh()

    def refresh(self, force: bool = False) -> bool:
        """Reload when the counter moved (or ``force``); True if the registry was brought up to date."""
        if not self._reload_lock.acquire(blocking=force):
            return False  # another thread/greenlet is reloading right now
        try:
            with self.engine.connect() as conn:
                generation = read_counter(conn, COUNTER)
                if generation == self._generation and not force:
                    return False
                self._reload(conn)
            self._generation = generation
            self._next_check = time.monotonic() + self.refresh_interval
            return True
        finally:
            self._reload_lock.release()

    def _reload_after_commit(self) -> None:
        try:
            self.refresh(force=True)
        except Exception:  # noqa: BLE001 - committed already; the periodic check will catch up
            self._next_check = 0.0
            log.exception("could not reload the search parameters after a change")

    def _reload(self, conn: Connection) -> None:
        rows = conn.execute(
            select(resources.c.res_id, resources.c.content)
            .where(resources.c.res_type == "SearchParameter", resources.c.deleted.is_(False))
            .order_by(resources.c.rid)
        ).all()
        wanted: dict[str, _Definition] = {}
        owners: dict[str, str] = {}
        taken: dict[tuple[str, str], str] = {}  # (type, code) -> url, for conflicts among custom ones
        for res_id, content in rows:
            sp = fjson.loads(content)
            if sp.get("status") != "active":
                continue
            # Checked against the built-ins; conflicts among the stored ones: the older one wins.
            try:
                problems, builtin = self._problems(sp, res_id, owners, against_custom=False)
            except Exception as exc:  # noqa: BLE001 - one odd resource must not stop the others
                problems, builtin = [("SearchParameter", f"{type(exc).__name__}: {exc}")], False
            if builtin:
                continue
            if problems:
                log.warning("SearchParameter/%s is not registered: %s", res_id, problems[0][1])
                continue
            url = sp["url"]
            types = _types_of(self.registry, sp["base"])
            clash = next((taken[(t, sp["code"])] for t in sorted(types) if (t, sp["code"]) in taken), None)
            if clash is not None:
                log.warning("SearchParameter/%s is not registered: code %r is taken by %s", res_id, sp["code"], clash)
                continue
            for t in types:
                taken[(t, sp["code"])] = url
            reduced = {k: sp[k] for k in DEFINITION_FIELDS if k in sp}
            fingerprint = orjson.dumps(reduced, option=orjson.OPT_SORT_KEYS)
            wanted[url] = _Definition(res_id, url, sp["code"], tuple(sp["base"]), fingerprint, sp)
            owners[url] = res_id
        registered = self.registry.custom_urls()
        for url in registered - wanted.keys():
            self.registry.remove(url)
            self._fingerprints.pop(url, None)
            log.info("search parameter %s unregistered", url)
        for url, d in wanted.items():
            if url in registered and self._fingerprints.get(url) == d.fingerprint:
                continue
            try:
                self.registry.add(d.resource)
            except ValueError as exc:
                log.warning("SearchParameter/%s is not registered: %s", d.res_id, exc)
                owners.pop(url, None)
                continue
            self._fingerprints[url] = d.fingerprint
            log.info("search parameter %s (%s on %s) registered", url, d.code, ",".join(d.bases))
        self._owners = owners


def _types_of(reg: Registry, bases: list[str] | tuple[str, ...]) -> set[str]:
    """Concrete resource types a parameter with these bases applies to."""
    out: set[str] = set()
    for b in bases:
        if b == "Resource":
            out |= reg.resource_types
        elif b == "DomainResource":
            out |= reg.resource_types - NOT_DOMAIN_RESOURCES
        else:
            out.add(b)
    return out


def _expression_problem(expression: str, res_type: str, ptype: str) -> str | None:
    """Why ``expression`` cannot index ``res_type`` resources as a ``ptype`` parameter, or None."""
    part = expression_for_type(expression, res_type)
    if part is None:
        return f"expression {expression!r} has no part for {res_type} (each part must start with a base type)"
    compiled = compile_expression(part, res_type)
    if not compiled.compiled:
        # fhirpathpy's parser accepts broken input and fails only when evaluated, so a custom
        # expression must be within what search/expression.py compiles (all R4 expressions are).
        return (
            f"expression {part!r} is not valid FHIRPath or uses FHIRPath this server does not index "
            f"({compiled.error}); supported: paths, unions, where(), exists(), extension(), as/ofType, first(), [n]"
        )
    if not compiled.value_types:
        return f"expression {part!r} selects no element of {res_type}"
    if compiled.value_types <= {"boolean"} and ptype == "token":
        return None
    accepted = _ACCEPTS[ptype] | (get_model().resource_types if ptype == "reference" else frozenset())
    if not compiled.value_types & accepted:
        found = ", ".join(sorted(compiled.value_types)[:5])
        return f"expression {part!r} selects {found}, which a {ptype} parameter cannot index"
    return None
