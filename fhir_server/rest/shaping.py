"""Result shaping: ``_summary`` and ``_elements`` (http://hl7.org/fhir/R4/search.html#summary, #elements).

Why: clients ask for less of a resource, on read, vread and search. Shaping works on the top-level
elements of a resource only, driven by the R4 model (``Element.summary`` is ``isSummary`` in the
base definition, ``Element.min`` gives the mandatory elements). The set of JSON properties to keep
is computed once per (resource type, mode) and cached, so shaping a page of search results costs a
dict comprehension per resource.

Public API:

- :func:`parse_params` reads and checks ``_summary``/``_elements`` from request parameters and
  returns them normalised (``(None, None)``: nothing to do).
- :func:`check_params` checks already separated values (raises ``FhirError('invalid-param')``).
- :func:`shape` returns the shaped copy of a resource; :func:`shape_content` does the same for
  stored JSON bytes.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.model import get_model

SUMMARY_VALUES = ("true", "text", "data", "count", "false")

SUBSETTED_SYSTEM = "http://terminology.hl7.org/CodeSystem/v3-ObservationValue"
SUBSETTED_CODE = "SUBSETTED"
#: the tag added to every resource that shaping may have reduced (search.html#summary)
SUBSETTED = {"system": SUBSETTED_SYSTEM, "code": SUBSETTED_CODE, "display": "Resource encoded in summary mode"}

#: always returned, whatever the mode (``resourceType`` is not an element but a resource needs it)
_ALWAYS = frozenset({"resourceType", "id", "_id", "meta"})


def check_params(summary: str | None, elements: Iterable[str] | None, *, allow_count: bool = False) -> None:
    """Raise ``FhirError('invalid-param')`` (400) for values the server cannot honour.

    - ``summary`` must be one of ``true text data count false``; ``count`` only with
      ``allow_count`` (it is a search mode: the search returns the total and no entries);
    - ``_summary`` (other than ``false``) together with ``_elements`` is refused: the
      specification says they should not be used together, and their combination is undefined.
    """
    if summary is not None and summary not in SUMMARY_VALUES:
        raise FhirError("invalid-param", f"_summary must be one of {', '.join(SUMMARY_VALUES)}, not {summary!r}")
    if summary == "count" and not allow_count:
        raise FhirError("invalid-param", "_summary=count applies to searches only")
    if elements is not None and summary not in (None, "false"):
        raise FhirError(
            "invalid-param",
            f"_summary={summary} and _elements cannot be used together (http://hl7.org/fhir/R4/search.html#elements)",
        )


def parse_params(
    params: Iterable[tuple[str, str]], *, allow_count: bool = False
) -> tuple[str | None, list[str] | None]:
    """``(summary, elements)`` from request parameters, checked with :func:`check_params`.

    ``summary`` is None when absent or ``false`` (the full resource); ``elements`` is None when
    ``_elements`` is absent or names nothing (``_elements=``). Repeated ``_elements`` parameters
    add up; repeated ``_summary`` parameters must agree. So ``(None, None)`` means "return the
    resource as stored".
    """
    summaries: set[str] = set()
    elements: list[str] | None = None
    for key, value in params:
        if key == "_summary":
            summaries.add(value)
        elif key == "_elements":
            names = [n.strip() for n in value.split(",")]
            elements = (elements or []) + [n for n in names if n]
    if len(summaries) > 1:
        raise FhirError("invalid-param", f"_summary is given more than once with different values: {sorted(summaries)}")
    summary = summaries.pop() if summaries else None
    elements = elements or None
    check_params(summary, elements, allow_count=allow_count)
    return (None if summary == "false" else summary), elements


def shape(
    resource: dict[str, Any], summary: str | None = None, elements: Iterable[str] | None = None
) -> dict[str, Any]:
    """A new dict holding the part of ``resource`` that ``_summary``/``_elements`` ask for.

    ``resource`` is not changed. Kept elements are the same objects as in ``resource`` (not
    copied) except ``meta``, which is copied to add the tag. Values must have been checked with
    :func:`check_params` (``count`` and unknown values raise ``ValueError`` here).

    - ``summary='true'``: the top-level elements marked ``isSummary`` in the base definition of
      the resource type, the mandatory ones (min >= 1), ``resourceType``, ``id`` and ``meta``. A
      kept complex element is kept whole: summary marks inside it (e.g. in ``Patient.link``) are
      not applied, so non-summary children of a kept backbone element stay.
    - ``summary='text'``: ``text``, ``id``, ``meta``, the mandatory top-level elements.
    - ``summary='data'``: everything but ``text``.
    - ``summary='false'`` or None, with no ``elements``: ``resource`` itself, unchanged.
    - ``elements``: the named top-level elements (JSON names; a choice name such as ``value``
      selects ``valueQuantity`` etc.; ``Type.name`` for the resource's own type is accepted),
      plus ``resourceType``, ``id``, ``meta`` and the mandatory elements. Names the type does not
      have are ignored.

    Each primitive's ``_name`` extension companion goes with ``name``. Whenever a mode may have
    removed something, ``meta.tag`` gets the ``SUBSETTED`` coding unless it already has it.
    """
    if summary == "false":
        summary = None
    if summary is None and elements is None:
        return resource
    rtype = resource.get("resourceType", "")
    if summary is None:
        keep = _elements_keys(rtype, tuple(elements))  # type: ignore[arg-type]
    elif summary == "data":
        keep = None
    elif summary in ("true", "text"):
        keep = _summary_keys(rtype, summary)
    else:
        raise ValueError(f"shape() cannot apply _summary={summary!r}")
    if keep is None:
        out = {k: v for k, v in resource.items() if k != "text"}
    else:
        out = {k: v for k, v in resource.items() if k in keep}
    out["meta"] = _tagged(resource.get("meta"))
    if "meta" not in resource:  # put it where it belongs, after id
        out = {k: out[k] for k in ("resourceType", "id", "_id", "meta") if k in out} | out
    return out


def shape_content(content: bytes, summary: str | None, elements: Iterable[str] | None) -> dict[str, Any]:
    """:func:`shape` for stored JSON bytes (read, vread and search hold resources as bytes)."""
    return shape(fjson.loads(content), summary, elements)


def _tagged(meta: Any) -> dict[str, Any]:
    meta = dict(meta) if isinstance(meta, dict) else {}
    tags = meta.get("tag")
    tags = list(tags) if isinstance(tags, list) else []
    if not any(
        isinstance(t, dict) and t.get("system") == SUBSETTED_SYSTEM and t.get("code") == SUBSETTED_CODE for t in tags
    ):
        tags.append(dict(SUBSETTED))
    meta["tag"] = tags
    return meta


def _with_companions(names: Iterable[str]) -> frozenset[str]:
    names = set(names)
    return frozenset(names | {"_" + n for n in names} | _ALWAYS)


@functools.cache
def _summary_keys(rtype: str, mode: str) -> frozenset[str]:
    """JSON properties kept by ``_summary=true`` (summary or mandatory) or ``text`` (mandatory + text)."""
    tdef = get_model().types.get(rtype)
    elements = tdef.elements if tdef is not None else {}
    if mode == "true":
        names = [n for n, e in elements.items() if e.summary or e.min >= 1]
    else:
        names = [n for n, e in elements.items() if e.min >= 1] + ["text"]
    return _with_companions(names)


@functools.cache
def _selectors(rtype: str) -> dict[str, tuple[str, ...]]:
    """Requestable name -> the JSON properties it selects (``value`` -> ``valueQuantity``, ...)."""
    tdef = get_model().types.get(rtype)
    if tdef is None:
        return {}
    out: dict[str, tuple[str, ...]] = {name: (name,) for name in tdef.elements}
    for base, variants in tdef.choices.items():
        base = base.removesuffix("[x]")
        out[base] = out[base + "[x]"] = tuple(e.name for e in variants)
    for name in list(out):
        out[f"{rtype}.{name}"] = out[name]
    return out


@functools.lru_cache(maxsize=4096)
def _elements_keys(rtype: str, requested: tuple[str, ...]) -> frozenset[str]:
    """JSON properties kept by ``_elements``: the requested, the mandatory, id and meta."""
    tdef = get_model().types.get(rtype)
    selectors = _selectors(rtype)
    names = [n for n, e in tdef.elements.items() if e.min >= 1] if tdef is not None else []
    for name in requested:
        names.extend(selectors.get(name, ()))
    return _with_companions(names)
