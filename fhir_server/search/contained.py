"""``_contained`` searches (http://hl7.org/fhir/R4/search.html#contained).

Why a registry view: contained resources are indexed under their container's ``rid`` with their
own type's parameters moved to other ``sp`` values (``search/index.py``, :func:`contained_sp`),
so searching them is the ordinary compiler reading parameters through this view. Chains leave
the view after the first hop, because what a contained resource refers to is a resource of its
own. Results are the containers (``_containedType=container``, the default).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.search.index import contained_param
from fhir_server.search.registry import Registry, SearchParam

MODES = ("false", "true", "both")


def contained_mode(params: list[tuple[str, str]]) -> str:
    """``_contained`` of a search (``false`` unless asked); a 400 for what is not supported."""
    mode = next((v for k, v in params if k == "_contained"), "false")
    if mode not in MODES:
        raise FhirError("invalid-param", f"_contained must be one of {', '.join(MODES)}, not {mode!r}")
    kind = next((v for k, v in params if k == "_containedType"), "container")
    if kind != "container":
        raise FhirError("invalid-param", f"_containedType={kind} is not supported: results are the container resources")
    return mode


class ContainedView:
    """The registry as seen by a search of contained resources."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry

    def __getattr__(self, name: str) -> Any:
        return getattr(self.registry, name)

    def get(self, resource_type: str, code: str) -> SearchParam | None:
        param = self.registry.get(resource_type, code)
        return contained_param(param) if param is not None else None

    def stored_sps(self, param: SearchParam) -> tuple[int, ...]:
        # the registry's own walk over a union's parts, reading the parts through this view
        return Registry.stored_sps(self, param)  # type: ignore[arg-type]

    def common(self, code: str) -> list[tuple[str, SearchParam]]:
        return [(t, contained_param(p)) for t, p in self.registry.common(code)]
