"""Turn a resource into rows of the typed search index tables (``fhir_server.storage.schema``).

Why: search runs as SQL over pre-normalised values, so each value a search parameter selects is
stored once, in the form its search type compares (http://hl7.org/fhir/R4/search.html):

- **string** (``idx_string``): string/markdown values and the string parts of HumanName (family,
  given, prefix, suffix, text) and Address (line, city, district, state, postalCode, country,
  text) — one row per part. ``value`` is accent-stripped (NFKD, combining marks dropped),
  casefolded, whitespace-collapsed and cut to 255 characters, so the default "starts with,
  case/accent-insensitive" match is ``value LIKE 'x%'``; ``exact`` keeps the original for ``:exact``.
- **token** (``idx_token``): ``(system, code, text)`` with hashes (:mod:`.hashing`). Coding →
  (system, code, display); CodeableConcept → each coding, plus a (None, None, text) row for
  ``CodeableConcept.text``; Identifier → (system, value, type.text); ContactPoint → (None, value)
  ("tokens are also used against ... ContactPoints. In these cases, the URI portion is not used");
  boolean → "true"/"false"; code → its code with the system implied by its required binding when
  that is unambiguous (the table's "code: (implicit)" system); string/id/uri → code without system.
  ``text`` holds the normalised display/text for ``:text``.
  Extra rows support two modifiers cheaply (:func:`.hashing.modifier_sp`): ``:of-type`` rows under
  ``modifier_sp(type, code, "of-type")`` with ``code = "<type system>|<type code>|<value>"`` and
  no system, one per Identifier.type.coding; ``:identifier`` rows under
  ``modifier_sp(type, code, "identifier")`` with the (system, value) of ``Reference.identifier``
  for reference parameters.
- **date** (``idx_date``): an inclusive ``[lo, hi]`` range in µs since the epoch covering the
  value's precision ("2020" → 2020-01-01T00:00:00.000000Z .. 2020-12-31T23:59:59.999999Z).
  Period → start..end with a missing bound open (``DATE_MIN``/``DATE_MAX``); Timing → the outer
  limits of its events and ``repeat.boundsPeriod``. Values without a timezone (dates, and
  dateTimes written without one) are taken as UTC — the server's time zone for the rule "where
  there is no timezone, the server's local time applies" (search.html#date).
- **number** (``idx_number``): value and the implied-precision range
  ``value ± 0.5 × 10^-p``, ``p`` the number of decimals written ("100" → [99.5, 100.5],
  "1.50" → [1.495, 1.505]; search.html#number). Range → low..high.
- **quantity** (``idx_quantity``): Quantity and its profiles (Age, Duration, Count, Distance,
  SimpleQuantity, MoneyQuantity) → value, system, code, unit and the precision range; Money →
  currency as code in ``urn:iso:std:iso:4217``; Range → low..high with open sides at
  ``NUM_MIN``/``NUM_MAX``. A UCUM quantity gets a second row in canonical units (:mod:`.ucum`)
  under :func:`canonical_sp`, which searches with a UCUM unit use.
- **reference** (``idx_reference``): ``Type/id[/_history/v]`` → target_type/target_id/
  target_version; absolute URLs → ``url`` plus type/id when they end in ``Type/id``; ``urn:uuid:``
  / ``urn:oid:`` → ``url`` (with ``Reference.type`` as target_type if given); contained ``#id``
  references are skipped. canonical/uri values → ``url`` with a ``|version`` suffix moved to
  target_version. Resources (``Bundle.entry[0].resource``) → their type and id.
- **uri** (``idx_uri``): uri/url/canonical/oid/uuid values as written.

- **composite** (:mod:`.composite`): the second component's row in its own type's table, under an
  ``sp`` that also hashes the first component's token.

- **narrative** (``idx_string`` under :func:`text_sp`): the words of ``text.div`` for ``_text``,
  truncated in ``value`` as usual but whole in ``exact``.
- **position** (``idx_position``): ``Location.position`` latitude/longitude for ``near``, the one
  special parameter of R4.

Rows are deduplicated per table.
"""

from __future__ import annotations

import dataclasses
import functools
import html
import re
import unicodedata
from collections.abc import Callable, Iterable
from decimal import Decimal
from types import SimpleNamespace
from typing import Any, NamedTuple

from fhir_server.search import composite, ucum
from fhir_server.search.hashing import hash64, modifier_sp, sp_hash, token_hashes
from fhir_server.search.registry import Registry, SearchParam, get_registry
from fhir_server.util.fhirdate import date_range

#: Open bounds of date ranges: 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z.
DATE_MIN = -62135596800000000
DATE_MAX = 253402300799999999
#: Open bounds of number/quantity ranges (finite, so every database and driver stores them).
NUM_MIN = -1.0e308
NUM_MAX = 1.0e308

STRING_MAX = 255
ISO_4217 = "urn:iso:std:iso:4217"

QUANTITY_TYPES = frozenset({"Quantity", "Age", "Duration", "Count", "Distance", "SimpleQuantity", "MoneyQuantity"})
_HUMAN_NAME_PARTS = ("family", "given", "prefix", "suffix", "text")
_ADDRESS_PARTS = ("line", "city", "district", "state", "postalCode", "country", "text")


# --------------------------------------------------------------------------- normalisation


def normalize_string(text: str, limit: int | None = STRING_MAX) -> str:
    """Case- and accent-insensitive form used for string search (``idx_string.value``)."""
    if text.isascii():
        s = " ".join(text.lower().split())
    else:
        decomposed = unicodedata.normalize("NFKD", text)
        s = " ".join("".join(c for c in decomposed if not unicodedata.combining(c)).casefold().split())
    return s[:limit]


_TAG = re.compile(r"<[^>]*>")


def narrative_text(div: str) -> str:
    """The words of an XHTML narrative, normalised like strings but whole (for ``_text``)."""
    return normalize_string(html.unescape(_TAG.sub(" ", div)), limit=None)


@functools.cache
def text_sp(resource_type: str) -> int:
    """``sp`` of a type's ``_text`` row: the narrative, whole, in ``idx_string.exact``."""
    return sp_hash(resource_type, "_text")


_NUM_RE = re.compile(r"[-+]?(\d*)(?:\.(\d*))?(?:[eE]([-+]?\d+))?")


def number_range(value: Any) -> tuple[float, float, float] | None:
    """``(value, lo, hi)``: the number and its implied-precision range (search.html#number)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, Decimal, str)):
        return None
    text = str(value).strip()
    m = _NUM_RE.fullmatch(text)
    if not m or not (m.group(1) or m.group(2)):
        return None
    try:
        v = float(text)
    except ValueError:
        return None
    if v != v or v in (float("inf"), float("-inf")):
        return None
    decimals = len(m.group(2) or "") - int(m.group(3) or 0)
    half = 0.5 * 10.0 ** (-decimals)
    return v, v - half, v + half


# --------------------------------------------------------------------------- row builders

# One row type per index table with its columns in table order, so that the repository writes
# rows as they are (COPY/executemany) without a per-row conversion.


class StringRow(NamedTuple):
    rid: int
    sp: int
    value: str
    exact: str


class TokenRow(NamedTuple):
    rid: int
    sp: int
    system: str | None
    code: str | None
    text: str | None
    h_code: int
    h_sys_code: int
    h_sys: int


class DateRow(NamedTuple):
    rid: int
    sp: int
    lo: int
    hi: int


class NumberRow(NamedTuple):
    rid: int
    sp: int
    value: float
    lo: float
    hi: float


class QuantityRow(NamedTuple):
    rid: int
    sp: int
    system: str | None
    code: str | None
    unit: str | None
    value: float
    lo: float
    hi: float


class RefTarget(NamedTuple):
    """What a reference points at (the ``idx_reference`` columns after ``sp``)."""

    target_type: str | None
    target_id: str | None
    target_version: str | None
    url: str | None


class ReferenceRow(NamedTuple):
    rid: int
    sp: int
    target_type: str | None
    target_id: str | None
    target_version: str | None
    url: str | None


class UriRow(NamedTuple):
    rid: int
    sp: int
    uri: str


class PositionRow(NamedTuple):
    rid: int
    sp: int
    lat: float
    lng: float


ROW_TYPES: dict[str, type[tuple]] = {
    "idx_string": StringRow,
    "idx_token": TokenRow,
    "idx_date": DateRow,
    "idx_number": NumberRow,
    "idx_quantity": QuantityRow,
    "idx_reference": ReferenceRow,
    "idx_uri": UriRow,
    "idx_position": PositionRow,
}
TABLES = tuple(ROW_TYPES)
Rows = dict[str, list[tuple]]


class _Out:
    """Rows being collected, deduplicated per table."""

    __slots__ = ("rid", "rows", "seen")

    def __init__(self, rid: int) -> None:
        self.rid = rid
        self.rows: Rows = {t: [] for t in TABLES}
        self.seen: set[tuple] = set()

    def add(self, table: str, row: tuple) -> None:
        key = (table, row)
        if key not in self.seen:
            self.seen.add(key)
            self.rows[table].append(row)


# Codes repeat heavily across resources (LOINC codes, statuses, systems): caching the three
# BLAKE2b hashes of a (sp, system, code) triple roughly halves token indexing time on Synthea data.
_token_hashes = functools.lru_cache(maxsize=1 << 16)(token_hashes)


_modifier_sp = functools.lru_cache(maxsize=16384)(modifier_sp)


def _str_row(out: _Out, sp: int, text: Any) -> None:
    if type(text) is str and text:
        out.add("idx_string", StringRow(out.rid, sp, normalize_string(text), text))


def _index_string(p: SearchParam, items: list, out: _Out) -> None:
    sp = p.sp
    for value, vtype in items:
        if type(value) is str:
            _str_row(out, sp, value)
        elif type(value) is dict:
            parts = _HUMAN_NAME_PARTS if vtype == "HumanName" else _ADDRESS_PARTS if vtype == "Address" else ()
            for part in parts:
                v = value.get(part)
                if type(v) is list:
                    for x in v:
                        _str_row(out, sp, x)
                else:
                    _str_row(out, sp, v)


def _token_row(out: _Out, sp: int, system: Any, code: Any, text: Any = None) -> None:
    system = system if type(system) is str and system else None
    code = code if type(code) is str and code else None
    ntext = normalize_string(text) if type(text) is str and text else None
    if system is None and code is None and ntext is None:
        return
    hc, hsc, hs = _token_hashes(sp, system, code)
    out.add("idx_token", TokenRow(out.rid, sp, system, code, ntext, hc, hsc, hs))


def _coding_rows(out: _Out, sp: int, coding: Any) -> None:
    if type(coding) is dict:
        _token_row(out, sp, coding.get("system"), coding.get("code"), coding.get("display"))


def _index_token(p: SearchParam, items: list, out: _Out) -> None:
    sp = p.sp
    for value, vtype in items:
        if type(value) is str:
            system = p.code_systems.get(value) if vtype == "code" else None
            _token_row(out, sp, system, value)
        elif type(value) is bool:
            _token_row(out, sp, None, "true" if value else "false")
        elif type(value) is not dict:
            if isinstance(value, (int, float, Decimal)):
                _token_row(out, sp, None, str(value))
        elif vtype == "CodeableConcept":
            codings = value.get("coding")
            if type(codings) is list:
                for c in codings:
                    _coding_rows(out, sp, c)
            text = value.get("text")
            if type(text) is str and text:
                _token_row(out, sp, None, None, text)
        elif vtype == "Coding":
            _coding_rows(out, sp, value)
        elif vtype == "Identifier":
            ident_value = value.get("value")
            itype = value.get("type")
            itext = itype.get("text") if type(itype) is dict else None
            _token_row(out, sp, value.get("system"), ident_value, itext)
            if type(itype) is dict and type(ident_value) is str and ident_value:
                codings = itype.get("coding")
                if type(codings) is list:
                    of_type = _modifier_sp(p.resource_type, p.code, "of-type")
                    for c in codings:
                        if type(c) is dict and type(c.get("code")) is str:
                            _token_row(out, of_type, None, f"{c.get('system') or ''}|{c['code']}|{ident_value}")
        elif vtype == "ContactPoint":
            _token_row(out, sp, None, value.get("value"))


def _date_of(value: Any, vtype: str) -> tuple[int, int] | None:
    if type(value) is str:
        return date_range(value)
    if type(value) is not dict:
        return None
    if vtype == "Period":
        start, end = date_range(value.get("start")), date_range(value.get("end"))  # type: ignore[arg-type]
        if start is None and end is None:
            return None
        return (start[0] if start else DATE_MIN), (end[1] if end else DATE_MAX)
    if vtype == "Timing":
        ranges = []
        events = value.get("event")
        if type(events) is list:
            ranges.extend(r for e in events if (r := date_range(e)) is not None)
        repeat = value.get("repeat")
        if type(repeat) is dict and type(repeat.get("boundsPeriod")) is dict:
            bounds = _date_of(repeat["boundsPeriod"], "Period")
            if bounds:
                ranges.append(bounds)
        if not ranges:
            return None
        return min(r[0] for r in ranges), max(r[1] for r in ranges)
    return None


def _index_date(p: SearchParam, items: list, out: _Out) -> None:
    for value, vtype in items:
        rng = _date_of(value, vtype)
        if rng is not None:
            out.add("idx_date", DateRow(out.rid, p.sp, rng[0], rng[1]))


def _index_number(p: SearchParam, items: list, out: _Out) -> None:
    for value, vtype in items:
        if type(value) is dict:
            if vtype != "Range":
                continue
            low = value.get("low")
            high = value.get("high")
            lo_r = number_range(low.get("value")) if type(low) is dict else None
            hi_r = number_range(high.get("value")) if type(high) is dict else None
            if lo_r is None and hi_r is None:
                continue
            v = (lo_r or hi_r)[0]  # type: ignore[index]
            lo = lo_r[1] if lo_r else NUM_MIN
            hi = hi_r[2] if hi_r else NUM_MAX
            out.add("idx_number", NumberRow(out.rid, p.sp, v, lo, hi))
        else:
            r = number_range(value)
            if r is not None:
                out.add("idx_number", NumberRow(out.rid, p.sp, *r))


def _quantity_parts(q: Any) -> tuple[tuple[float, float, float], str | None, str | None, str | None] | None:
    if type(q) is not dict:
        return None
    r = number_range(q.get("value"))
    if r is None:
        return None
    if "currency" in q and "code" not in q:
        return r, ISO_4217, _s(q.get("currency")), None
    return r, _s(q.get("system")), _s(q.get("code")), _s(q.get("unit"))


def _s(v: Any) -> str | None:
    return v if type(v) is str and v else None


def _index_quantity(p: SearchParam, items: list, out: _Out) -> None:
    for value, vtype in items:
        if vtype in QUANTITY_TYPES or vtype == "Money":
            parts = _quantity_parts(value)
            if parts:
                (v, lo, hi), system, code, unit = parts
                out.add("idx_quantity", QuantityRow(out.rid, p.sp, system, code, unit, v, lo, hi))
                if system == ucum.UCUM_SYSTEM and code and type(p) is SearchParam:  # not a composite's part
                    _canonical_row(out, p.sp, v, lo, hi, code)
        elif vtype == "Range" and type(value) is dict:
            low, high = _quantity_parts(value.get("low")), _quantity_parts(value.get("high"))
            if low is None and high is None:
                continue
            ref = low or high
            assert ref is not None
            lo = low[0][1] if low else NUM_MIN
            hi = high[0][2] if high else NUM_MAX
            out.add("idx_quantity", QuantityRow(out.rid, p.sp, ref[1], ref[2], ref[3], ref[0][0], lo, hi))


def _canonical_row(out: _Out, sp: int, v: float, lo: float, hi: float, code: str) -> None:
    """The same quantity in UCUM canonical units, so 5.4 mg is found by 0.0054 g."""
    value = ucum.canonical(v, code)
    bounds = ucum.canonical_range(lo, hi, code)
    if value is not None and bounds is not None:
        row = QuantityRow(out.rid, canonical_sp(sp), ucum.UCUM_SYSTEM, value[1], None, value[0], bounds[0], bounds[1])
        out.add("idx_quantity", row)


@functools.lru_cache(maxsize=1 << 14)
def canonical_sp(sp: int) -> int:
    """Where a quantity parameter's canonical-unit rows are kept (beside its rows as written)."""
    return hash64(f"{sp}:ucum-canonical")


_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def parse_reference(ref: str, resource_types: frozenset[str]) -> RefTarget | None:
    """What a literal reference string points at (None for ``#contained``)."""
    ref = ref.strip()
    if not ref or ref[0] == "#":
        return None
    if ref.startswith("urn:"):
        return RefTarget(None, None, None, ref)
    absolute = "://" in ref
    parts = ref.split("/")
    version = None
    if len(parts) >= 4 and parts[-2] == "_history":
        version = parts[-1]
        parts = parts[:-2]
    typed = len(parts) >= 2 and parts[-2] in resource_types and _ID_RE.fullmatch(parts[-1])
    if typed and (absolute or len(parts) == 2):
        kept_version = version if version and len(version) <= 64 else None
        return RefTarget(parts[-2], parts[-1], kept_version, ref if absolute else None)
    # absolute without Type/id, or e.g. an unresolved conditional reference: kept as written
    return RefTarget(None, None, None, ref)


def _index_reference(p: SearchParam, items: list, out: _Out, resource_types: frozenset[str]) -> None:
    sp = p.sp
    for value, vtype in items:
        target: RefTarget | None = None
        if type(value) is str:  # canonical / uri
            url, _, version = value.partition("|")
            if url:
                target = RefTarget(None, None, version[:64] or None, url)
        elif type(value) is not dict:
            continue
        elif vtype == "Reference":
            ref = value.get("reference")
            if type(ref) is str:
                target = parse_reference(ref, resource_types)
                if target is not None and target.target_type is None and type(value.get("type")) is str:
                    target = target._replace(target_type=value["type"])
            ident = value.get("identifier")
            if type(ident) is dict:
                ident_sp = _modifier_sp(p.resource_type, p.code, "identifier")
                _token_row(out, ident_sp, ident.get("system"), ident.get("value"))
        elif vtype == "Attachment":
            if type(value.get("url")) is str:
                target = RefTarget(None, None, None, value["url"])
        elif "resourceType" in value:  # Bundle.entry[0].resource
            rid = value.get("id")
            target = RefTarget(value["resourceType"], rid if type(rid) is str else None, None, None)
        if target is not None:
            out.add("idx_reference", ReferenceRow(out.rid, sp, *target))


def _index_uri(p: SearchParam, items: list, out: _Out) -> None:
    for value, _vtype in items:
        if type(value) is str and value:
            out.add("idx_uri", UriRow(out.rid, p.sp, value))


_HANDLERS: dict[str, Callable[[SearchParam, list, _Out], None]] = {
    "string": _index_string,
    "token": _index_token,
    "date": _index_date,
    "number": _index_number,
    "quantity": _index_quantity,
    "uri": _index_uri,
}


def _index_position(p: SearchParam, items: list, out: _Out) -> None:
    """``Location.position`` for ``near``: latitude and longitude in degrees, when both are valid."""
    for value, _vtype in items:
        if type(value) is not dict:
            continue
        lat, lng = value.get("latitude"), value.get("longitude")
        if isinstance(lat, (int, float, Decimal)) and isinstance(lng, (int, float, Decimal)):
            lat, lng = float(lat), float(lng)
            if -90 <= lat <= 90 and -180 <= lng <= 180:
                out.add("idx_position", PositionRow(out.rid, p.sp, lat, lng))


def _index_composite(p: SearchParam, items: list, out: _Out, registry: Registry) -> None:
    comp = composite.resolve(p, registry)
    if comp is None:
        return
    handler = _HANDLERS[comp.second_type]
    for element, _vtype in items:
        if type(element) is not dict:
            continue
        seconds = comp.second(element)
        if not seconds:
            continue
        keys = {k for value, vtype in comp.first(element) for k in _token_keys(p, value, vtype)}
        for key in sorted(keys):
            handler(_scoped(p, key), seconds, out)  # type: ignore[arg-type]


@functools.lru_cache(maxsize=1 << 16)
def _scoped(p: SearchParam, key: str) -> SimpleNamespace:
    """The composite's second component as a parameter of its own ``sp`` (codes repeat: cached)."""
    return SimpleNamespace(
        sp=composite.combined_sp(p.sp, key), resource_type=p.resource_type, code=p.code, code_systems={}
    )


def _token_keys(p: SearchParam, value: Any, vtype: str) -> list[str]:
    if type(value) is str:
        return composite.first_keys(p.code_systems.get(value) if vtype == "code" else None, value)
    if type(value) is not dict:
        return []
    codings = value.get("coding") if vtype == "CodeableConcept" else [value]
    keys: list[str] = []
    for c in codings if type(codings) is list else ():
        if type(c) is dict and type(c.get("code")) is str:
            system = c.get("system")
            keys += composite.first_keys(system if type(system) is str else None, c["code"])
    return keys


def index_rows(resource: dict, rid: int = 0, registry: Registry | None = None) -> Rows:
    """Index rows for ``resource`` stored under ``rid``: table name → rows.

    Every table name of :data:`TABLES` is present (possibly with an empty list). Contained
    resources are indexed too, under their container's ``rid`` and their own type's parameters
    with :func:`contained_sp` (``_contained=true`` searches those).
    """
    registry = registry or get_registry()
    out = _Out(rid)
    rtype = resource.get("resourceType")
    if type(rtype) is not str:
        return out.rows
    _index_params(resource, registry.indexed_params(rtype), out, registry)
    text = resource.get("text")
    div = text.get("div") if type(text) is dict else None
    if type(div) is str and div:
        words = narrative_text(div)
        if words:
            out.add("idx_string", StringRow(out.rid, text_sp(rtype), words[:STRING_MAX], words))
    contained = resource.get("contained")
    if type(contained) is list:
        for inner in contained:
            itype = inner.get("resourceType") if type(inner) is dict else None
            if type(itype) is str and itype in registry.resource_types:
                marker = contained_sp(sp_hash(itype, "_type"))
                _token_row(out, marker, None, itype)
                _index_params(inner, [contained_param(p) for p in registry.indexed_params(itype)], out, registry)
    return out.rows


def _index_params(resource: dict, params: Iterable[SearchParam], out: _Out, registry: Registry) -> None:
    resource_types = registry.resource_types
    for p in params:
        items = p.extract(resource)
        if not items:
            continue
        if p.type == "reference":
            _index_reference(p, items, out, resource_types)
        elif p.type == "composite":
            _index_composite(p, items, out, registry)
        elif p.type == "special":
            _index_position(p, items, out)
        else:
            handler = _HANDLERS.get(p.type)
            if handler is not None:
                handler(p, items, out)


@functools.lru_cache(maxsize=1 << 14)
def contained_sp(sp: int) -> int:
    """Where the rows of a contained resource's parameter are kept (apart from standalone ones)."""
    return hash64(f"{sp}:contained")


@functools.lru_cache(maxsize=1 << 14)
def contained_param(p: SearchParam) -> SearchParam:
    """``p`` as it indexes and searches contained resources."""
    return dataclasses.replace(p, sp=contained_sp(p.sp))
