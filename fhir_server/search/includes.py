"""``_include`` and ``_revinclude`` (http://hl7.org/fhir/R4/search.html#include).

Why one query per parameter and round, never per resource: the page's rids go into one
``IN`` list against the reference index, so including the patients of 100 Observations is one
indexed join, not 100 reads (the N+1 pattern that makes includes slow in other servers).
``:iterate`` repeats the same step on what the previous round added, until nothing new comes
or ``MAX_ROUNDS`` is reached.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, or_, select

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import idx_reference, resources

MAX_ROUNDS = 4


@dataclass(frozen=True)
class IncludeSpec:
    reverse: bool
    iterate: bool
    #: None for ``*`` (every reference parameter)
    source_type: str | None
    sps: tuple[int, ...]
    target_type: str | None


def parse_includes(registry: Any, params: list[tuple[str, str]]) -> list[IncludeSpec]:
    """The ``_include``/``_revinclude`` parameters of a search; a 400 names a bad one."""
    specs = []
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if name not in ("_include", "_revinclude"):
            continue
        if modifier not in ("", "iterate", "recurse"):  # recurse: the STU3 name of iterate
            raise FhirError("invalid-param", f"{key}: unknown modifier :{modifier}")
        specs.append(_spec(registry, name == "_revinclude", bool(modifier), raw, key))
    return specs


def _spec(registry: Any, reverse: bool, iterate: bool, raw: str, key: str) -> IncludeSpec:
    if raw == "*":
        return IncludeSpec(reverse, iterate, None, (), None)
    parts = raw.split(":")
    if len(parts) not in (2, 3):
        raise FhirError("invalid-param", f"{key}={raw}: expected [type]:[parameter] or [type]:[parameter]:[target]")
    source_type, code = parts[0], parts[1]
    target_type = parts[2] if len(parts) == 3 else None
    types = registry.resource_types
    if source_type not in types or (target_type is not None and target_type not in types):
        raise FhirError("invalid-param", f"{key}={raw}: unknown resource type")
    if code == "*":
        sps = tuple(p.sp for p in registry.params_for(source_type) if p.type == "reference" and p.indexed)
    else:
        param = registry.get(source_type, code)
        if param is None or param.type != "reference":
            raise FhirError("invalid-param", f"{key}={raw}: {code!r} is not a reference parameter of {source_type}")
        sps = registry.stored_sps(param)
    return IncludeSpec(reverse, iterate, source_type, sps, target_type)


def resolve(
    session: Session, specs: list[IncludeSpec], matches: list[StoredVersion], limit: int
) -> list[StoredVersion]:
    """Resources the specs bring in for ``matches`` (not those already matched), at most ``limit``."""
    if not specs or not matches:
        return []
    seen = {v.rid for v in matches}
    included: list[StoredVersion] = []
    frontier = matches
    for round_no in range(MAX_ROUNDS):
        active = [s for s in specs if round_no == 0 or s.iterate]
        rids: list[int] = []
        for spec in active:
            for rid in _step(session, spec, frontier):
                if rid not in seen:
                    seen.add(rid)
                    rids.append(rid)
        if not rids:
            break
        frontier = session.read_many(rids[: limit - len(included)])
        included.extend(frontier)
        if len(included) >= limit or not any(s.iterate for s in specs):
            break
    return included


def _step(session: Session, spec: IncludeSpec, frontier: list[StoredVersion]) -> list[int]:
    ref, other = idx_reference.alias(), resources.alias()
    if not spec.reverse:  # what the frontier's references point at
        query = (
            select(other.c.rid)
            .select_from(
                ref.join(other, and_(other.c.res_type == ref.c.target_type, other.c.res_id == ref.c.target_id))
            )
            .where(ref.c.rid.in_([v.rid for v in frontier]), other.c.deleted.is_(False))
        )
    else:  # what refers to the frontier
        by_type: dict[str, list[str]] = defaultdict(list)
        for v in frontier:
            by_type[v.res_type].append(v.res_id)
        targets = or_(*[and_(ref.c.target_type == t, ref.c.target_id.in_(ids)) for t, ids in by_type.items()])
        query = (
            select(other.c.rid)
            .select_from(ref.join(other, other.c.rid == ref.c.rid))
            .where(targets, other.c.deleted.is_(False))
        )
        if spec.source_type is not None:
            query = query.where(other.c.res_type == spec.source_type)
    visible = session.visible(other)
    if visible is not None:  # an include never brings in what the request may not see
        query = query.where(visible)
    if spec.sps:
        query = query.where(ref.c.sp.in_(spec.sps))
    if spec.target_type is not None:
        query = query.where((other if not spec.reverse else ref).c[_target_col(spec)] == spec.target_type)
    return list(dict.fromkeys(session.conn.execute(query.order_by(other.c.rid)).scalars()))


def _target_col(spec: IncludeSpec) -> str:
    return "target_type" if spec.reverse else "res_type"
