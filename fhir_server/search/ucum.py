"""UCUM canonical units for quantity search (http://hl7.org/fhir/R4/search.html#quantity).

"The server SHOULD ... convert values to canonical units (UCUM) so that e.g. a search for 5.4 mg
matches 0.0054 g." :func:`canonical` turns ``(value, code)`` into ``(value in canonical units,
canonical unit string)``; two quantities are comparable exactly when their canonical unit strings
are equal, whatever spelling their codes used (``mg/dL``, ``mg.dL-1``, ``10*-3.g/dL`` all give
``g.m-3``).

How the codes are understood
----------------------------
- Parsing and validation: the UCUM grammar of ``ucumvert`` (a lark grammar whose terminals are
  generated from the official ``ucum-essence.xml`` v2.2), so a code is valid exactly when that
  grammar accepts it. Codes are case-sensitive (``mg`` is milligram, ``Mg`` megagram, ``MG``
  invalid); annotations ``{...}`` are unity, as UCUM says (``{beats}/min`` is ``/min``).
- Unit definitions: the ``ucum-essence.xml`` that ``ucumvert`` vendors; every atom is resolved
  through its UCUM definition down to the base units (``m s g rad K C cd``), with exact rational
  arithmetic (:class:`fractions.Fraction`) so that the cached factor is the correctly rounded float
  (``mg/dL`` → exactly ``10 g.m-3``). ucumvert's own pint-based conversion is not used: its pint
  unit definitions disagree with UCUM on units that occur in clinical data (``g%`` is read as
  gram·percent instead of g/dL, ``[Cal]`` as 1 cal instead of 1 kcal, ``[cft_i]`` as centi-foot,
  ``'`` as a minute of time, arbitrary units as dimensionless numbers).

Deliberate choices (documented deviations)
------------------------------------------
- ``mol`` is kept as a dimension of its own (canonical ``mol``), although UCUM defines it as the
  pure number 6.02214076e23: otherwise ``mmol/L`` (glucose) and ``10*9/L`` (cell counts) would
  share the canonical unit ``m-3`` and a count search would match substance concentrations.
  ``eq``, ``osm``, ``kat`` and ``U`` (µmol/min) follow from it (``mol``, ``mol.s-1``).
- Arbitrary units (``[IU]``, ``[arb'U]``, ``[CFU]``, ...) are commensurable with nothing but
  themselves (UCUM, "arbitrary units"), so each is a dimension of its own named by its code
  (``[IU]`` is defined as ``[iU]`` and so both give ``[iU]``): ``[IU]/L`` is ``[iU].m-3``, never
  ``m-3``.
- Special (non-ratio) units: ``Cel``, ``[degF]`` and ``[degRe]`` alone (an annotation may follow)
  are converted affinely to kelvin (``37 Cel`` → ``310.15 K``); inside a compound, prefixed or with
  an exponent (``Cel/h``, ``mCel``, ``Cel2``) they give None, and so do all other special units
  (``[pH]``, ``B[...]``, ``Np``, ``%[slope]``, ``[p'diop]``, ``[hp'_X]``, ``bit_s``, ...).
  ``[degR]`` and ``K`` are ordinary ratio units.

Canonical unit strings are themselves valid UCUM: the base atoms with positive exponents, then
those with negative ones, each group sorted by code, joined with ``.``, exponents other than 1
appended (``g.m-3``, ``mol.m-3``, ``g.m-1.s-2``, ``s-1``, ``[iU].m-3``); ``1`` when dimensionless
(``%``, ``{score}``, ``mol/mol``). Base atoms: ``m s g rad K C cd`` (UCUM), ``mol`` and the
arbitrary units (above).

Speed: the analysis of a code is cached (:func:`unit_info`, an LRU of 4096 codes), so converting
a known unit is one float multiplication (plus one addition for the affine temperatures).
"""

from __future__ import annotations

import threading
from decimal import Decimal
from fractions import Fraction
from functools import lru_cache
from typing import Any, NamedTuple
from xml.etree import ElementTree

__all__ = [
    "UCUM_SYSTEM",
    "UnitInfo",
    "canonical",
    "canonical_range",
    "canonical_unit",
    "unit_info",
]

#: The code system of UCUM codes in a Quantity (``Quantity.system``).
UCUM_SYSTEM = "http://unitsofmeasure.org"

#: Longer codes are refused without parsing (the Earley parser is superlinear in the length).
MAX_CODE_LENGTH = 200

#: Larger exponents are refused (``10*400`` is beyond the float range anyway).
MAX_EXPONENT = 400

#: Bounds at or beyond this magnitude are open (``index.NUM_MIN``/``NUM_MAX`` are ±1e308) and are
#: passed through :func:`canonical_range` unchanged; finite results are clamped to it.
OPEN_BOUND = 1.0e308
_OPEN = OPEN_BOUND

_NS = "{http://unitsofmeasure.org/ucum-essence}"

#: Dimensions beyond UCUM's base units (see the module docstring).
_EXTRA_BASES = ("mol",)

#: Offsets in kelvin of UCUM's affine special-unit functions (the UCUM table of special units); the
#: scale comes from ucum-essence (``<function name="degF" value="5" Unit="K/9"/>``).
_AFFINE_OFFSETS_K = {
    "Cel": Fraction("273.15"),  # K = °C + 273.15
    "degF": Fraction("459.67") * Fraction(5, 9),  # K = (°F + 459.67) × 5/9
    "degRe": Fraction("273.15"),  # K = °Ré × 5/4 + 273.15
}


class UnitInfo(NamedTuple):
    """Conversion of one UCUM code to canonical units: ``canonical = value * factor + offset``."""

    factor: float
    offset: float  # 0.0 except for Cel, [degF], [degRe]
    unit: str  # the canonical unit string


# --------------------------------------------------------------------------- public API


def canonical(value: float | Decimal | int, code: str) -> tuple[float, str] | None:
    """``(value in canonical units, canonical unit)`` of a UCUM quantity, or None.

    None when ``code`` is not a valid UCUM code (or not a string), is a special unit other than
    Cel/[degF]/[degRe] alone, or when the value is not a finite number (or overflows).
    ``canonical(5.4, "mg") == (0.0054, "g")`` up to float rounding.
    """
    info = unit_info(code) if type(code) is str else None
    if info is None:
        return None
    try:
        v = float(value) * info[0]
    except (TypeError, ValueError, OverflowError):
        return None
    if info[1]:
        v += info[1]
    if v - v != 0.0:  # inf or nan
        return None
    return v, info[2]


def canonical_range(lo: float | Decimal | int, hi: float | Decimal | int, code: str) -> tuple[float, float, str] | None:
    """``(lo, hi, canonical unit)``: an implied-precision range ``[lo, hi]`` in canonical units.

    Bounds whose magnitude is at least :data:`OPEN_BOUND` (the index's ``NUM_MIN``/``NUM_MAX``
    sentinels, or infinities) are open and kept as they are; converted bounds are clamped to
    ±:data:`OPEN_BOUND`. Every factor is positive, so the order of the bounds is kept.
    None as in :func:`canonical`.
    """
    info = unit_info(code) if type(code) is str else None
    if info is None:
        return None
    factor, offset, unit = info
    try:
        lo_f, hi_f = float(lo), float(hi)
    except (TypeError, ValueError, OverflowError):
        return None
    if lo_f != lo_f or hi_f != hi_f:
        return None
    if -_OPEN < lo_f < _OPEN:
        lo_f = lo_f * factor + offset
        if lo_f < -_OPEN:
            lo_f = -_OPEN
    if -_OPEN < hi_f < _OPEN:
        hi_f = hi_f * factor + offset
        if hi_f > _OPEN:
            hi_f = _OPEN
    return lo_f, hi_f, unit


def canonical_unit(code: str) -> str | None:
    """The canonical unit string of a UCUM code, or None (see :func:`canonical`)."""
    info = unit_info(code) if type(code) is str else None
    return info[2] if info is not None else None


@lru_cache(maxsize=4096)
def unit_info(code: str) -> UnitInfo | None:
    """The cached analysis of a UCUM code: ``UnitInfo(factor, offset, unit)``, or None."""
    if not code or len(code) > MAX_CODE_LENGTH:
        return None
    try:
        val = _eval(_parse(code))
    except _NotConvertible:
        return None
    if isinstance(val, _Special):
        factor, offset, dims = val.scale, val.offset, val.dims
    else:
        factor, dims = val
        offset = Fraction(0)
    try:
        f = float(factor)
    except OverflowError:  # "10*300.10*300"
        return None
    if f == 0.0:  # underflow: "10*-300.10*-300"
        return None
    return UnitInfo(f, float(offset), _format(dims))


# --------------------------------------------------------------------------- evaluation

# A ratio-scale value: (factor, {base atom: exponent}) meaning factor × Π base^exponent.
_Val = tuple[Fraction, dict[str, int]]


class _Special(NamedTuple):
    """An affine special unit alone: canonical = value × scale + offset."""

    scale: Fraction
    offset: Fraction
    dims: dict[str, int]


class _NotConvertible(Exception):
    """Invalid UCUM, or a special unit that cannot be converted where it stands."""


_ONE: _Val = (Fraction(1), {})


def _ratio(v: _Val | _Special) -> _Val:
    if isinstance(v, _Special):
        raise _NotConvertible("special unit in a compound, with a prefix or with an exponent")
    return v


def _mul(a: _Val | _Special, b: _Val | _Special, sign: int) -> _Val:
    (fa, da), (fb, db) = _ratio(a), _ratio(b)
    dims = dict(da)
    for k, e in db.items():
        dims[k] = dims.get(k, 0) + sign * e
    return (fa * fb if sign > 0 else fa / fb), {k: e for k, e in dims.items() if e}


def _pow(a: _Val | _Special, n: int) -> _Val:
    f, d = _ratio(a)
    return f**n, {k: e * n for k, e in d.items()}


def _eval(node: Any) -> _Val | _Special:
    """Evaluate a ucumvert parse tree (see ``ucumvert/ucum_grammar.lark``)."""
    if not hasattr(node, "data"):  # a bare token: only an annotation ("{score}", "/{x}") stands alone
        if getattr(node, "type", None) == "ANNOTATION":
            return _ONE
        raise _NotConvertible(f"unexpected token {node!r}")
    rule, ch = node.data, node.children
    if rule == "main_term":  # "/" term | term
        return _mul(_ONE, _eval(ch[1]), -1) if len(ch) == 2 else _eval(ch[0])
    if rule == "term":  # term OPERATOR component
        return _mul(_eval(ch[0]), _eval(ch[2]), 1 if ch[1] == "." else -1)
    if rule == "component":  # annotatable ANNOTATION: annotations are unity
        return _eval(ch[0])
    if rule == "annotatable":  # simple_unit EXPONENT
        n = int(ch[1])
        if abs(n) > MAX_EXPONENT:  # "10*999999999" would be a huge exact power
            raise _NotConvertible(f"exponent {n}")
        return _pow(_eval(ch[0]), n)
    if rule == "simple_unit":  # FACTOR | atom | prefix atom
        if len(ch) == 1:
            if ch[0].type == "FACTOR":
                return Fraction(int(ch[0])), {}
            return _atom(str(ch[0]))
        prefix = _essence().prefixes[str(ch[0])]
        f, d = _ratio(_atom(str(ch[1])))
        return f * prefix, d
    raise _NotConvertible(f"unexpected rule {rule!r}")


_atom_cache: dict[str, _Val | _Special | None] = {}


def _atom(code: str) -> _Val | _Special:
    """An atom (``g``, ``[in_i]``, ``Cel``) resolved through ucum-essence down to base units."""
    if code in _atom_cache:
        hit = _atom_cache[code]
        if hit is None:
            raise _NotConvertible(f"{code} cannot be converted")
        return hit
    try:
        val = _resolve_atom(code)
    except _NotConvertible:
        _atom_cache[code] = None
        raise
    _atom_cache[code] = val
    return val


def _resolve_atom(code: str) -> _Val | _Special:
    ess = _essence()
    if code in ess.bases:
        return Fraction(1), {code: 1}
    unit = ess.units.get(code)
    if unit is None:  # in the grammar but not in the table: cannot happen with ucumvert 0.3.x
        raise _NotConvertible(f"unknown atom {code}")
    if unit.special:
        if unit.function not in _AFFINE_OFFSETS_K:
            raise _NotConvertible(f"special unit {code}")
        scale, dims = _ratio(_eval(_parse(unit.unit)))
        if dims != {"K": 1}:
            raise _NotConvertible(f"special unit {code}")
        return _Special(Fraction(unit.value) * scale, _AFFINE_OFFSETS_K[unit.function], dims)
    f, dims = _ratio(_eval(_parse(unit.unit)))
    if unit.arbitrary and not any(k in ess.arbitrary for k in dims):
        return Fraction(1), {code: 1}  # an arbitrary unit defined as a number: a dimension of its own
    return Fraction(unit.value) * f, dims


def _format(dims: dict[str, int]) -> str:
    if not dims:
        return "1"
    # positive exponents first, then negative ones, each by code: "g.m-3", "mol.m-3", "m3.s-1"
    return ".".join(k if e == 1 else f"{k}{e}" for k, e in sorted(dims.items(), key=lambda i: (i[1] < 0, i[0])))


# --------------------------------------------------------------------------- ucumvert and ucum-essence


class _UnitDef(NamedTuple):
    value: str  # the factor of the definition, as a decimal string
    unit: str  # the defining UCUM term
    special: bool
    arbitrary: bool
    function: str | None  # special units: the name of the conversion function


class _Essence(NamedTuple):
    bases: frozenset[str]
    prefixes: dict[str, Fraction]
    units: dict[str, _UnitDef]
    arbitrary: frozenset[str]


_lock = threading.Lock()
_state: dict[str, Any] = {}


def _essence() -> _Essence:
    ess = _state.get("essence")
    if ess is None:
        _load()
        ess = _state["essence"]
    return ess


def _parse(code: str) -> Any:
    parser = _state.get("parser")
    if parser is None:
        _load()
        parser = _state["parser"]
    from lark.exceptions import LarkError

    try:
        return parser.parse(code)
    except LarkError as exc:
        raise _NotConvertible(f"{code!r} is not valid UCUM") from exc


def _load() -> None:
    """Import ucumvert (and so pint, ~0.5 s) and read ucum-essence.xml on the first use."""
    with _lock:
        if "parser" in _state:
            return
        from ucumvert.parser import get_ucum_parser
        from ucumvert.xml_util import UCUM_ESSENCE_FILE

        root = ElementTree.parse(UCUM_ESSENCE_FILE).getroot()
        prefixes = {
            p.attrib["Code"]: Fraction(p.find(f"{_NS}value").attrib["value"]) for p in root.iter(f"{_NS}prefix")
        }
        bases = frozenset(b.attrib["Code"] for b in root.iter(f"{_NS}base-unit")) | frozenset(_EXTRA_BASES)
        units: dict[str, _UnitDef] = {}
        for u in root.iter(f"{_NS}unit"):
            v = u.find(f"{_NS}value")
            fn = v.find(f"{_NS}function")
            if fn is not None:
                fdef = _UnitDef(fn.attrib["value"], fn.attrib["Unit"], True, False, fn.attrib["name"])
                units[u.attrib["Code"]] = fdef
            else:
                units[u.attrib["Code"]] = _UnitDef(
                    v.attrib["value"],
                    v.attrib["Unit"],
                    u.attrib.get("isSpecial") == "yes",
                    u.attrib.get("isArbitrary") == "yes",
                    None,
                )
        arbitrary = frozenset(c for c, d in units.items() if d.arbitrary)
        _state["essence"] = _Essence(bases, prefixes, units, arbitrary)
        _state["parser"] = get_ucum_parser()
