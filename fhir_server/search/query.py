"""Search parameters of a request compiled into SQL predicates over the typed index tables.

Why predicates are ``EXISTS`` sub-queries on ``rid``: each parameter is answered by the one
index table of its type, with hashed token keys and normalised strings, so every predicate is
an index range scan; AND is repetition of predicates, OR (comma) is OR inside one predicate.
Chains and ``_has`` are the same predicates one join away: a chain asks about the resource a
reference points at, ``_has`` about the resources pointing here, each scope an alias of
``resources``. Semantics follow http://hl7.org/fhir/R4/search.html; docs/conformance.md lists
what is supported.
"""

from __future__ import annotations

import math
import re
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, false, func, not_, or_, select

from fhir_server.errors import FhirError
from fhir_server.search import composite, hashing, ucum
from fhir_server.search.contained import ContainedView
from fhir_server.search.index import canonical_sp, contained_sp, normalize_string, text_sp
from fhir_server.search.index_match import IndexMatch
from fhir_server.storage.schema import (
    idx_date,
    idx_number,
    idx_position,
    idx_quantity,
    idx_reference,
    idx_string,
    idx_token,
    idx_uri,
    resources,
)
from fhir_server.terminology import code_closure, codes_in_valueset
from fhir_server.util.fhirdate import parse_range as date_range

#: Parameters that shape the result rather than select resources.
RESULT_PARAMS = frozenset(
    {
        "_count",
        "_sort",
        "_total",
        "_summary",
        "_elements",
        "_cursor",
        "_format",
        "_pretty",
        "_include",
        "_revinclude",
        "_contained",
        "_containedType",
    }
)
#: Parameters recognised but not yet implemented: refused rather than silently ignored.
UNSUPPORTED_PARAMS = frozenset({"_content", "_query", "_filter"})
_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_NUMBER_RE = re.compile(r"[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?")
_ESCAPED_SPLIT = re.compile(r"(?<!\\),")

r = resources


@dataclass
class CompiledQuery:
    res_type: str | None
    filters: list[ColumnElement[bool]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def split_values(raw: str) -> list[str]:
    """Comma-separated OR values, honouring ``\\,`` escapes."""
    return [v.replace("\\,", ",") for v in _ESCAPED_SPLIT.split(raw)]


def _escape(value: str) -> str:
    """The inverse of :func:`unescape` (commas are escaped where values are joined)."""
    return value.replace("\\", "\\\\").replace("|", "\\|").replace("$", "\\$")


def unescape(value: str) -> str:
    return value.replace("\\$", "$").replace("\\|", "|").replace("\\\\", "\\")


def split_token(value: str) -> tuple[str | None, str | None, bool]:
    """``system|code`` → (system, code, has_bar); a ``\\|`` is a literal bar."""
    parts = re.split(r"(?<!\\)\|", value, maxsplit=1)
    if len(parts) == 1:
        return None, unescape(parts[0]), False
    system, code = parts
    return (unescape(system) or None), (unescape(code) or None), True


def _prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in _PREFIXES and not value[2].isalpha():
        return value[:2], value[2:]
    return "eq", value


def _exists(res: Any, table: Any, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
    """Some row of ``table`` for the resource ``res`` meets ``conds``."""
    pred = IndexMatch(res, table, conds)
    pred.index_lookup = (table, conds)  # type: ignore[attr-defined]  # see index_lookup()
    return pred


def index_lookup(pred: Any) -> tuple[Any, tuple[Any, ...]] | None:
    """``(table, conditions)`` when ``pred`` is one index-table lookup, else None.

    Index rows exist only for live resources, and every ``sp`` (hence every hash) names the
    resource type, so such a predicate alone can be counted on its index table without reading
    ``resources`` (3x faster for ``_summary=count`` on a common code).
    """
    return getattr(pred, "index_lookup", None)


# -- per type ------------------------------------------------------------------------------
def _range_predicate(
    prefix: str, lo_col: Any, hi_col: Any, lo: Any, hi: Any, approx: Any = None
) -> ColumnElement[bool]:
    """FHIR prefix semantics between the indexed range [lo_col, hi_col] and the search range."""
    contained = and_(lo_col >= lo, hi_col <= hi)
    if prefix == "eq":
        return contained
    if prefix == "ne":
        return not_(contained)
    if prefix == "gt":
        return hi_col > hi
    if prefix == "lt":
        return lo_col < lo
    if prefix == "ge":
        return or_(hi_col > hi, contained)
    if prefix == "le":
        return or_(lo_col < lo, contained)
    if prefix == "sa":
        return lo_col > hi
    if prefix == "eb":
        return hi_col < lo
    if prefix == "ap":
        delta = approx if approx is not None else 0
        return and_(hi_col >= lo - delta, lo_col <= hi + delta)
    raise AssertionError(prefix)


def _date_search(name: str, raw: str, lo_col: Any, hi_col: Any) -> ColumnElement[bool]:
    """Prefix semantics of a date search value against the indexed range [lo_col, hi_col].

    ``ap`` widens the value by 10 % of its distance from now, as the specification suggests.
    """
    prefix, value = _prefix(raw)
    try:
        lo, hi = date_range(value)
    except ValueError:
        raise FhirError("invalid-param", f"Search parameter {name}: {value!r} is not a valid date") from None
    approx = int(abs(time.time() * 1_000_000 - lo) * 0.1) if prefix == "ap" else None
    return _range_predicate(prefix, lo_col, hi_col, lo, hi, approx)


def date_predicate(res: Any, sp: int, name: str, raw: str) -> ColumnElement[bool]:
    return _exists(res, idx_date, idx_date.c.sp == sp, _date_search(name, raw, idx_date.c.lo, idx_date.c.hi))


def _number_range(name: str, value: str) -> tuple[float, float, float]:
    if not _NUMBER_RE.fullmatch(value):
        raise FhirError("invalid-param", f"Search parameter {name}: {value!r} is not a number")
    number = float(value)
    mantissa = value.lower().split("e")[0]
    decimals = len(mantissa.split(".")[1]) if "." in mantissa else 0
    exponent = int(value.lower().split("e")[1]) if "e" in value.lower() else 0
    half = 0.5 * 10 ** (exponent - decimals)
    return number, number - half, number + half


def _value_predicate(prefix: str, col: Any, number: float, lo: float, hi: float) -> ColumnElement[bool]:
    return {
        "eq": and_(col >= lo, col < hi),
        "ne": or_(col < lo, col >= hi),
        "gt": col > number,
        "lt": col < number,
        "ge": col >= number,
        "le": col <= number,
        "sa": col > number,
        "eb": col < number,
        "ap": and_(col >= number - abs(number) * 0.1, col <= number + abs(number) * 0.1),
    }[prefix]


def number_predicate(res: Any, sp: int, name: str, raw: str) -> ColumnElement[bool]:
    prefix, value = _prefix(raw)
    number, lo, hi = _number_range(name, value)
    return _exists(res, idx_number, idx_number.c.sp == sp, _value_predicate(prefix, idx_number.c.value, number, lo, hi))


def quantity_predicate(res: Any, sp: int, name: str, raw: str, canonical: bool = True) -> ColumnElement[bool]:
    prefix, rest = _prefix(raw)
    parts = re.split(r"(?<!\\)\|", rest)
    if len(parts) not in (1, 3):
        raise FhirError("invalid-param", f"Search parameter {name}: {raw!r} is not [prefix]number|system|code")
    number, lo, hi = _number_range(name, parts[0])
    system, code = (unescape(parts[1]), unescape(parts[2])) if len(parts) == 3 else ("", "")
    if canonical and system == ucum.UCUM_SYSTEM and code:
        value, bounds = ucum.canonical(number, code), ucum.canonical_range(lo, hi, code)
        if value is not None and bounds is not None:  # compare in canonical units: 5.4 mg = 0.0054 g
            q = idx_quantity
            value_pred = _value_predicate(prefix, q.c.value, value[0], bounds[0], bounds[1])
            return _exists(res, q, q.c.sp == canonical_sp(sp), q.c.code == value[1], value_pred)
    conds = [idx_quantity.c.sp == sp, _value_predicate(prefix, idx_quantity.c.value, number, lo, hi)]
    if system:
        conds.append(idx_quantity.c.system == system)
    if code:
        conds.append(
            or_(idx_quantity.c.code == code, idx_quantity.c.unit == code) if not system else idx_quantity.c.code == code
        )
    return _exists(res, idx_quantity, *conds)


EARTH_RADIUS_M = 6_371_008.8
#: ``near`` without a distance: the specification leaves "near" to the server
NEAR_DEFAULT_M = 10_000.0


def near_predicate(res: Any, sp: int, name: str, raw: str) -> ColumnElement[bool]:
    """``near=lat|lng|distance|units`` (units UCUM, default km): great-circle distance on a sphere,
    after an indexed bounding-box range on ``idx_position``."""
    parts = raw.split("|")
    try:
        lat, lng = float(parts[0]), float(parts[1])
        distance = float(parts[2]) if len(parts) > 2 and parts[2] else None
    except (ValueError, IndexError):
        raise FhirError("invalid-param", f"{name}={raw!r}: expected latitude|longitude|distance|units") from None
    if not (-90 <= lat <= 90 and -180 <= lng <= 180) or len(parts) > 4 or (distance is not None and distance < 0):
        raise FhirError("invalid-param", f"{name}={raw!r}: expected latitude|longitude|distance|units")
    meters = NEAR_DEFAULT_M
    if distance is not None:
        converted = ucum.canonical(distance, parts[3] if len(parts) > 3 and parts[3] else "km")
        if converted is None or converted[1] != "m":
            raise FhirError("invalid-param", f"{name}={raw!r}: the distance unit must be a UCUM length (km, m, [mi_i])")
        meters = converted[0]
    pos = idx_position
    dlat = math.degrees(meters / EARTH_RADIUS_M)
    box = [pos.c.sp == sp, pos.c.lat.between(lat - dlat, lat + dlat)]
    cos_lat = math.cos(math.radians(min(abs(lat) + dlat, 90.0)))
    dlng = math.degrees(meters / EARTH_RADIUS_M) / cos_lat if cos_lat > 1e-9 else 360.0
    if dlng < 180:
        lo, hi = lng - dlng, lng + dlng
        if lo < -180:
            box.append(or_(pos.c.lng >= lo + 360, pos.c.lng <= hi))
        elif hi > 180:
            box.append(or_(pos.c.lng >= lo, pos.c.lng <= hi - 360))
        else:
            box.append(pos.c.lng.between(lo, hi))
    # haversine: sin²(Δφ/2) + cos φ1 cos φ2 sin²(Δλ/2) <= sin²(d / 2R)
    half_dlat = func.sin(func.radians(pos.c.lat - lat) / 2)
    half_dlng = func.sin(func.radians(pos.c.lng - lng) / 2)
    a = half_dlat * half_dlat + math.cos(math.radians(lat)) * func.cos(func.radians(pos.c.lat)) * half_dlng * half_dlng
    limit = math.sin(min(meters / (2 * EARTH_RADIUS_M), math.pi / 2)) ** 2
    return _exists(res, pos, *box, a <= limit)


def string_predicate(res: Any, sp: int, modifier: str | None, value: str) -> ColumnElement[bool]:
    value = unescape(value)
    norm = normalize_string(value)
    if modifier == "exact":  # the normalised value narrows it down on the index first
        return _exists(res, idx_string, idx_string.c.sp == sp, idx_string.c.value == norm, idx_string.c.exact == value)
    pattern = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if modifier == "contains":
        return _exists(res, idx_string, idx_string.c.sp == sp, idx_string.c.value.like(f"%{pattern}%", escape="\\"))
    return _exists(res, idx_string, idx_string.c.sp == sp, idx_string.c.value.like(f"{pattern}%", escape="\\"))


def token_predicate(res: Any, sp: int, name: str, modifier: str | None, value: str) -> ColumnElement[bool]:
    if modifier == "text":
        norm = normalize_string(unescape(value)).replace("%", "\\%").replace("_", "\\_")
        return _exists(res, idx_token, idx_token.c.sp == sp, idx_token.c.text.like(f"{norm}%", escape="\\"))
    system, code, has_bar = split_token(value)
    if not has_bar:
        cond = idx_token.c.h_code == hashing.h_code(sp, code)
    elif code is None and system is not None:
        cond = idx_token.c.h_sys == hashing.h_sys(sp, system)
    elif code is None:
        raise FhirError("invalid-param", f"Search parameter {name}: {value!r} has neither system nor code")
    else:
        cond = idx_token.c.h_sys_code == hashing.h_sys_code(sp, system, code)
    return _exists(res, idx_token, cond)


def reference_predicate(res: Any, sp: int, name: str, modifier: str | None, value: str) -> ColumnElement[bool]:
    from fhir_server.model import get_model

    value = unescape(value)
    conds: list[ColumnElement[bool]] = [idx_reference.c.sp == sp]
    if modifier and modifier not in get_model().resource_types:
        raise FhirError("invalid-param", f"Modifier :{modifier} is not supported on reference parameter {name}")
    if value.startswith(("http://", "https://", "urn:")):
        parts = value.rstrip("/").split("/")
        if len(parts) >= 2 and parts[-2] in get_model().resource_types:
            conds.append(
                or_(
                    idx_reference.c.url == value,
                    and_(idx_reference.c.target_type == parts[-2], idx_reference.c.target_id == parts[-1]),
                )
            )
        else:
            conds.append(idx_reference.c.url == value)
        return _exists(res, idx_reference, *conds)
    segments = value.split("/")
    if len(segments) >= 2:
        res_type, res_id = segments[-2], segments[-1]
        if len(segments) >= 4 and segments[-2] == "_history":
            res_type, res_id = segments[-4], segments[-3]
        conds += [idx_reference.c.target_type == res_type, idx_reference.c.target_id == res_id]
    else:
        conds.append(idx_reference.c.target_id == value)
        if modifier:
            conds.append(idx_reference.c.target_type == modifier)
    return _exists(res, idx_reference, *conds)


def uri_predicate(res: Any, sp: int, modifier: str | None, value: str) -> ColumnElement[bool]:
    value = unescape(value)
    if modifier == "below":
        pattern = value.replace("%", "\\%").replace("_", "\\_")
        return _exists(res, idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri.like(f"{pattern}%", escape="\\"))
    if modifier == "above":
        prefixes = []
        parts = value.split("/")
        for i in range(3, len(parts) + 1):
            prefixes.append("/".join(parts[:i]))
        return _exists(res, idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri.in_(prefixes or [value]))
    return _exists(res, idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri == value)


# -- the compiler --------------------------------------------------------------------------
_MODIFIERS = {
    "string": {None, "exact", "contains", "missing"},
    "token": {None, "text", "not", "missing", "of-type", "in", "not-in", "above", "below"},
    "reference": None,  # any resource type, plus missing and identifier
    "date": {None, "missing"},
    "number": {None, "missing"},
    "quantity": {None, "missing"},
    "uri": {None, "below", "above", "missing"},
    "composite": {None},
    "special": {None},  # near
}
_TABLE_OF = {
    "string": idx_string,
    "token": idx_token,
    "reference": idx_reference,
    "date": idx_date,
    "number": idx_number,
    "quantity": idx_quantity,
    "uri": idx_uri,
}
#: Parameters about the resource row itself, which a ``_contained`` search cannot apply to.
_ABOUT_THE_CONTAINER = ("_id", "_lastUpdated", "_list", "_text")
#: Deepest chain or ``_has`` nesting accepted (each level is one more join).
MAX_DEPTH = 4


def supported_modifiers(registry: Any, param: Any) -> tuple[str, ...] | None:
    """Modifiers this server honours on ``param`` (``()`` for none), or None if it cannot search
    by it at all: the one truth for the CapabilityStatement and docs/search-parameters.md."""
    if param.code == "_text":  # special-cased by the compiler (the narrative row)
        return ()
    if param.union_of:
        parts = [supported_modifiers(registry, registry.get(param.resource_type, c)) for c in param.union_of]
        if any(p is None for p in parts):
            return None
        return tuple(sorted(set.intersection(*(set(p) for p in parts))))  # type: ignore[arg-type]
    if not param.indexed or param.type not in _MODIFIERS:
        return None
    if param.type == "composite":
        return () if composite.resolve(param, registry) is not None else None
    if param.type == "reference":
        return ("missing", "identifier", "[type]")
    mods = {m for m in _MODIFIERS[param.type] if m is not None}
    if "Identifier" not in param.value_types:
        mods.discard("of-type")
    return tuple(sorted(mods))


def compile_query(
    registry: Any,
    res_type: str | None,
    params: list[tuple[str, str]],
    lenient: bool = False,
    session: Any = None,
    search: Any = None,
    contained: bool = False,
) -> CompiledQuery:
    """Filters for ``params`` (AND of repetitions, OR of comma values).

    Unknown parameters are a 400, or a warning when ``lenient`` (``Prefer: handling=lenient``).
    ``session`` and ``search`` let ``:in``/``:below`` read stored terminology; ``contained``
    compiles them for the resources contained in others (``_contained``).
    """
    query = CompiledQuery(res_type)
    compiler = _Compiler(registry, session, search, contained)
    for key, raw in params:
        name = key.partition(":")[0]
        if name in RESULT_PARAMS:
            continue
        if name in UNSUPPORTED_PARAMS:
            _reject(query, lenient, f"Search parameter {key} is not supported yet")
            continue
        if raw == "":
            continue  # empty values are ignored (search.html#2.1.1.1)
        pred = compiler.key(r, res_type, key, raw, 0)
        if pred is None:
            _reject(query, lenient, f"Unknown search parameter {key!r} for {res_type or 'all types'}")
            continue
        query.filters.append(pred)
    return query


def _reject(query: CompiledQuery, lenient: bool, message: str) -> None:
    if not lenient:
        raise FhirError("invalid-param", message)
    query.warnings.append(message)


class _Compiler:
    """Compiles one parameter against a scope: ``res`` is the ``resources`` row (or an alias of
    it, inside a chain or ``_has``) whose ``rid`` the predicate is about."""

    def __init__(self, registry: Any, session: Any = None, search: Any = None, contained: bool = False) -> None:
        #: with ``contained``: the parameters of contained resources (search/contained.py)
        self.contained = contained
        self.registry = ContainedView(registry) if contained else registry
        self.plain_registry = registry
        #: the open session and search engine, for terminology modifiers (stored ValueSets)
        self.session = session
        self.search = search

    def standalone(self) -> _Compiler:
        """The compiler for what a reference points at (never a contained resource)."""
        if not self.contained:
            return self
        return _Compiler(self.plain_registry, self.session, self.search)

    def key(self, res: Any, res_type: str | None, key: str, raw: str, depth: int) -> ColumnElement[bool] | None:
        if depth > MAX_DEPTH:
            raise FhirError("invalid-param", f"{key}: chains and _has nest at most {MAX_DEPTH} deep")
        if self.contained and (key.startswith("_has:") or key.partition(":")[0] in _ABOUT_THE_CONTAINER):
            raise FhirError("invalid-param", f"{key} cannot be used with _contained (it is about the container)")
        if key.startswith("_has:"):
            return self._has(res, res_type, key, raw, depth)
        head, dot, rest = key.partition(".")
        name, _, modifier = head.partition(":")
        if dot:
            return self._chain(res, res_type, name, modifier or None, rest, raw, key, depth)
        return self._param(res, res_type, name, modifier or None, raw, key)

    # -- chains: subject:Patient.name=x (search.html#chaining) --------------------------------
    def _chain(
        self, res: Any, res_type: str | None, name: str, modifier: str | None, rest: str, raw: str, key: str, depth: int
    ) -> ColumnElement[bool]:
        if res_type is None:
            raise FhirError("invalid-param", f"Chained parameter {key} needs a resource type to search")
        param = self.registry.get(res_type, name)
        if param is None or param.type != "reference":
            raise FhirError("invalid-param", f"{key}: {name!r} is not a reference parameter of {res_type}")
        types = self.registry.resource_types
        if modifier is not None and modifier not in types:
            raise FhirError("invalid-param", f"{key}: :{modifier} is not a resource type")
        candidates = [modifier] if modifier else sorted(t for t in (param.targets or types) if t in types)
        ref = idx_reference.alias()
        per_type = []
        for target_type in candidates:
            if not modifier and not self._defines(target_type, rest):
                continue  # subject.name: only the target types that have a "name"
            target = resources.alias()
            pred = self.standalone().key(target, target_type, rest, raw, depth + 1)
            if pred is not None:
                # the matching targets' ids, uncorrelated: the planner can find the few targets
                # first and go to their referrers by the reference index
                ids = select(target.c.res_id).where(
                    target.c.res_type == target_type, target.c.deleted.is_(False), pred, *self._visible(target)
                )
                per_type.append(and_(ref.c.target_type == target_type, ref.c.target_id.in_(ids)))
        if not per_type:
            raise FhirError("invalid-param", f"{key}: no target type of {res_type}.{name} has a parameter {rest!r}")
        return exists(
            select(1)
            .select_from(ref)
            .where(ref.c.rid == res.c.rid, ref.c.sp.in_(self.registry.stored_sps(param)), or_(*per_type))
            .correlate(res)
        )

    def _defines(self, res_type: str, key: str) -> bool:
        name = key.split(".", 1)[0].partition(":")[0]
        known = name in ("_has", "_id", "_lastUpdated", "_list", "_text")
        return known or self.plain_registry.get(res_type, name) is not None

    # -- reverse chains: _has:Observation:subject:code=x (search.html#has) ----------------------
    def _has(self, res: Any, res_type: str | None, key: str, raw: str, depth: int) -> ColumnElement[bool]:
        parts = key.split(":", 3)
        if len(parts) < 4 or not all(parts[1:]):
            raise FhirError("invalid-param", f"{key}: expected _has:[type]:[reference parameter]:[parameter]")
        _, source_type, ref_name, rest = parts
        if source_type not in self.registry.resource_types:
            raise FhirError("invalid-param", f"{key}: {source_type!r} is not a resource type")
        param = self.registry.get(source_type, ref_name)
        if param is None or param.type != "reference":
            raise FhirError("invalid-param", f"{key}: {ref_name!r} is not a reference parameter of {source_type}")
        if res_type is not None and param.targets and res_type not in param.targets:
            raise FhirError("invalid-param", f"{key}: {source_type}.{ref_name} cannot refer to {res_type}")
        pred = self.key(source := resources.alias(), source_type, rest, raw, depth + 1)
        if pred is None:
            raise FhirError("invalid-param", f"{key}: {rest!r} is not a search parameter of {source_type}")
        ref = idx_reference.alias()
        target_type = res.c.res_type if res_type is None else res_type
        return exists(
            select(1)
            .select_from(ref.join(source, source.c.rid == ref.c.rid))
            .where(
                ref.c.target_id == res.c.res_id,
                ref.c.target_type == target_type,
                ref.c.sp.in_(self.registry.stored_sps(param)),
                source.c.deleted.is_(False),
                pred,
                *self._visible(source),
            )
            .correlate(res)
        )

    def _visible(self, res: Any) -> list[ColumnElement[bool]]:
        """The access predicate on a row a chain, ``_has`` or ``_list`` looks at: a condition
        about another institution's rows must not be answerable either (security/tenancy.py)."""
        pred = self.session.visible(res) if self.session is not None else None
        return [] if pred is None else [pred]

    # -- plain parameters ---------------------------------------------------------------------
    def _param(
        self, res: Any, res_type: str | None, name: str, modifier: str | None, raw: str, key: str
    ) -> ColumnElement[bool] | None:
        if name in ("_id", "_lastUpdated", "_list") and modifier not in ((None, "not") if name == "_id" else (None,)):
            raise FhirError("invalid-param", f"Modifier :{modifier} is not supported on {name}")
        if name == "_id":
            ids = [unescape(v) for v in split_values(raw)]
            pred = res.c.res_id.in_(ids)
            return not_(pred) if modifier == "not" else pred
        if name == "_lastUpdated":
            return or_(*[_date_search(key, v, res.c.updated_us, res.c.updated_us) for v in split_values(raw)])
        if name == "_list":
            return self._list(res, res_type, raw)
        if name == "_text":
            if modifier is not None:
                raise FhirError("invalid-param", f"Modifier :{modifier} is not supported on _text")
            return or_(*[self._narrative(res, res_type, v) for v in split_values(raw)])
        if res_type is None:
            return self._all_types(res, name, modifier, raw, key)
        param = self.registry.get(res_type, name)
        if param is None:
            return None
        return self._typed(res, param, modifier, raw, key)

    def _all_types(self, res: Any, name: str, modifier: str | None, raw: str, key: str) -> ColumnElement[bool] | None:
        """System-level search: a parameter defined on Resource applies to every type."""
        preds = []
        for res_type, param in self.registry.common(name):
            preds.append(and_(res.c.res_type == res_type, self._typed(res, param, modifier, raw, key)))
        return or_(*preds) if preds else None

    def _typed(self, res: Any, param: Any, modifier: str | None, raw: str, key: str) -> ColumnElement[bool]:
        if param.union_of:  # e.g. combo-code: code OR component-code (registry._unions)
            parts = [
                self._typed(res, self.registry.get(param.resource_type, c), modifier, raw, key) for c in param.union_of
            ]
            negative = modifier in ("not", "not-in") or (modifier == "missing" and raw == "true")
            return and_(*parts) if negative else or_(*parts)
        allowed = _MODIFIERS.get(param.type)
        if param.type not in _MODIFIERS:
            raise FhirError("invalid-param", f"Search parameter {key}: {param.type} parameters are not supported")
        if allowed is not None and modifier not in allowed:
            raise FhirError(
                "invalid-param", f"Modifier :{modifier} is not supported on {param.type} parameter {param.code}"
            )
        sp = param.sp
        if param.type == "composite":
            return self._composite(res, param, raw, key)
        raw = self._blinded(param, modifier, raw)
        if modifier == "missing":
            if raw not in ("true", "false"):
                raise FhirError("invalid-param", f"{key} must be true or false")
            table = _TABLE_OF[param.type]
            has = _exists(res, table, table.c.sp == sp)
            return not_(has) if raw == "true" else has
        if modifier == "not" and param.type == "token":
            return not_(or_(*[token_predicate(res, sp, key, None, v) for v in split_values(raw)]))
        if modifier in ("in", "not-in", "above", "below") and param.type == "token":
            matched = or_(*[self._terminology(res, sp, key, modifier, v) for v in split_values(raw)])
            return not_(matched) if modifier == "not-in" else matched
        if modifier == "of-type":
            of_type = hashing.modifier_sp(param.resource_type, param.code, "of-type")
            return or_(
                *[_exists(res, idx_token, idx_token.c.h_code == hashing.h_code(of_type, v)) for v in split_values(raw)]
            )
        if modifier == "identifier" and param.type == "reference":
            ident_sp = hashing.modifier_sp(param.resource_type, param.code, "identifier")
            return or_(*[token_predicate(res, ident_sp, key, None, v) for v in split_values(raw)])
        return or_(*[_value(res, param.type, sp, key, modifier, v) for v in split_values(raw)])

    def _blinded(self, param: Any, modifier: str | None, raw: str) -> str:
        """The values of a parameter over an encrypted field (a person's identifier or contact
        point) as the index holds them: blind indexes (security/fields.py); exact match only."""
        fields = self.session.repo.fields if self.session is not None else None
        path = fields.blinded_path(param.resource_type, param.code) if fields is not None else None
        if path is None or modifier not in (None, "not", "of-type"):
            return raw
        out = []
        for value in split_values(raw):
            if modifier == "of-type":  # system|code|value: the value is the identifier's
                parts = re.split(r"(?<!\\)\|", value)
                if len(parts) == 3 and parts[2]:
                    parts[2] = fields.blind(param.resource_type, path, unescape(parts[2]))
                out.append("|".join(parts))
                continue
            system, code, has_bar = split_token(value)
            if code is None:
                out.append(value)
                continue
            blind = fields.blind(param.resource_type, path, code)
            out.append(f"{_escape(system or '')}|{blind}" if has_bar else blind)
        return ",".join(v.replace(",", "\\,") for v in out)

    def _composite(self, res: Any, param: Any, raw: str, key: str) -> ColumnElement[bool]:
        comp = composite.resolve(param, self.registry)
        if comp is None:
            raise FhirError("invalid-param", f"Composite parameter {key} is not supported by this server")
        preds = []
        for value in split_values(raw):
            first, second = composite.split_composite(key, value)
            system, code, has_bar = split_token(first)
            sp = composite.combined_sp(param.sp, composite.search_key(key, system, code, has_bar))
            preds.append(_value(res, comp.second_type, sp, key, None, second, canonical=False))
        return or_(*preds)

    def _terminology(self, res: Any, sp: int, key: str, modifier: str, value: str) -> ColumnElement[bool]:
        """``:in``/``:not-in`` a stored ValueSet, ``:below``/``:above`` a code in a stored CodeSystem."""
        if self.session is None:
            raise FhirError("invalid-param", f"{key}: terminology modifiers cannot be used here")
        if modifier in ("in", "not-in"):
            pairs = codes_in_valueset(self.session, unescape(value), self.search)
            with_system = [hashing.h_sys_code(sp, s, c) for s, c in pairs if s is not None]
            code_only = [hashing.h_code(sp, c) for s, c in pairs if s is None]
            conds = []
            if with_system:
                conds.append(idx_token.c.h_sys_code.in_(with_system))
            if code_only:
                conds.append(idx_token.c.h_code.in_(code_only))
            return _exists(res, idx_token, or_(*conds)) if conds else false()
        system, code, _ = split_token(value)
        if system is None or code is None:
            raise FhirError("invalid-param", f"{key}: :{modifier} needs system|code (the code system to look in)")
        codes = code_closure(self.session, system, code, modifier, self.search)  # type: ignore[arg-type]
        bare_system = system.split("|", 1)[0]
        return _exists(
            res, idx_token, idx_token.c.h_sys_code.in_([hashing.h_sys_code(sp, bare_system, c) for c in codes])
        )

    def _narrative(self, res: Any, res_type: str | None, value: str) -> ColumnElement[bool]:
        """``_text``: the narrative contains the words (case- and accent-insensitive)."""
        words = normalize_string(unescape(value), limit=None)
        pattern = "%" + words.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        types = [res_type] if res_type is not None else sorted(self.plain_registry.resource_types)
        sps = [text_sp(t) for t in types]
        where_sp = idx_string.c.sp.in_(sps) if len(sps) > 1 else idx_string.c.sp == sps[0]
        return _exists(res, idx_string, where_sp, idx_string.c.exact.like(pattern, escape="\\"))

    def _list(self, res: Any, res_type: str | None, raw: str) -> ColumnElement[bool]:
        """``_list=id``: resources that List/id has as an entry item (search.html#list)."""
        item = self.registry.get("List", "item")
        ref, lst = idx_reference.alias(), resources.alias()
        target_type = res.c.res_type if res_type is None else res_type
        return exists(
            select(1)
            .select_from(ref.join(lst, lst.c.rid == ref.c.rid))
            .where(
                lst.c.res_type == "List",
                lst.c.res_id.in_([unescape(v) for v in split_values(raw)]),
                lst.c.deleted.is_(False),
                *self._visible(lst),
                ref.c.sp == item.sp,
                ref.c.target_type == target_type,
                ref.c.target_id == res.c.res_id,
            )
            .correlate(res)
        )


def contained_marker(res: Any, res_type: str) -> ColumnElement[bool]:
    """``res`` contains a resource of ``res_type`` (the marker row search/index.py writes)."""
    marker = contained_sp(hashing.sp_hash(res_type, "_type"))
    return _exists(res, idx_token, idx_token.c.h_code == hashing.h_code(marker, res_type))


def compartment_predicate(registry: Any, res_type: str, compartment: str, compartment_id: str) -> ColumnElement[bool]:
    """``[compartment]/[id]/[type]``: resources of ``res_type`` linked to that compartment's owner
    by one of the parameters its CompartmentDefinition lists (compartmentdefinition.html)."""
    if compartment not in registry.compartments():
        raise FhirError("not-found", f"{compartment} is not a compartment this server supports")
    codes = registry.compartment_params(compartment, res_type)
    if not codes:
        raise FhirError("invalid-param", f"{res_type} is not in the {compartment} compartment")
    preds = []
    for code in codes:
        param = registry.get(res_type, code)
        if param is not None and param.type == "reference":
            for sp in registry.stored_sps(param):
                preds.append(reference_predicate(r, sp, code, None, f"{compartment}/{compartment_id}"))
    if res_type == compartment:  # the owner belongs to its own compartment
        preds.append(r.c.res_id == compartment_id)
    return or_(*preds)


def _value(
    res: Any, ptype: str, sp: int, key: str, modifier: str | None, v: str, canonical: bool = True
) -> ColumnElement[bool]:
    """One (not comma-separated) value of a parameter of type ``ptype`` stored under ``sp``
    (``canonical``: whether UCUM canonical rows exist for it; not for composites)."""
    if ptype == "string":
        return string_predicate(res, sp, modifier, v)
    if ptype == "token":
        return token_predicate(res, sp, key, modifier, v)
    if ptype == "reference":
        return reference_predicate(res, sp, key, modifier, v)
    if ptype == "date":
        return date_predicate(res, sp, key, v)
    if ptype == "number":
        return number_predicate(res, sp, key, v)
    if ptype == "quantity":
        return quantity_predicate(res, sp, key, v, canonical)
    if ptype == "special":
        return near_predicate(res, sp, key, v)
    return uri_predicate(res, sp, modifier, v)
