"""FHIR JSON in and out, fast, without losing decimal precision.

Why: orjson parses and writes several times faster than the standard library, but turns
``1.50`` into the float ``1.5``; FHIR requires decimals to keep their precision (it decides
search ranges, http://hl7.org/fhir/R4/search.html#number). Documents whose decimals a float
would change take a slower path that keeps them as :class:`FhirDecimal`, which is written back
verbatim through ``orjson.Fragment``.

Large documents take the standard library's parser too: orjson first builds its own document
tree and then the Python objects, so it peaks at ~17× the input (a 16 MB CodeSystem: 272 MB
transient for 82 MB of result; the standard parser peaks at 115 MB), which alone would take a
worker over its 300 MB budget.
"""

from __future__ import annotations

import json as _stdjson
import re
from decimal import Decimal
from typing import Any

import orjson

from fhir_server.errors import FhirError

# A JSON number a float round trip would change: trailing zeros after the point (other than a
# lone ``.0``), an exponent, or more than 15 fraction digits.
_LOSSY_NUMBER = re.compile(rb"[:\[,]\s*-?\d+(?:\.(?:\d*[1-9]0+|00+)(?=[\s,\]}])|(?:\.\d+)?[eE][-+]?\d+|\.\d{16,})")


#: above this many bytes a document is parsed by the standard library (see the module docstring)
ORJSON_MAX_BYTES = 4 * 1024 * 1024


class FhirDecimal(Decimal):
    """A decimal that keeps the digits it was written with."""

    __slots__ = ()


def _exact_float(text: str) -> float | FhirDecimal:
    # Only the decimals a float would change become FhirDecimal: floats stay cheap downstream.
    value = float(text)
    return value if repr(value) == text else FhirDecimal(text)


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal):
        return orjson.Fragment(str(obj))
    raise TypeError(f"cannot serialise {type(obj).__name__}")


def loads(data: bytes | str) -> Any:
    """Parse JSON; raise ``FhirError('malformed')`` with the position on bad input."""
    try:
        if isinstance(data, str):
            data = data.encode("utf-8")
        if len(data) > ORJSON_MAX_BYTES or _LOSSY_NUMBER.search(data):
            return _stdjson.loads(data, parse_float=_exact_float)
        return orjson.loads(data)
    except (orjson.JSONDecodeError, _stdjson.JSONDecodeError, UnicodeDecodeError) as exc:
        raise FhirError("malformed", f"Invalid JSON: {exc}") from None


def dumps(obj: Any, pretty: bool = False) -> bytes:
    opts = orjson.OPT_INDENT_2 if pretty else 0
    return orjson.dumps(obj, default=_default, option=opts)


def parse_decimal(text: str) -> int | float | Decimal:
    """Number for a FHIR decimal written as ``text`` (from XML or a search), keeping precision."""
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    value = float(text)
    if repr(value) == text:
        return value
    return FhirDecimal(text)
