"""Fast structural validation of FHIR R4 JSON resources.

Why: every write is validated before it is stored, and a general-purpose model library
(``fhir.resources`` builds a pydantic object per element) manages a few thousand resources
a second on one core, which makes validation the ingest bottleneck. Storage keeps the JSON as it came, so
the server only needs a verdict and the location of each problem, not an object tree. This
module walks the parsed JSON once against tables precompiled from the R4 element model
(:mod:`fhir_server.model`) and reports :class:`~fhir_server.errors.Issue` objects whose
``expression`` is a FHIRPath location such as ``Patient.name[0].given[1]``.

What is checked (http://hl7.org/fhir/R4/json.html, datatypes.html, resource.html,
references.html, narrative.html, extensibility.html):

* ``resourceType`` is a known concrete resource type (and the expected one, when given);
* every property is an element of its type; ``_x`` only next to a primitive ``x``;
* arrays exactly where the element repeats; no empty objects, arrays or strings, no nulls
  except as placeholders in primitive arrays paired with a ``_x`` array of the same length;
* minimum cardinality, including required choice elements; at most one type of a choice;
* the JSON type, regular expression, range and calendar of every primitive value;
* required bindings of ``code``, ``Coding`` and ``CodeableConcept`` elements;
* literal references (relative ``Type/id``, absolute URL, ``urn:uuid:``/``urn:oid:``,
  ``#fragment`` to a contained resource, conditional ``Type?query``) and allowed target types;
* Extension (ext-1), contained resources (dom-2, dom-3 as a warning, dom-4, dom-5) and
  narrative XHTML (well-formed, an XHTML ``div``, only the basic HTML elements and attributes,
  no scripts or event attributes, HTML named entities allowed; txt-1, txt-2).

Checks are data: each complex type or backbone element is compiled once into a
:class:`_Shape` (JSON property name to a small tuple saying how to check it), and each
primitive type into a function returning ``None`` or ``(code, message)``. Location strings
are built only for complex elements and for the issues themselves.
"""

from __future__ import annotations

import binascii
import html.entities
import math
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from xml.parsers import expat

from fhir_server.errors import Issue
from fhir_server.model import Element, Model, get_model

__all__ = ["validate", "has_errors"]

#: ``None`` when a primitive value is fine, else ``(issue code, message)``.
PrimResult = tuple[str, str] | None
PrimCheck = Callable[[Any], PrimResult]

MAX_STRING = 1024 * 1024  # "strings SHALL NOT exceed 1MB (1024*1024 characters)" (datatypes.html#string)
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
XHTML_NS = "http://www.w3.org/1999/xhtml"
XML_NS = "http://www.w3.org/XML/1998/namespace"
ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})


# --------------------------------------------------------------------------- primitives

_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
_CODE_RE = re.compile(r"[^\s]+(?:\s[^\s]+)*")
_NO_WS_RE = re.compile(r"\S+")
_OID_RE = re.compile(r"urn:oid:[0-2](?:\.(?:0|[1-9][0-9]*))+", re.ASCII)
_UUID_RE = re.compile(r"urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.ASCII)
_UUID_ANY_CASE_RE = re.compile(r"urn:uuid:[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_YMD = r"([0-9]{4})(?:-(0[1-9]|1[0-2])(?:-(0[1-9]|[12][0-9]|3[01])"
_TIME = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?"
_TZ = r"(?:Z|[+-](?:(?:0[0-9]|1[0-3]):[0-5][0-9]|14:00))"
_DATE_RE = re.compile(_YMD + r")?)?", re.ASCII)
_DATETIME_RE = re.compile(_YMD + r"(?:T" + _TIME + _TZ + r")?)?)?", re.ASCII)
_INSTANT_RE = re.compile(r"([0-9]{4})-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T" + _TIME + _TZ, re.ASCII)
_TIME_RE = re.compile(_TIME, re.ASCII)
_DAYS = (0, 31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if value is True or value is False:
        return "boolean"
    if isinstance(value, (int, float, Decimal)):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return type(value).__name__


def _not_a(kind: str, value: Any) -> tuple[str, str]:
    if value is None:
        return "structure", "null is not allowed here (omit the element instead)"
    if value.__class__ is list:
        return "structure", f"element does not repeat: expected a single JSON {kind}, got an array"
    return "structure", f"expected a JSON {kind}, got {_json_type(value)}"


def _string_shape(value: Any, type_name: str) -> PrimResult:
    """Common JSON checks for string-based primitives; ``None`` if a non-empty string."""
    if value.__class__ is not str:
        return _not_a(f"string ({type_name})", value)
    if not value:
        return "value", f"empty string is not a valid {type_name} (omit the element instead)"
    return None


def _long_string(value: Any, type_name: str) -> PrimResult:
    err = _string_shape(value, type_name)
    if err is None and len(value) > MAX_STRING:
        return "value", f"{type_name} exceeds the limit of 1MB (1024*1024 characters)"
    return err


def check_string(value: Any) -> PrimResult:
    if value.__class__ is str and value and len(value) <= MAX_STRING:
        return None
    return _long_string(value, "string")


def check_markdown(value: Any) -> PrimResult:
    if value.__class__ is str and value and len(value) <= MAX_STRING:
        return None
    return _long_string(value, "markdown")


def _no_whitespace(value: str) -> bool:
    # isprintable() is False for every whitespace character except the ASCII space
    return (value.isprintable() and " " not in value) or _NO_WS_RE.fullmatch(value) is not None


def _uri_like(type_name: str) -> PrimCheck:
    def check(value: Any) -> PrimResult:
        if value.__class__ is str and value and value.isprintable() and " " not in value:
            return None
        err = _string_shape(value, type_name)
        if err is None and not _no_whitespace(value):
            return "value", f"{type_name} {_show(value)} must not contain whitespace"
        return err

    check.__name__ = f"check_{type_name}"
    return check


check_uri = _uri_like("uri")
check_url = _uri_like("url")
check_canonical = _uri_like("canonical")


def check_id(value: Any) -> PrimResult:
    if value.__class__ is str and _ID_RE.fullmatch(value) is not None:
        return None
    err = _string_shape(value, "id")
    if err is not None:
        return err
    return "value", f"invalid id {_show(value)}: 1-64 characters of A-Z, a-z, 0-9, '-' and '.'"


def check_code(value: Any) -> PrimResult:
    if value.__class__ is str and value and value.isprintable() and " " not in value:
        return None  # no whitespace at all
    err = _string_shape(value, "code")
    if err is not None:
        return err
    if _CODE_RE.fullmatch(value) is None:
        return "value", f"invalid code {_show(value)}: no leading, trailing or double whitespace"
    return None


def _regex_check(type_name: str, regex: re.Pattern[str], hint: str) -> PrimCheck:
    def check(value: Any) -> PrimResult:
        if value.__class__ is str and regex.fullmatch(value) is not None:
            return None
        err = _string_shape(value, type_name)
        return err or ("value", f"invalid {type_name} {_show(value)}: {hint}")

    check.__name__ = f"check_{type_name}"
    return check


check_oid = _regex_check("oid", _OID_RE, "expected urn:oid: followed by a dotted OID")
check_uuid = _regex_check("uuid", _UUID_RE, "expected urn:uuid: followed by a lower-case UUID")
check_time = _regex_check("time", _TIME_RE, "expected hh:mm:ss[.fff]")


def _calendar(type_name: str, value: str, m: re.Match[str]) -> PrimResult:
    year, month, day = m.group(1), m.group(2), m.group(3)
    if year == "0000":
        return "value", f"invalid {type_name} {_show(value)}: year 0000 does not exist"
    if day is not None and day > "28":
        limit = _DAYS[int(month)]
        if month == "02":
            y = int(year)
            limit = 29 if (y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)) else 28
        if int(day) > limit:
            return "value", f"invalid {type_name} {_show(value)}: day {day} does not exist in that month"
    return None


def _date_check(type_name: str, regex: re.Pattern[str], hint: str) -> PrimCheck:
    def check(value: Any) -> PrimResult:
        if value.__class__ is str:
            m = regex.fullmatch(value)
            if m is not None:
                if m.group(3) is None or m.group(3) <= "28":
                    return None if m.group(1) != "0000" else _calendar(type_name, value, m)
                return _calendar(type_name, value, m)
        err = _string_shape(value, type_name)
        return err or ("value", f"invalid {type_name} {_show(value)}: {hint}")

    check.__name__ = f"check_{type_name}"
    return check


check_date = _date_check("date", _DATE_RE, "expected YYYY, YYYY-MM or YYYY-MM-DD")
check_datetime = _date_check(
    "dateTime", _DATETIME_RE, "expected YYYY, YYYY-MM, YYYY-MM-DD or YYYY-MM-DDThh:mm:ss[.fff] with a time zone"
)
check_instant = _date_check("instant", _INSTANT_RE, "expected YYYY-MM-DDThh:mm:ss[.fff] with a time zone (Z or +hh:mm)")


def check_boolean(value: Any) -> PrimResult:
    if value is True or value is False:
        return None
    return _not_a("boolean", value)


def _int_check(type_name: str, low: int) -> PrimCheck:
    def check(value: Any) -> PrimResult:
        if value.__class__ is int and low <= value <= INT_MAX:
            return None
        if value.__class__ is not int:
            if isinstance(value, (float, Decimal)) and not isinstance(value, bool):
                return "value", f"{type_name} must be a whole number without a fraction, got {value}"
            return _not_a(f"number ({type_name})", value)
        return "value", f"{type_name} {value} out of range {low}..{INT_MAX}"

    check.__name__ = f"check_{type_name}"
    return check


check_integer = _int_check("integer", INT_MIN)
check_unsigned_int = _int_check("unsignedInt", 0)
check_positive_int = _int_check("positiveInt", 1)


def check_decimal(value: Any) -> PrimResult:
    cls = value.__class__
    if cls is int:
        return None
    if cls is float:
        return None if math.isfinite(value) else ("value", f"decimal must be finite, got {value}")
    if isinstance(value, Decimal):
        return None if value.is_finite() else ("value", f"decimal must be finite, got {value}")
    return _not_a("number (decimal)", value)


def check_base64(value: Any) -> PrimResult:
    err = _string_shape(value, "base64Binary")
    if err is not None:
        return err
    try:
        binascii.a2b_base64(value, strict_mode=True)
        return None
    except (binascii.Error, ValueError):
        pass
    try:  # whitespace (line breaks) is allowed between groups of four characters
        binascii.a2b_base64("".join(value.split()), strict_mode=True)
        return None
    except (binascii.Error, ValueError) as exc:
        return "value", f"invalid base64Binary content: {exc}"


# ------------------------------------------------------------------------------- xhtml

#: Elements of HTML 4.0 chapters 7-11 (except 9.4) and 15, plus a and img (narrative.html).
XHTML_ELEMENTS = frozenset(
    "a abbr acronym address area b bdo big blockquote br caption cite code col colgroup dd dfn "
    "div dl dt em h1 h2 h3 h4 h5 h6 hr i img kbd li map ol p pre q samp small span strong sub "
    "sup table tbody td tfoot th thead tr tt ul var".split()
)
XHTML_ATTRIBUTES = frozenset(
    "abbr accesskey align alt axis bgcolor border cellhalign cellpadding cellspacing cellvalign "
    "char charoff charset class colspan compact coords dir frame headers height href hreflang "
    "hspace id lang longdesc name nowrap rel rev rowspan rules scope shape span src start style "
    "summary tabindex title type usemap valign value vspace width".split()
)
_XML_LANG = f"{XML_NS} lang"


class _XhtmlChecker:
    """One pass of expat over a narrative div, recording the first rule it breaks."""

    __slots__ = ("error", "seen_root", "content")

    def __init__(self) -> None:
        self.error: str | None = None
        self.seen_root = False
        self.content = False

    def start(self, name: str, attrs: dict[str, str]) -> None:
        ns, _, local = name.rpartition(" ")
        if not self.seen_root:
            self.seen_root = True
            if ns != XHTML_NS or local != "div":
                self.fail('the narrative must be a single <div xmlns="http://www.w3.org/1999/xhtml"> element')
        if ns != XHTML_NS:
            self.fail(f"element <{local}> is not in the XHTML namespace")
        elif local not in XHTML_ELEMENTS:
            self.fail(f"element <{local}> is not allowed in a narrative")
        if local == "img":
            self.content = True
        for attr, val in attrs.items():
            if attr in XHTML_ATTRIBUTES or attr == _XML_LANG:
                if (attr == "href" or attr == "src") and val.strip().lower().startswith(("javascript:", "vbscript:")):
                    self.fail(f"script URL in attribute '{attr}' is not allowed in a narrative")
            else:
                self.fail(f"attribute '{attr.rpartition(' ')[2]}' on <{local}> is not allowed in a narrative")

    def entity(self, name: str, is_parameter_entity: bool) -> None:
        """Named entities beyond XML's five: only those XHTML (HTML 4) defines."""
        if name in html.entities.name2codepoint:
            self.content = True
        else:
            self.fail(f"undefined entity &{name}; in the narrative")

    def instruction(self, target: str, data: str) -> None:
        self.fail(f"processing instruction <?{target}?> is not allowed in a narrative")

    def fail(self, message: str) -> None:
        if self.error is None:
            self.error = message

    def text(self, data: str) -> None:
        if not self.content and not data.isspace():
            self.content = True


def check_xhtml(value: Any) -> PrimResult:
    err = _string_shape(value, "xhtml")
    if err is not None:
        return err
    if not value.lstrip().startswith("<div"):
        return "value", 'narrative must be a <div xmlns="http://www.w3.org/1999/xhtml"> element'
    state = _XhtmlChecker()
    parser = expat.ParserCreate(namespace_separator=" ")
    parser.StartElementHandler = state.start
    parser.CharacterDataHandler = state.text
    parser.ProcessingInstructionHandler = state.instruction
    parser.UseForeignDTD(True)  # undeclared entities (&nbsp;) go to SkippedEntityHandler, not an error
    parser.SkippedEntityHandler = state.entity
    try:
        parser.Parse(value, True)
    except expat.ExpatError as exc:
        return "value", f"narrative is not well-formed XHTML: {exc}"
    if state.error is not None:
        return "value", state.error
    if not state.content:
        return "value", "narrative must have some non-whitespace content (txt-2)"
    return None


PRIMITIVE_CHECKS: dict[str, PrimCheck] = {
    "base64Binary": check_base64,
    "boolean": check_boolean,
    "canonical": check_canonical,
    "code": check_code,
    "date": check_date,
    "dateTime": check_datetime,
    "decimal": check_decimal,
    "id": check_id,
    "instant": check_instant,
    "integer": check_integer,
    "markdown": check_markdown,
    "oid": check_oid,
    "positiveInt": check_positive_int,
    "string": check_string,
    "time": check_time,
    "unsignedInt": check_unsigned_int,
    "uri": check_uri,
    "url": check_url,
    "uuid": check_uuid,
    "xhtml": check_xhtml,
}


def _show(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 4] + "...'"


# ------------------------------------------------------------------------ compiled shapes

# How a JSON property is checked: the first item of each property tuple.
STR, PRIM, PRIM_LIST, CPLX, CPLX_LIST, RES, RES_LIST, CONTAINED, SHADOW, SHADOW_LIST, SKIP = range(11)

#: (mode, element name, checker or shape, hook or None)
Prop = tuple[int, str, Any, Any]
Hook = Callable[[dict, str, "_State"], None]


@dataclass(slots=True, eq=False)
class _Shape:
    """The compiled check table of one complex type, backbone element or resource type."""

    name: str
    props: dict[str, Prop] = field(default_factory=dict)
    required: tuple[tuple[str, str], ...] = ()
    choice_of: dict[str, tuple[str, str]] | None = None  # JSON key -> (group, member)
    required_groups: tuple[str, ...] = ()
    post: Hook | None = None
    check_ele1: bool = True  # ele-1: an object with only an id is empty (not for resources)
    has_rules: bool = False  # required elements, choices or a post hook: checked after the properties


class _State:
    """Per-call state: the issues found and the fragment references of the current container."""

    __slots__ = ("issues", "frags", "allow_cond", "in_contained")

    def __init__(self, allow_cond: bool) -> None:
        self.issues: list[Issue] = []
        self.frags: list[tuple[str, str, bool]] = []  # (reference, location, from a contained resource)
        self.allow_cond = allow_cond
        self.in_contained = False

    def error(self, code: str, message: str, path: str) -> None:
        self.issues.append(Issue("error", code, message, [path]))

    def warning(self, code: str, message: str, path: str) -> None:
        self.issues.append(Issue("warning", code, message, [path]))


class _Compiler:
    """Builds the :class:`_Shape` tables of every resource type from the model (~30 ms).

    Everything is compiled up front and never changed afterwards, so concurrent requests
    can share the tables without locking.
    """

    def __init__(self, model: Model) -> None:
        self.model = model
        self.concrete = frozenset(model.resource_types - ABSTRACT_RESOURCES)
        self._shapes: dict[int, _Shape] = {}
        self._code_checks: dict[str, PrimCheck] = {}
        self.shadow_shape = self._shadow_shape()
        self.resources: dict[str, _Shape] = {
            name: self.shape_of(model.types[name].elements, name, resource=True) for name in sorted(self.concrete)
        }

    def _shadow_shape(self) -> _Shape:
        """The object ``_x`` next to a primitive ``x``: its id and extensions only."""
        ext = self.model.types["Extension"].elements
        shape = _Shape("Element", check_ele1=False)
        shape.props = {
            "id": (STR, "id", check_string, None),
            "extension": (CPLX_LIST, "extension", self.shape_of(ext, "Extension", resource=False), None),
        }
        return shape

    def shape_of(self, elements: dict[str, Element], name: str, resource: bool) -> _Shape:
        key = id(elements)
        shape = self._shapes.get(key)
        if shape is not None:
            return shape
        shape = _Shape(name, check_ele1=not resource)
        self._shapes[key] = shape  # registered first: content references are recursive
        self._fill(shape, elements, resource)
        return shape

    def _fill(self, shape: _Shape, elements: dict[str, Element], resource: bool) -> None:
        props: dict[str, Prop] = {}
        required: list[tuple[str, str]] = []
        groups: dict[str, list[str]] = {}
        required_groups: set[str] = set()
        for name, elem in elements.items():
            props[name] = self._prop(elem, resource)
            if props[name][0] in (STR, PRIM, PRIM_LIST) and self._has_shadow(elem, resource):
                props["_" + name] = (SHADOW_LIST if elem.repeats else SHADOW, name, None, None)
            if elem.choice:
                group = elem.choice.removesuffix("[x]")  # the model spells some groups with [x]
                groups.setdefault(group, []).append(name)
                if elem.min:
                    required_groups.add(group)
            elif elem.min:
                required.append((name, "_" + name))
        if resource:
            props["resourceType"] = (SKIP, "resourceType", None, None)
        choice_of: dict[str, tuple[str, str]] = {}
        for group, members in groups.items():
            for member in members:
                choice_of[member] = choice_of["_" + member] = (group, member)
        shape.props = props
        shape.required = tuple(required)
        shape.choice_of = choice_of or None
        shape.required_groups = tuple(sorted(required_groups))
        if elements is self.model.types["Extension"].elements:
            shape.post = _extension_rules
        shape.has_rules = bool(shape.required or shape.choice_of or shape.post)

    @staticmethod
    def _has_shadow(elem: Element, resource: bool) -> bool:
        """Whether ``_x`` may carry an id and extensions for ``x`` (json.html#primitive).

        Not for the narrative div, nor for what XML writes as attributes: element ids and
        Extension.url.
        """
        if elem.type == "xhtml" or elem.path == "Extension.url":
            return False
        return resource or elem.name != "id"

    def _prop(self, elem: Element, resource: bool) -> Prop:
        etype = elem.type
        if etype in self.model.primitive_types:
            check = self._primitive(elem, resource)
            if elem.repeats:
                return (PRIM_LIST, elem.name, check, None)
            return (STR if check is check_string else PRIM, elem.name, check, None)
        if etype == "Resource":
            if elem.name == "contained" and resource:
                return (CONTAINED, elem.name, None, None)
            return (RES_LIST if elem.repeats else RES, elem.name, None, None)
        children = self.model.children_of(elem)
        sub_name = elem.path if elem.children is not None else etype
        sub = self.shape_of(children, sub_name, resource=False)
        return (CPLX_LIST if elem.repeats else CPLX, elem.name, sub, self._hook(elem))

    def _primitive(self, elem: Element, resource: bool) -> PrimCheck:
        if elem.name == "id" and not resource:
            return check_string  # Element.id is a string; only Resource.id has the id syntax
        if elem.path == "Extension.url":
            return check_uri
        if elem.binding and elem.type == "code":
            return self._code_check(elem.binding)
        return PRIMITIVE_CHECKS[elem.type]

    def _code_check(self, valueset: str) -> PrimCheck:
        check = self._code_checks.get(valueset)
        if check is None:
            systems = self.model.codes(valueset)
            if not systems or not all(systems.values()):
                check = check_code  # not enumerable here: syntax only
            else:
                check = _bound_code_check(valueset, frozenset().union(*systems.values()))
            self._code_checks[valueset] = check
        return check

    def _hook(self, elem: Element) -> Hook | None:
        if elem.type == "Reference":
            targets = elem.targets
            if targets and "Resource" in targets:
                targets = None
            return _reference_hook(frozenset(targets) if targets else None, self.concrete)
        if elem.binding and elem.type in ("Coding", "CodeableConcept"):
            systems = self.model.codes(elem.binding)
            if systems and all(systems.values()):
                if elem.type == "Coding":
                    return _coding_hook(elem.binding, systems)
                return _concept_hook(elem.binding, systems)
        return None


def _bound_code_check(valueset: str, codes: frozenset[str]) -> PrimCheck:
    def check(value: Any) -> PrimResult:
        if value.__class__ is str and value in codes:
            return None
        err = check_code(value)
        if err is not None:
            return err
        return "code-invalid", f"code {_show(value)} is not in the required value set {valueset}"

    return check


# ----------------------------------------------------------------------- element rules


def _extension_rules(obj: dict, path: str, st: _State) -> None:
    """ext-1: an extension has either a value[x] or nested extensions, not both."""
    has_value = False
    for key in obj:
        if key.startswith("value") or key.startswith("_value"):
            has_value = True
            break
    if has_value == ("extension" in obj):
        found = "both" if has_value else "neither"
        message = f"an extension must have either a value[x] or nested extensions, found {found} (ext-1)"
        st.error("invalid", message, path)


def _coding_error(valueset: str, systems: dict[str, frozenset[str]], coding: Any, path: str, st: _State) -> bool:
    """Check one Coding against a required binding; True if its system belongs to the value set."""
    if coding.__class__ is not dict:
        return False
    system = coding.get("system")
    codes = systems.get(system) if system.__class__ is str else None
    if codes is None:
        return False
    code = coding.get("code")
    if code.__class__ is str and code not in codes:
        st.error("code-invalid", f"code {_show(code)} is not in the required value set {valueset}", path + ".code")
    return True


def _coding_hook(valueset: str, systems: dict[str, frozenset[str]]) -> Hook:
    def hook(obj: dict, path: str, st: _State) -> None:
        if "system" in obj and not _coding_error(valueset, systems, obj, path, st):
            st.warning("code-invalid", f"coding system is not part of the required value set {valueset}", path)

    return hook


def _concept_hook(valueset: str, systems: dict[str, frozenset[str]]) -> Hook:
    def hook(obj: dict, path: str, st: _State) -> None:
        codings = obj.get("coding")
        if codings.__class__ is not list:
            return
        matched = False
        for i, coding in enumerate(codings):
            matched |= _coding_error(valueset, systems, coding, f"{path}.coding[{i}]", st)
        if not matched:
            st.warning("code-invalid", f"no coding from the required value set {valueset}", path)

    return hook


_REL_REF_RE = re.compile(r"([A-Za-z]+)/([A-Za-z0-9\-.]{1,64})(?:/_history/[A-Za-z0-9\-.]{1,64})?", re.ASCII)
_ABS_URL_RE = re.compile(r"https?://\S+", re.ASCII)
_COND_REF_RE = re.compile(r"([A-Za-z]+)\?\S*")


def _reference_hook(targets: frozenset[str] | None, concrete: frozenset[str]) -> Hook:
    def hook(obj: dict, path: str, st: _State) -> None:
        ref = obj.get("reference")
        if ref.__class__ is str and ref:
            if ref.startswith("urn:uuid:") and len(ref) == 45 and _UUID_ANY_CASE_RE.fullmatch(ref):
                return _reference_type(obj, concrete, path, st)
            m = _REL_REF_RE.fullmatch(ref)
            if m is not None:
                rtype = m.group(1)
                if rtype not in concrete:
                    st.error("value", f"reference {_show(ref)}: unknown resource type '{rtype}'", path + ".reference")
                elif targets is not None and rtype not in targets:
                    allowed = ", ".join(sorted(targets))
                    st.error(
                        "invalid",
                        f"reference {_show(ref)}: a {rtype} is not allowed here (allowed: {allowed})",
                        path + ".reference",
                    )
            else:
                _other_reference(ref, targets, concrete, path, st)
        _reference_type(obj, concrete, path, st)

    return hook


def _reference_type(obj: dict, concrete: frozenset[str], path: str, st: _State) -> None:
    rtype = obj.get("type")
    if rtype.__class__ is str and rtype and rtype not in concrete and ":" not in rtype:
        st.error(
            "code-invalid",
            f"Reference.type {_show(rtype)} is neither a resource type nor an absolute URI",
            path + ".type",
        )


def _other_reference(ref: str, targets: frozenset[str] | None, concrete: frozenset[str], path: str, st: _State) -> None:
    """Reference forms other than relative ``Type/id``."""
    where = path + ".reference"
    if ref[0] == "#":
        st.frags.append((ref, where, st.in_contained))
        return
    if ref.startswith("urn:"):
        if _UUID_ANY_CASE_RE.fullmatch(ref) or _OID_RE.fullmatch(ref):
            return
        st.error("value", f"invalid reference {_show(ref)}: expected urn:uuid:<uuid> or urn:oid:<oid>", where)
        return
    if _ABS_URL_RE.fullmatch(ref):
        return
    m = _COND_REF_RE.fullmatch(ref)
    if m is not None:
        rtype = m.group(1)
        if not st.allow_cond:
            st.error("value", f"conditional reference {_show(ref)} is only allowed in a transaction", where)
        elif rtype not in concrete:
            st.error("value", f"conditional reference {_show(ref)}: unknown resource type '{rtype}'", where)
        elif targets is not None and rtype not in targets:
            allowed = ", ".join(sorted(targets))
            st.error("invalid", f"reference {_show(ref)}: a {rtype} is not allowed here (allowed: {allowed})", where)
        return
    st.error(
        "value",
        f"invalid reference {_show(ref)}: expected Type/id, an absolute URL, urn:uuid:, urn:oid:, "
        "#contained-id or Type?search",
        where,
    )


# ------------------------------------------------------------------------------ walker

_compiler: _Compiler | None = None
_compiler_lock = threading.Lock()


def _get_compiler() -> _Compiler:
    global _compiler
    with _compiler_lock:
        if _compiler is None:
            _compiler = _Compiler(get_model())
    return _compiler


def validate(resource: Any, expected_type: str | None = None, allow_conditional_refs: bool = True) -> list[Issue]:
    """Issues found in ``resource`` (parsed FHIR R4 JSON); valid if none has severity error.

    ``expected_type`` is the resource type the endpoint requires; ``allow_conditional_refs``
    permits ``Type?query`` references, which only a transaction Bundle may contain.
    """
    comp = _compiler or _get_compiler()
    st = _State(allow_conditional_refs)
    root = resource.get("resourceType") if resource.__class__ is dict else None
    path = root if root.__class__ is str and root in comp.concrete else (expected_type or "Resource")
    if expected_type is not None and root.__class__ is str and root != expected_type:
        st.error("invalid", f"expected a {expected_type} resource, got resourceType {_show(root)}", path)
    _resource(comp, resource, path, st)
    return st.issues


def has_errors(issues: Iterable[Issue]) -> bool:
    return any(i.severity == "error" for i in issues)


def _resource(comp: _Compiler, obj: Any, path: str, st: _State) -> None:
    """A resource that starts a new container: its own contained resources and fragments."""
    shape = _resource_shape(comp, obj, path, st)
    if shape is None:
        return
    saved, saved_in = st.frags, st.in_contained
    st.frags, st.in_contained = [], False
    _walk(comp, obj, shape, path, st)
    if st.frags or "contained" in obj:
        _check_fragments(obj, path, st)
    st.frags, st.in_contained = saved, saved_in


def _resource_shape(comp: _Compiler, obj: Any, path: str, st: _State) -> _Shape | None:
    if obj.__class__ is not dict:
        st.error("structure", f"expected a resource (JSON object), got {_json_type(obj)}", path)
        return None
    rtype = obj.get("resourceType")
    if rtype is None:
        st.error("required", "missing resourceType", path)
        return None
    shape = comp.resources.get(rtype) if rtype.__class__ is str else None
    if shape is None:
        st.error("not-supported", f"unknown resource type {_show(rtype)}", path)
    return shape


def _contained(comp: _Compiler, items: Any, path: str, st: _State) -> None:
    """``contained`` resources: dom-2, dom-4, dom-5; they share the container's fragments."""
    if items.__class__ is not list or not items:
        _bad_array(items, path, st)
        return
    saved = st.in_contained
    st.in_contained = True
    for i, item in enumerate(items):
        ipath = f"{path}[{i}]"
        shape = _resource_shape(comp, item, ipath, st)
        if shape is None:
            continue
        if "contained" in item:
            st.error("invalid", "a contained resource must not contain resources itself (dom-2)", ipath + ".contained")
        if "id" not in item:
            st.warning("required", "a contained resource should have an id so it can be referenced", ipath)
        meta = item.get("meta")
        if meta.__class__ is dict:
            for key, rule in (("versionId", "dom-4"), ("lastUpdated", "dom-4"), ("security", "dom-5")):
                if key in meta:
                    message = f"a contained resource must not have meta.{key} ({rule})"
                    st.error("invalid", message, f"{ipath}.meta.{key}")
        _walk(comp, item, shape, ipath, st)
    st.in_contained = saved


def _check_fragments(obj: dict, path: str, st: _State) -> None:
    """ref-1 (``#id`` names a contained resource) and dom-3 (each contained one is used)."""
    contained = obj.get("contained")
    ids: set[str] = set()
    if contained.__class__ is list:
        ids = {c["id"] for c in contained if c.__class__ is dict and c.get("id").__class__ is str}
    used: set[str] = set()
    for ref, where, from_contained in st.frags:
        local = ref[1:]
        if local in ids:
            used.add(local)
        elif not local:
            if not from_contained:
                st.error("value", "reference '#' (the container) is only allowed inside a contained resource", where)
        else:
            st.error("value", f"reference {_show(ref)} does not match the id of a contained resource (ref-1)", where)
    if ids - used:
        _check_dom3(obj, ids - used, path, st)


def _check_dom3(obj: dict, unused: set[str], path: str, st: _State) -> None:
    """dom-3 (warning): every contained resource is referenced, or refers to its container."""
    strings = set(_all_strings(obj))
    for i, item in enumerate(obj["contained"]):
        cid = item.get("id") if item.__class__ is dict else None
        if cid.__class__ is not str or cid not in unused:
            continue
        if "#" + cid in strings or "#" in set(_all_strings(item)):
            continue
        st.warning(
            "invalid",
            f"contained resource '{cid}' is not referenced from the resource (dom-3)",
            f"{path}.contained[{i}]",
        )


def _all_strings(obj: Any) -> Iterable[str]:
    stack = [obj]
    while stack:
        cur = stack.pop()
        if cur.__class__ is dict:
            stack.extend(cur.values())
        elif cur.__class__ is list:
            stack.extend(cur)
        elif cur.__class__ is str and cur.startswith("#"):
            yield cur


def _walk(comp: _Compiler, obj: dict, shape: _Shape, path: str, st: _State) -> None:
    """Check the properties of one JSON object against its compiled shape."""
    props = shape.props
    for key, val in obj.items():
        p = props.get(key)
        if p is None:
            _unknown(key, shape, path, st)
            continue
        mode = p[0]
        if mode == STR:
            if val.__class__ is str and val and len(val) <= MAX_STRING:
                continue
            err = check_string(val)
            if err is not None:
                st.error(err[0], err[1], f"{path}.{key}")
        elif mode == PRIM:
            err = p[2](val)
            if err is not None:
                st.error(err[0], err[1], f"{path}.{key}")
        elif mode == CPLX:
            if val.__class__ is dict and val:
                sub = f"{path}.{key}"
                _walk(comp, val, p[2], sub, st)
                if p[3] is not None:
                    p[3](val, sub, st)
            else:
                _bad_object(val, f"{path}.{key}", st)
        elif mode == CPLX_LIST:
            if val.__class__ is list and val:
                sub_shape, hook = p[2], p[3]
                for i, item in enumerate(val):
                    sub = f"{path}.{key}[{i}]"
                    if item.__class__ is dict and item:
                        _walk(comp, item, sub_shape, sub, st)
                        if hook is not None:
                            hook(item, sub, st)
                    else:
                        _bad_object(item, sub, st)
            else:
                _bad_array(val, f"{path}.{key}", st)
        elif mode == PRIM_LIST:
            _prim_list(obj, key, val, p[2], path, st)
        elif mode == SHADOW:
            _shadow(comp, obj, key, val, p[1], path, st)
        elif mode == SHADOW_LIST:
            _shadow_list(comp, obj, key, val, p[1], path, st)
        elif mode == RES:
            _resource(comp, val, f"{path}.{key}", st)
        elif mode == RES_LIST:
            if val.__class__ is list and val:
                for i, item in enumerate(val):
                    _resource(comp, item, f"{path}.{key}[{i}]", st)
            else:
                _bad_array(val, f"{path}.{key}", st)
        elif mode == CONTAINED:
            _contained(comp, val, f"{path}.{key}", st)
    if shape.has_rules:
        _rules(obj, shape, path, st)
    if len(obj) == 1 and "id" in obj and shape.check_ele1:
        st.error("structure", "an element must have a value or child elements, not only an id (ele-1)", path)


def _rules(obj: dict, shape: _Shape, path: str, st: _State) -> None:
    """Minimum cardinality, choice groups and type-specific rules of one object."""
    for name, shadow in shape.required:
        if name not in obj and shadow not in obj:
            st.error("required", f"missing required element '{name}'", f"{path}.{name}")
    if shape.choice_of is not None:
        _choices(obj, shape, path, st)
    if shape.post is not None:
        shape.post(obj, path, st)


def _choices(obj: dict, shape: _Shape, path: str, st: _State) -> None:
    choice_of = shape.choice_of
    assert choice_of is not None
    seen: dict[str, str] = {}
    for key in obj:
        hit = choice_of.get(key)
        if hit is None:
            continue
        group, member = hit
        other = seen.setdefault(group, member)
        if other != member:
            st.error(
                "structure", f"only one type of {group}[x] is allowed, found {other} and {member}", f"{path}.{member}"
            )
    for group in shape.required_groups:
        if group not in seen:
            st.error("required", f"missing required element '{group}[x]'", f"{path}.{group}[x]")


def _prim_list(obj: dict, key: str, val: Any, check: PrimCheck, path: str, st: _State) -> None:
    if val.__class__ is not list or not val:
        _bad_array(val, f"{path}.{key}", st)
        return
    for i, item in enumerate(val):
        if item is None:
            shadow = obj.get("_" + key)
            if shadow.__class__ is list and len(shadow) == len(val):
                continue  # _shadow_list reports a null paired with a null
            st.error(
                "structure",
                f"null in a primitive array needs a matching non-null entry in '_{key}'",
                f"{path}.{key}[{i}]",
            )
            continue
        err = check(item)
        if err is not None:
            st.error(err[0], err[1], f"{path}.{key}[{i}]")


def _shadow(comp: _Compiler, obj: dict, key: str, val: Any, name: str, path: str, st: _State) -> None:
    """``_x``: the id and extensions of the primitive element ``x``."""
    where = f"{path}.{name}"
    if val.__class__ is not dict or not val:
        _bad_object(val, where, st)
        return
    _walk(comp, val, comp.shadow_shape, where, st)
    if name not in obj and len(val) == 1 and "id" in val:
        st.error("structure", "an element must have a value or child elements, not only an id (ele-1)", where)


def _shadow_list(comp: _Compiler, obj: dict, key: str, val: Any, name: str, path: str, st: _State) -> None:
    if val.__class__ is not list or not val:
        _bad_array(val, f"{path}.{name}", st)
        return
    values = obj.get(name)
    if values is not None and (values.__class__ is not list or len(values) != len(val)):
        st.error("structure", f"'{key}' must be an array of the same length as '{name}'", f"{path}.{name}")
        return
    for i, item in enumerate(val):
        where = f"{path}.{name}[{i}]"
        if item is None:
            if values is None or values[i] is None:
                st.error("structure", f"'{name}[{i}]' has neither a value nor extensions", where)
            continue
        if item.__class__ is not dict or not item:
            _bad_object(item, where, st)
            continue
        _walk(comp, item, comp.shadow_shape, where, st)
        if (values is None or values[i] is None) and len(item) == 1 and "id" in item:
            st.error("structure", "an element must have a value or child elements, not only an id (ele-1)", where)


def _unknown(key: str, shape: _Shape, path: str, st: _State) -> None:
    where = f"{path}.{key}"
    base = shape.props.get(key[1:]) if key.startswith("_") else None
    if base is not None and base[0] in (STR, PRIM):
        st.error("structure", f"'{key}' is not allowed: '{key[1:]}' cannot have an id or extensions", where)
    elif base is not None:
        st.error("structure", f"'{key}' is only allowed for primitive elements; '{key[1:]}' is not primitive", where)
    elif key == "resourceType":
        st.error("structure", "resourceType is only allowed at the root of a resource", where)
    else:
        st.error("structure", f"unknown element '{key}' in {shape.name}", where)


def _bad_object(val: Any, where: str, st: _State) -> None:
    if val.__class__ is dict:
        st.error("structure", "empty object is not allowed (omit the element instead)", where)
    elif val.__class__ is list:
        st.error("structure", "element does not repeat: expected a JSON object, got an array", where)
    else:
        st.error("structure", _not_a("object", val)[1], where)


def _bad_array(val: Any, where: str, st: _State) -> None:
    if val.__class__ is list:
        st.error("structure", "empty array is not allowed (omit the element instead)", where)
    elif val is None:
        st.error("structure", "null is not allowed here (omit the element instead)", where)
    else:
        st.error("structure", f"element repeats: expected a JSON array, got {_json_type(val)}", where)
