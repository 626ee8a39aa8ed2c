"""Search parameters of a request compiled into SQL predicates over the typed index tables.

Why predicates are ``EXISTS`` sub-queries on ``rid``: each parameter is answered by the one
index table of its type, with hashed token keys and normalised strings, so every predicate is
an index range scan; AND is repetition of predicates, OR (comma) is OR inside one predicate.
Semantics follow http://hl7.org/fhir/R4/search.html. This module covers the parameter types
and modifiers listed in docs/conformance.md; chains, ``_has`` and composites come with the
search engine's own work.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import ColumnElement, and_, exists, not_, or_, select

from fhir_server.errors import FhirError
from fhir_server.search import hashing
from fhir_server.search.index import normalize_string
from fhir_server.storage.schema import (
    idx_date,
    idx_number,
    idx_quantity,
    idx_reference,
    idx_string,
    idx_token,
    idx_uri,
    resources,
)
from fhir_server.util.fhirdate import parse_range as date_range

#: Parameters that shape the result rather than select resources.
RESULT_PARAMS = frozenset({"_count", "_sort", "_total", "_summary", "_elements", "_cursor", "_format", "_pretty"})
#: Parameters recognised but not yet implemented: refused rather than silently ignored.
UNSUPPORTED_PARAMS = frozenset({"_include", "_revinclude", "_contained", "_containedType", "_has"})
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


def _exists(table: Any, *conds: ColumnElement[bool]) -> ColumnElement[bool]:
    return exists(select(1).select_from(table).where(table.c.rid == r.c.rid, *conds))


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


def date_predicate(sp: int, name: str, raw: str) -> ColumnElement[bool]:
    return _exists(idx_date, idx_date.c.sp == sp, _date_search(name, raw, idx_date.c.lo, idx_date.c.hi))


def last_updated_predicate(name: str, raw: str) -> ColumnElement[bool]:
    return _date_search(name, raw, r.c.updated_us, r.c.updated_us)


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


def number_predicate(sp: int, name: str, raw: str) -> ColumnElement[bool]:
    prefix, value = _prefix(raw)
    number, lo, hi = _number_range(name, value)
    return _exists(idx_number, idx_number.c.sp == sp, _value_predicate(prefix, idx_number.c.value, number, lo, hi))


def quantity_predicate(sp: int, name: str, raw: str) -> ColumnElement[bool]:
    prefix, rest = _prefix(raw)
    parts = re.split(r"(?<!\\)\|", rest)
    number, lo, hi = _number_range(name, parts[0])
    conds = [idx_quantity.c.sp == sp, _value_predicate(prefix, idx_quantity.c.value, number, lo, hi)]
    if len(parts) == 3:
        system, code = unescape(parts[1]), unescape(parts[2])
        if system:
            conds.append(idx_quantity.c.system == system)
        if code:
            conds.append(
                or_(idx_quantity.c.code == code, idx_quantity.c.unit == code)
                if not system
                else idx_quantity.c.code == code
            )
    elif len(parts) != 1:
        raise FhirError("invalid-param", f"Search parameter {name}: {raw!r} is not [prefix]number|system|code")
    return _exists(idx_quantity, *conds)


def string_predicate(sp: int, modifier: str | None, value: str) -> ColumnElement[bool]:
    value = unescape(value)
    if modifier == "exact":
        return _exists(idx_string, idx_string.c.sp == sp, idx_string.c.exact == value)
    norm = normalize_string(value)
    pattern = norm.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if modifier == "contains":
        return _exists(idx_string, idx_string.c.sp == sp, idx_string.c.value.like(f"%{pattern}%", escape="\\"))
    return _exists(idx_string, idx_string.c.sp == sp, idx_string.c.value.like(f"{pattern}%", escape="\\"))


def token_predicate(sp: int, name: str, modifier: str | None, value: str) -> ColumnElement[bool]:
    if modifier == "text":
        norm = normalize_string(unescape(value)).replace("%", "\\%").replace("_", "\\_")
        return _exists(idx_token, idx_token.c.sp == sp, idx_token.c.text.like(f"{norm}%", escape="\\"))
    system, code, has_bar = split_token(value)
    if not has_bar:
        cond = idx_token.c.h_code == hashing.h_code(sp, code)
    elif code is None and system is not None:
        cond = idx_token.c.h_sys == hashing.h_sys(sp, system)
    elif code is None:
        raise FhirError("invalid-param", f"Search parameter {name}: {value!r} has neither system nor code")
    else:
        cond = idx_token.c.h_sys_code == hashing.h_sys_code(sp, system, code)
    return _exists(idx_token, cond)


def reference_predicate(sp: int, name: str, modifier: str | None, value: str) -> ColumnElement[bool]:
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
        return _exists(idx_reference, *conds)
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
    return _exists(idx_reference, *conds)


def uri_predicate(sp: int, modifier: str | None, value: str) -> ColumnElement[bool]:
    value = unescape(value)
    if modifier == "below":
        pattern = value.replace("%", "\\%").replace("_", "\\_")
        return _exists(idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri.like(f"{pattern}%", escape="\\"))
    if modifier == "above":
        prefixes = []
        parts = value.split("/")
        for i in range(3, len(parts) + 1):
            prefixes.append("/".join(parts[:i]))
        return _exists(idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri.in_(prefixes or [value]))
    return _exists(idx_uri, idx_uri.c.sp == sp, idx_uri.c.uri == value)


# -- the compiler --------------------------------------------------------------------------
_MODIFIERS = {
    "string": {None, "exact", "contains", "missing"},
    "token": {None, "text", "not", "missing"},
    "reference": None,  # any resource type, plus missing
    "date": {None, "missing"},
    "number": {None, "missing"},
    "quantity": {None, "missing"},
    "uri": {None, "below", "above", "missing"},
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


def compile_query(
    registry: Any, res_type: str | None, params: list[tuple[str, str]], lenient: bool = False
) -> CompiledQuery:
    """Filters for ``params`` (AND of repetitions, OR of comma values).

    Unknown parameters are a 400, or a warning when ``lenient`` (``Prefer: handling=lenient``).
    """
    query = CompiledQuery(res_type)
    for key, raw in params:
        name, _, modifier = key.partition(":")
        if name in RESULT_PARAMS:
            continue
        if name in UNSUPPORTED_PARAMS:
            _reject(query, lenient, f"Search parameter {key} is not supported yet")
            continue
        if "." in name:
            _reject(query, lenient, f"Chained search ({key}) is not supported yet")
            continue
        if raw == "":
            continue  # empty values are ignored (search.html#2.1.1.1)
        pred = _compile_param(registry, res_type, name, modifier or None, raw, key)
        if pred is None:
            _reject(query, lenient, f"Unknown search parameter {key!r} for {res_type or 'all types'}")
            continue
        query.filters.append(pred)
    return query


def _reject(query: CompiledQuery, lenient: bool, message: str) -> None:
    if not lenient:
        raise FhirError("invalid-param", message)
    query.warnings.append(message)


def _compile_param(
    registry: Any, res_type: str | None, name: str, modifier: str | None, raw: str, key: str
) -> ColumnElement[bool] | None:
    if name == "_id":
        ids = [unescape(v) for v in split_values(raw)]
        pred = r.c.res_id.in_(ids)
        return not_(pred) if modifier == "not" else pred
    if name == "_lastUpdated":
        return or_(*[last_updated_predicate(key, v) for v in split_values(raw)])
    if res_type is None:
        return _compile_all_types(registry, name, modifier, raw, key)
    param = registry.get(res_type, name)
    if param is None:
        return None
    return _compile_typed(param, modifier, raw, key)


def _compile_all_types(
    registry: Any, name: str, modifier: str | None, raw: str, key: str
) -> ColumnElement[bool] | None:
    """System-level search: a parameter defined on Resource applies to every type."""
    preds = []
    for res_type, param in registry.common(name):
        preds.append(and_(r.c.res_type == res_type, _compile_typed(param, modifier, raw, key)))
    return or_(*preds) if preds else None


def _compile_typed(param: Any, modifier: str | None, raw: str, key: str) -> ColumnElement[bool]:
    allowed = _MODIFIERS.get(param.type)
    if param.type not in _MODIFIERS:
        raise FhirError("invalid-param", f"Search parameter {key}: {param.type} parameters are not supported yet")
    if allowed is not None and modifier not in allowed:
        raise FhirError(
            "invalid-param", f"Modifier :{modifier} is not supported on {param.type} parameter {param.code}"
        )
    sp = param.sp
    if modifier == "missing":
        if raw not in ("true", "false"):
            raise FhirError("invalid-param", f"{key} must be true or false")
        table = _TABLE_OF[param.type]
        has = _exists(table, table.c.sp == sp)
        return not_(has) if raw == "true" else has
    if modifier == "not" and param.type == "token":
        return not_(or_(*[token_predicate(sp, key, None, v) for v in split_values(raw)]))
    build: Callable[[str], ColumnElement[bool]]
    if param.type == "string":
        build = lambda v: string_predicate(sp, modifier, v)  # noqa: E731
    elif param.type == "token":
        build = lambda v: token_predicate(sp, key, modifier, v)  # noqa: E731
    elif param.type == "reference":
        build = lambda v: reference_predicate(sp, key, modifier, v)  # noqa: E731
    elif param.type == "date":
        build = lambda v: date_predicate(sp, key, v)  # noqa: E731
    elif param.type == "number":
        build = lambda v: number_predicate(sp, key, v)  # noqa: E731
    elif param.type == "quantity":
        build = lambda v: quantity_predicate(sp, key, v)  # noqa: E731
    else:
        build = lambda v: uri_predicate(sp, modifier, v)  # noqa: E731
    return or_(*[build(v) for v in split_values(raw)])
