"""Which subscriptions cannot match a written resource, told without asking the database.

Why: every write transaction is matched against each active subscription of its resource types by
a search under the subscriber's access (notify/subscriptions.py), one query per subscription. Ten
institutions each subscribed to their own Tasks (``Task?owner=Organization/x``) made every Task
write ten queries, nine of which could only answer nothing (scripts/bench/consultations: matching
was 37 % of a worker's time). A filter on a token or a reference is checked here against the
values the search index would hold for the resource (the parameter's own extractor); when no
value can match, the search is skipped. Anything this does not fully understand — modifiers,
chains, other parameter types, values of unexpected shape — is left to the search: the answer
here is "certainly not" or "ask the database", never a match.
"""

from __future__ import annotations

from typing import Any

from fhir_server.search.registry import Registry

#: a bare code's system, which this module does not know
ANY_SYSTEM = "*"


def may_match(
    registry: Registry, res_type: str, filters: tuple[tuple[str, str], ...], resource: dict[str, Any]
) -> bool:
    """False only when some filter certainly excludes ``resource``."""
    for name, value in filters:
        if ":" in name or "." in name or name.startswith("_"):
            continue
        param = registry.get(res_type, name)
        if param is None or param.type not in ("token", "reference"):
            continue
        wanted = [w for w in value.split(",") if w]
        if not wanted:
            continue
        items = [item[0] if isinstance(item, tuple) else item for item in param.extract(resource)]  # (value, type)
        found = _references(items) if param.type == "reference" else _tokens(items)
        if found is None:
            continue  # values of a shape not judged here
        if not any(_matches(param.type, w, found) for w in wanted):
            return False
    return True


def _references(items: list[Any]) -> set[str] | None:
    refs = set()
    for item in items:
        ref = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(ref, str):
            return None
        refs.add(ref.split("/_history")[0])
    return refs


def _tokens(items: list[Any]) -> set[tuple[str | None, str]] | None:
    tokens: set[tuple[str | None, str]] = set()
    for item in items:
        if isinstance(item, str):
            tokens.add((ANY_SYSTEM, item.lower()))  # a code: the index may give it its value set's system
        elif isinstance(item, dict) and ("coding" in item or "text" in item) and "code" not in item:
            for coding in item.get("coding") or ():
                if not isinstance(coding, dict) or not isinstance(coding.get("code"), str):
                    return None
                tokens.add((coding.get("system"), coding["code"].lower()))
        elif isinstance(item, dict) and isinstance(item.get("code"), str) and set(item) <= {
            "system", "code", "display", "version", "userSelected", "id", "extension",
        }:  # fmt: skip
            tokens.add((item.get("system"), item["code"].lower()))
        else:
            return None
    return tokens


def _matches(kind: str, wanted: str, found: set[Any]) -> bool:
    if "://" in wanted and kind == "reference":
        return True  # an absolute reference: resolved against the server's base by the search
    if kind == "reference":
        if "/" in wanted:
            return any(ref == wanted or ref.endswith(f"/{wanted}") for ref in found)
        return any(ref.rsplit("/", 1)[-1] == wanted for ref in found)
    system, bar, code = wanted.rpartition("|")
    if not bar:
        return any(c == wanted.lower() for _s, c in found)
    if not code:
        return any(s in (system, ANY_SYSTEM) for s, _c in found)
    return any(c == code.lower() and (s in (system, ANY_SYSTEM) or (system == "" and s is None)) for s, c in found)
