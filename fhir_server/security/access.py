"""Which SMART permission each interaction needs, and the check against a token's scopes.

The table (SMART App Launch 2, scopes-and-launch-context.html, "v2 scope syntax"): create → c;
read, vread and an instance's history → r; update and patch → u; delete → d; searches and
type or system history → s. A conditional update, patch or delete also searches (s). An
operation names what it needs in its route (``Route.access``): ``$import-aecg`` creates an
Observation, a DocumentReference and a Binary; the terminology operations read their
CodeSystem, ValueSet or ConceptMap; ``$reindex`` needs every permission on every type.
Batch and transaction Bundles are checked entry by entry, by the same function, as each entry
runs (``rest/routes.py`` ``dispatch``).

Why ``system`` scopes only for now: tokens are issued by the client-credentials grant, which
grants system scopes alone; ``user`` and ``patient`` scopes need the tenant and compartment
filters in the repository (issue 5, items 3 and 4) before they can be honoured, so a token
carrying only those is refused rather than treated as wider than it is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fhir_server.errors import FhirError

if TYPE_CHECKING:
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


def check(principal: Principal | None, route: Route, req: FhirRequest) -> None:
    """Raise 403 naming the scope that would allow the request; nothing when auth is off."""
    if principal is None or route.interaction in PUBLIC:
        return
    for res_type, letters in required(route, req):
        missing = [c for c in letters if not principal.scopes.allows("system", res_type, c)]
        if missing:
            raise FhirError(
                "forbidden",
                f"The access token's scopes ({principal.scopes or 'none'}) do not allow "
                f"{route.interaction} on {res_type}: it needs system/{res_type}.{''.join(missing)}",
            )
