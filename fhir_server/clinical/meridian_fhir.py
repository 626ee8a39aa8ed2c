"""The meridian measurement Observation: read its 24 µA components, write the interpretation back.

Shape (issue 4 brief): code ``tcm-observation-code#meridian-measurement``; 24 components coded
``tcm-meridian-point#<M>-<L|R>`` with ``valueQuantity`` in µA (UCUM ``uA``) and, once
interpreted, ``interpretation`` = ``tcm-meridian-interpretation#deficient|balanced|excess``;
plus components ``meridian-mean``, ``meridian-band-low`` and ``meridian-band-high`` (µA).

Left/right imbalance (decided here): one extra component per imbalanced meridian, coded
``tcm-meridian#<M>``, ``valueRatio`` = left µA / right µA (so the reader sees both sides), and
``interpretation`` = tcm-meridian-interpretation ``left-right-imbalance`` (左右失衡) together with
v3-ObservationInterpretation ``A`` (abnormal) for readers that know only the HL7 codes. A
meridian without such a component is not imbalanced.

Interpreting is idempotent: earlier derived components (mean, band, imbalance) are replaced and
point interpretations overwritten; components of any other code are kept as they are.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

from fhir_server.clinical import codes
from fhir_server.clinical.meridian import (
    INTERPRETATIONS,
    MERIDIANS,
    POINTS,
    MeridianInputError,
    Reading,
    Value,
    interpret,
    rounded,
)

OBS = "Observation"
_DERIVED = {"meridian-mean", "meridian-band-low", "meridian-band-high"}
_MICROAMPERE_UNITS = {"µA", "uA", "μA"}  # µ is U+00B5; μ (U+03BC) is typed as often


def _quantity(value: Any) -> dict[str, Any]:
    return {"value": float(rounded(value)), "unit": "µA", "system": codes.UCUM, "code": "uA"}


def _micro_amperes(quantity: Any) -> tuple[Value | None, str | None]:
    """The value of a µA quantity, or the reason it is not one."""
    if not isinstance(quantity, dict):
        return None, "has no valueQuantity"
    value = quantity.get("value")
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        return None, "valueQuantity has no numeric value"
    system, code, unit = quantity.get("system"), quantity.get("code"), quantity.get("unit")
    if code is not None:
        if system not in (None, codes.UCUM) or code != "uA":
            return None, f"valueQuantity must be in µA (UCUM code 'uA'), not {code!r}"
    elif unit not in _MICROAMPERE_UNITS:
        return None, f"valueQuantity must be in µA, not {unit!r}"
    return value, None


def point_values(observation: dict[str, Any]) -> tuple[dict[str, Value], dict[str, str]]:
    """``(point code -> µA, point code -> FHIRPath of its component)``; raises on bad input."""
    problems: list[tuple[str, str | None]] = []
    if not codes.has_coding(observation.get("code"), codes.OBSERVATION_CODE, "meridian-measurement"):
        problems.append(
            (
                f"Observation.code must be {codes.OBSERVATION_CODE}#meridian-measurement",
                f"{OBS}.code",
            )
        )
    values: dict[str, Value] = {}
    where: dict[str, str] = {}
    for i, comp in enumerate(observation.get("component") or []):
        path = f"{OBS}.component[{i}]"
        point = codes.has_coding(comp.get("code") if isinstance(comp, dict) else None, codes.MERIDIAN_POINT)
        if point is None:
            continue
        if point not in POINTS:
            problems.append((f"{point!r} is not one of the 24 meridian points", f"{path}.code"))
            continue
        if point in where:
            problems.append((f"Point {point} is measured twice (also at {where[point]})", path))
            continue
        where[point] = path
        value, why = _micro_amperes(comp.get("valueQuantity"))
        if why is not None:
            problems.append((f"Point {point}: {why}", f"{path}.valueQuantity"))
            continue
        assert value is not None
        values[point] = value
    if problems:
        raise MeridianInputError(problems)
    return values, where


def interpret_observation(
    observation: dict[str, Any], *, relative_width: Value | None = None, absolute_width: Value | None = None
) -> tuple[dict[str, Any], Reading]:
    """A copy of ``observation`` with its points interpreted and the derived components added."""
    values, where = point_values(observation)
    try:
        reading = interpret(values, relative_width=relative_width, absolute_width=absolute_width)
    except MeridianInputError as err:
        located = [(m, where.get(p, f"{OBS}.component") if p else None) for m, p in err.problems]
        raise MeridianInputError(located) from None
    out = copy.deepcopy(observation)
    kept = []
    for comp in out.get("component") or []:
        code = comp.get("code")
        if codes.has_coding(code, codes.MERIDIAN):
            continue
        derived = codes.has_coding(code, codes.OBSERVATION_CODE)
        if derived in _DERIVED:
            continue
        point = codes.has_coding(code, codes.MERIDIAN_POINT)
        if point is not None:
            result = reading.points[point]
            comp["interpretation"] = [codes.concept(codes.MERIDIAN_INTERPRETATION, result, INTERPRETATIONS[result])]
        kept.append(comp)
    band = reading.band
    kept += [
        {"code": codes.concept(codes.OBSERVATION_CODE, code, display), "valueQuantity": _quantity(value)}
        for code, display, value in (
            ("meridian-mean", "经络测量均值", band.mean),
            ("meridian-band-low", "生理范围下限", band.low),
            ("meridian-band-high", "生理范围上限", band.high),
        )
    ]
    for imb in reading.imbalances:
        kept.append(
            {
                "code": codes.concept(codes.MERIDIAN, imb.meridian, MERIDIANS[imb.meridian]),
                "valueRatio": {"numerator": _quantity(imb.left), "denominator": _quantity(imb.right)},
                "interpretation": [
                    {
                        "coding": [
                            codes.coding(codes.MERIDIAN_INTERPRETATION, "left-right-imbalance", "左右失衡"),
                            codes.coding(codes.V3_INTERPRETATION, "A", "Abnormal"),
                        ],
                        "text": "左右失衡 (left/right ≥ 2×)",
                    }
                ],
            }
        )
    out["component"] = kept
    meta = out.setdefault("meta", {})
    if codes.MERIDIAN_PROFILE not in meta.setdefault("profile", []):
        meta["profile"].append(codes.MERIDIAN_PROFILE)
    return out, reading
