"""Which SMART permission each interaction needs, and the check against a token's scopes.

The table (SMART App Launch 2, scopes-and-launch-context.html, "v2 scope syntax"): create → c;
read, vread and an instance's history → r; update and patch → u; delete → d; searches and
type or system history → s. A conditional update, patch or delete also searches (s). An
operation names what it needs in its route (``Route.access``): ``$import-aecg`` creates an
Observation, a DocumentReference and a Binary; the terminology operations read their
CodeSystem, ValueSet or ConceptMap; ``$reindex`` needs every permission on every type.
Batch and transaction Bundles are checked entry by entry, by the same function, as each entry
runs (``rest/routes.py`` ``dispatch``).

Which scopes count: a client acting alone (client credentials) holds ``system/`` scopes; a
person's token (authorization code) holds ``user/`` and ``patient/`` scopes, and ``system/``
scopes in it grant nothing. A person is limited a second time by their account's roles
(security/roles.py): the route check here asks whether the roles allow the letters on some
category the type can have; the repository then filters reads to the categories the roles read
and checks the category of each row written (security/tenancy.py). Administrative operations
(``$reindex``) and the audit trail are the business of the roles that name them.

Scopes with a query (``system/Observation.rs?category=…``) grant their letters on the type here,
and limit the rows in the repository (security/granular.py); an instance the request names that
their queries do not allow is refused here too (:func:`check_rows`), with the same 403 naming
the scopes as a missing scope.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import FhirError
from fhir_server.security import categories as cat
from fhir_server.security import granular
from fhir_server.security.roles import Permissions, permissions

if TYPE_CHECKING:
    from fhir_server.context import RequestContext
    from fhir_server.rest.messages import FhirRequest
    from fhir_server.rest.routes import Route
    from fhir_server.security.tokens import Principal

#: interactions anyone may use without a token
PUBLIC = frozenset({"capabilities"})
_BY_INTERACTION = {
    "create": "c",
    "read": "r",
    "vread": "r",
    "history-instance": "r",
    "update": "u",
    "patch": "u",
    "delete": "d",
    "search-type": "s",
    "search-compartment": "s",
    "history-type": "s",
    "search-system": "s",
    "history-system": "s",
}
_SYSTEM_LEVEL = frozenset({"search-system", "history-system"})


def required(route: Route, req: FhirRequest) -> list[tuple[str, str]]:
    """(resource type or ``*``, letters) pairs the request needs."""
    if route.access is not None:
        return [(req.res_type or "*" if t == "{type}" else t, letters) for t, letters in route.access]
    letter = _BY_INTERACTION.get(route.interaction)
    if letter is None:  # transaction/batch: the entries are checked as they run
        return []
    res_type = "*" if route.interaction in _SYSTEM_LEVEL else (req.res_type or "*")
    if route.level == "type" and route.interaction in ("update", "patch", "delete"):
        letter += "s"  # conditional: the server searches first
    return [(res_type, letter)]


def _contexts(principal: Principal) -> tuple[str, ...]:
    """The scope contexts that grant a token anything: ``system/`` for a client; ``user/`` for a
    person, and ``patient/`` only with a patient in context (a launch, a choice on the picker, a
    resident's own) — ``patient/`` scopes are about the patient in context, and without one they
    would otherwise grant the person's whole institution."""
    if not principal.person:
        return ("system",)
    return ("user", "patient") if principal.patient else ("user",)


def may_read(principal: Principal | None, res_type: str) -> bool:
    """Whether the token's scopes allow reading ``res_type`` at all: what ``_include`` and
    ``_revinclude`` may add to a search, whose own check covered only the searched type."""
    if principal is None:
        return True
    return any(principal.scopes.allows(c, res_type, "r") for c in _contexts(principal))


def check(principal: Principal | None, route: Route, req: FhirRequest) -> None:
    """Raise 403 naming the scope (or role) that would allow the request; nothing when auth is off."""
    if principal is None or route.interaction in PUBLIC:
        return
    contexts = _contexts(principal)
    perms = permissions(principal.roles) if principal.person else None
    for res_type, letters in required(route, req):
        missing = _missing(principal, contexts, res_type, letters)
        if missing:
            raise FhirError(
                "forbidden",
                f"The access token's scopes ({principal.scopes or 'none'}) do not allow "
                f"{route.interaction} on {res_type}: it needs {contexts[0]}/{res_type}.{missing}",
            )
        if perms is not None:
            _check_roles(perms, route, res_type, letters)
    subscribed = _subscribed(route, req)
    if subscribed is None:
        return
    if _missing(principal, contexts, subscribed, "rs"):
        raise FhirError(
            "forbidden",
            f"The access token's scopes ({principal.scopes or 'none'}) do not allow reading {subscribed}, "
            f"which the Subscription is about: it needs {contexts[0]}/{subscribed}.rs",
        )
    if perms is not None and not all(perms.allows(subscribed, _categories(subscribed), c) for c in "rs"):
        raise FhirError(
            "forbidden",
            f"Your roles ({', '.join(perms.roles) or 'none'}) do not read {subscribed}, "
            "which the Subscription is about",
        )


def _missing(principal: Principal, contexts: tuple[str, ...], res_type: str, letters: str) -> str:
    """The letters of ``letters`` no scope of the token grants on ``res_type``."""
    return "".join(c for c in letters if not any(principal.scopes.allows(x, res_type, c) for x in contexts))


def _categories(res_type: str) -> int:
    """The data categories a resource of ``res_type`` may be of (every one for ``*``)."""
    return cat.ALL if res_type == "*" else cat.possible(res_type, res_type in _compartment_types())


def _subscribed(route: Route, req: FhirRequest) -> str | None:
    """The type a Subscription written is about: the writer must be able to read and search it,
    as it tells them of that type's resources (what they may see of them: notify/subscriptions.py)."""
    if req.res_type != "Subscription" or route.interaction not in ("create", "update"):
        return None
    from fhir_server.notify.subscriptions import subscribed_type

    return subscribed_type(req.resource)


def check_rows(ctx: RequestContext, route: Route, req: FhirRequest) -> None:
    """403 naming the scopes when the instance the request names is outside their queries (only
    for a token with scopes with a query: ``ctx.access.scopes``)."""
    if route.level != "instance" or not req.res_id or req.res_type not in ctx.access.scopes.types:  # type: ignore[union-attr]
        return
    for res_type, letters in required(route, req):
        if res_type == req.res_type:
            with ctx.session() as session:
                granular.check_instance(session, ctx.access, route.interaction, res_type, req.res_id, letters)


def _check_roles(perms: Permissions, route: Route, res_type: str, letters: str) -> None:
    if route.interaction in perms.operations:
        return
    if res_type == "AuditEvent":
        refused = [c for c in letters if not (perms.audit and c in "rs")]
    elif route.interaction in NAMED_OPERATIONS:
        refused = list(letters)  # an operation only a role that names it may run
    else:
        refused = [c for c in letters if not perms.allows(res_type, _categories(res_type), c)]
    if refused:
        raise FhirError(
            "forbidden",
            f"Your roles ({', '.join(perms.roles) or 'none'}) do not allow {route.interaction} on {res_type}",
        )


#: operations a person may run only with a role that names them (security/roles.py ``operations``):
#: administration, and sending data abroad (an institution's act, not a person's)
NAMED_OPERATIONS = frozenset({"$reindex", "$export-abroad"})


def _compartment_types() -> frozenset[str]:
    from fhir_server.search.registry import get_registry

    return get_registry().compartment_types("Patient")
