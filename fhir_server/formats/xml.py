"""FHIR XML <-> FHIR JSON, following http://hl7.org/fhir/R4/xml.html and json.html.

Why: the server keeps and processes resources in their JSON form; XML is only a wire
format. Converting at the edge keeps every other module single-format. The two forms differ
in ways only the element model can resolve: XML does not say which elements repeat (JSON
arrays), which values are numbers or booleans, that ``Element.id`` and ``Extension.url`` are
attributes, that primitive ids/extensions live in JSON ``_name`` shadow properties, that
child order is the definition order, and that nested resources sit in a wrapper element.

The model is compiled once into per-type lookup tables (tag -> field for reading, JSON key
-> definition position for writing), so a conversion is a single walk without model access.
Reading uses lxml with DOCTYPEs rejected (no XXE, no entity expansion); writing builds the
text directly, which is several times faster than building an lxml tree.
"""

from __future__ import annotations

import copy
import functools
import math
import re
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any, NamedTuple

from lxml import etree

from fhir_server.errors import FhirError
from fhir_server.formats.json import parse_decimal
from fhir_server.model import JSON_BOOLEAN_TYPES, JSON_NUMBER_TYPES, Element, get_model

FHIR_NS = "http://hl7.org/fhir"
XHTML_NS = "http://www.w3.org/1999/xhtml"
_F = "{" + FHIR_NS + "}"
_XHTML_DIV = "{" + XHTML_NS + "}div"
_XHTML_NSMAP = {None: XHTML_NS}
_XSI = "{http://www.w3.org/2001/XMLSchema-instance}"
_EXTENSION_TAG = _F + "extension"
_ABSTRACT_RESOURCES = frozenset({"Resource", "DomainResource"})
_XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8"?>'

# Field kinds.
_ATTR, _PRIM, _COMPLEX, _RESOURCE, _XHTML = range(5)


class _Bad(Exception):
    """A conversion failure; ``steps`` collects the location, innermost first."""

    def __init__(self, message: str, step: str | None = None, line: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.steps: list[str] = [step] if step else []
        self.line = line


# --------------------------------------------------------------------------- primitives

_INTEGER = re.compile(r"[+-]?[0-9]+")
_DECIMAL = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")


def _parse_boolean(raw: str) -> bool:
    if raw == "true":
        return True
    if raw == "false":
        return False
    raise ValueError


def _parse_integer(raw: str) -> int:
    if _INTEGER.fullmatch(raw) is None:
        raise ValueError
    return int(raw)


def _parse_decimal(raw: str) -> int | float | Decimal:
    if _DECIMAL.fullmatch(raw) is None:
        raise ValueError
    return parse_decimal(raw)


def _write_boolean(value: Any) -> str:
    if value is True:
        return "true"
    if value is False:
        return "false"
    raise ValueError


def _write_integer(value: Any) -> str:
    if type(value) is not int:
        raise ValueError
    return str(value)


def _write_decimal(value: Any) -> str:
    kind = type(value)
    if kind is int:
        return str(value)
    if kind is float and math.isfinite(value):
        return repr(value)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)
    raise ValueError


_ESCAPE_OR_INVALID = re.compile('[&<>"\n\r\t\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]')
_INVALID_XML_CHAR = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_ESCAPES = str.maketrans(
    {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"}
)


def _escape(text: str) -> str:
    """``text`` as the content of a double-quoted XML attribute."""
    if _ESCAPE_OR_INVALID.search(text) is None:
        return text
    if _INVALID_XML_CHAR.search(text):
        raise _Bad(f"the string {text[:40]!r} contains a character XML 1.0 cannot represent")
    return text.translate(_ESCAPES)


def _write_string(value: Any) -> str:
    if type(value) is not str:
        raise ValueError
    return _escape(value)


def _codec(type_name: str) -> tuple[Callable[[str], Any] | None, Callable[[Any], str]]:
    """(XML attribute -> JSON value or None for as-is, JSON value -> escaped attribute)."""
    if type_name in JSON_BOOLEAN_TYPES:
        return _parse_boolean, _write_boolean
    if type_name == "decimal":
        return _parse_decimal, _write_decimal
    if type_name in JSON_NUMBER_TYPES:
        return _parse_integer, _write_integer
    return None, _write_string


# --------------------------------------------------------------------------- lookup tables


class _Field:
    """One element of a type, compiled for conversion."""

    __slots__ = ("name", "shadow", "tag", "order", "kind", "repeats", "type", "parse", "write", "table")

    def __init__(self, elem: Element, order: int, kind: int) -> None:
        self.name = elem.name
        self.shadow = "_" + elem.name
        self.tag = _XHTML_DIV if kind == _XHTML else _F + elem.name
        self.order = order
        self.kind = kind
        self.repeats = elem.repeats
        self.type = elem.type
        self.parse, self.write = _codec(elem.type)
        self.table: _Table | None = None


class _Table:
    """The elements of one type or backbone element, indexed both ways."""

    __slots__ = ("name", "fields", "by_tag", "by_key", "attrs")

    def __init__(self, name: str) -> None:
        self.name = name
        self.fields: list[_Field] = []
        self.by_tag: dict[str, _Field] = {}  # child element tag -> field
        self.by_key: dict[str, int] = {}  # JSON property (and _shadow) -> definition position
        self.attrs: dict[str, _Field] = {}  # XML attribute name -> field


class _Compiler:
    """Builds tables for every concrete resource type, sharing datatype/backbone tables."""

    def __init__(self) -> None:
        self.model = get_model()
        self.extension_elements = self.model.types["Extension"].elements
        self.built: dict[int, _Table] = {}

    def table(self, elements: dict[str, Element], name: str, resource: bool = False) -> _Table:
        table = self.built.get(id(elements))
        if table is None:
            table = self.built[id(elements)] = _Table(name)  # registered first: types recurse
            for order, elem in enumerate(elements.values()):
                self._add(table, elements, elem, order, resource)
        return table

    def _add(self, table: _Table, elements: dict, elem: Element, order: int, resource: bool) -> None:
        field = _Field(elem, order, self._kind(elements, elem, resource))
        table.fields.append(field)
        table.by_key[field.name] = order
        if field.kind == _ATTR:
            table.attrs[field.name] = field
            return
        table.by_tag[field.tag] = field
        if field.kind == _PRIM:
            table.by_key[field.shadow] = order
        elif field.kind == _COMPLEX:
            children = self.model.children_of(elem)
            field.table = self.table(children, elem.path if elem.children is not None else elem.type)

    def _kind(self, elements: dict, elem: Element, resource: bool) -> int:
        if elem.name == "id" and not resource:
            return _ATTR  # Element.id
        if elem.name == "url" and elements is self.extension_elements:
            return _ATTR  # Extension.url
        if elem.children is not None:
            return _COMPLEX
        if elem.type == "Resource":
            return _RESOURCE
        if elem.type == "xhtml":
            return _XHTML
        if elem.type in self.model.primitive_types:
            return _PRIM
        return _COMPLEX


class _Tables(NamedTuple):
    resources: dict[str, _Table]  # concrete resource type -> its table
    extension: _Field  # Extension.extension, for the extensions of primitive elements


@functools.cache
def _tables() -> _Tables:
    """Built once on first use, then read-only (safe to share between threads)."""
    compiler = _Compiler()
    model = compiler.model
    resources = {
        name: compiler.table(model.types[name].elements, name, resource=True)
        for name in sorted(model.resource_types - _ABSTRACT_RESOURCES)
    }
    extension = compiler.table(compiler.extension_elements, "Extension")
    return _Tables(resources, extension.fields[extension.by_key["extension"]])


def _resource_table(resource_type: Any) -> _Table | None:
    return _tables().resources.get(resource_type) if isinstance(resource_type, str) else None


# --------------------------------------------------------------------------- XML -> JSON

_local = threading.local()


def _parser() -> etree.XMLParser:
    """A per-thread parser (lxml parsers are not thread-safe) that never fetches anything."""
    parser = getattr(_local, "parser", None)
    if parser is None:
        parser = _local.parser = etree.XMLParser(
            resolve_entities=False,
            no_network=True,
            load_dtd=False,
            remove_comments=True,
            remove_pis=True,
            collect_ids=False,
        )
    return parser


def _parse_xml(data: bytes, what: str) -> etree._Element:
    """Parse ``data``, refusing DOCTYPEs (and so entity declarations and XXE)."""
    if b"<!DOCTYPE" in data:
        raise _Bad(f"{what} must not contain a DOCTYPE or entity declarations")
    try:
        root = etree.fromstring(data, _parser())
    except etree.XMLSyntaxError as exc:
        raise _Bad(f"{what} is not well-formed XML: {exc}") from None
    if root.getroottree().docinfo.doctype:
        raise _Bad(f"{what} must not contain a DOCTYPE or entity declarations")
    return root


def xml_to_json(data: bytes | str) -> dict[str, Any]:
    """Parse a FHIR XML resource into its FHIR JSON dict form.

    Raises ``FhirError('malformed')`` naming the offending location.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    try:
        root = _parse_xml(data, "The document")
    except _Bad as bad:
        raise FhirError("malformed", bad.message) from None
    tag = root.tag
    resource_type = tag[len(_F) :] if tag.startswith(_F) else tag
    try:
        return _read_resource(root)
    except _Bad as bad:
        raise _error("Invalid FHIR XML", bad, resource_type) from None
    except RecursionError:
        raise FhirError("malformed", "Invalid FHIR XML: elements are nested too deeply") from None


def _error(prefix: str, bad: _Bad, resource_type: str) -> FhirError:
    expression = ".".join([resource_type, *reversed(bad.steps)]).replace(".[", "[")
    where = f" at {expression}" + (f" (line {bad.line})" if bad.line else "")
    return FhirError("malformed", f"{prefix}: {bad.message}{where}", expression=expression)


def _read_resource(node: etree._Element) -> dict[str, Any]:
    tag = node.tag
    if not tag.startswith(_F):
        raise _Bad(f"element <{tag}> is not in the FHIR namespace {FHIR_NS}", line=node.sourceline)
    resource_type = tag[len(_F) :]
    table = _resource_table(resource_type)
    if table is None:
        raise _Bad(f"unknown resource type {resource_type!r}", line=node.sourceline)
    for key in node.keys():
        if not key.startswith(_XSI):
            raise _Bad(f"unexpected attribute {key!r} on {resource_type}", line=node.sourceline)
    out: dict[str, Any] = {"resourceType": resource_type}
    _read_children(node, table, out)
    return out


def _read_children(node: etree._Element, table: _Table, out: dict[str, Any]) -> None:
    """Add the child elements of ``node`` to ``out`` as JSON properties."""
    text = node.text
    if text is not None and not text.isspace():
        raise _text_error(text, node)
    by_tag = table.by_tag
    primitive_lists: list[_Field] = []
    for child in node:
        field = by_tag.get(child.tag)
        if field is None:
            raise _unknown_element(child)
        try:
            if field.kind != _PRIM:
                _add_value(out, field, _read_value(child, field))
            elif _add_primitive(out, field, *_read_primitive(child, field)):
                primitive_lists.append(field)
        except _Bad as bad:
            step = field.name
            if field.repeats:  # the failed child was not added
                step += f"[{len(out.get(field.name, ()))}]"
            bad.steps.append(step)
            bad.line = bad.line or child.sourceline
            raise
        tail = child.tail
        if tail is not None and not tail.isspace():
            raise _text_error(tail, node)
    for field in primitive_lists:
        _drop_empty_list(out, field.shadow)
        _drop_empty_list(out, field.name)


def _read_value(child: etree._Element, field: _Field) -> Any:
    kind = field.kind
    if kind == _COMPLEX:
        return _read_complex(child, field.table)
    if kind == _RESOURCE:
        return _read_wrapped(child)
    return _read_xhtml(child)


def _add_value(out: dict[str, Any], field: _Field, value: Any) -> None:
    if field.repeats:
        out.setdefault(field.name, []).append(value)
    elif field.name in out:
        raise _Bad(f"element {field.name!r} does not repeat")
    else:
        out[field.name] = value


def _add_primitive(out: dict[str, Any], field: _Field, value: Any, shadow: dict[str, Any] | None) -> bool:
    """Store a primitive's value and shadow; True when this started the field's arrays."""
    if field.repeats:
        values = out.get(field.name)
        if values is not None:
            values.append(value)
            out[field.shadow].append(shadow)
            return False
        out[field.name] = [value]
        out[field.shadow] = [shadow]
        return True
    if field.name in out or field.shadow in out:
        raise _Bad(f"element {field.name!r} does not repeat")
    if value is not None:
        out[field.name] = value
    if shadow is not None:
        out[field.shadow] = shadow
    return False


def _drop_empty_list(out: dict[str, Any], key: str) -> None:
    """Drop a value or shadow array that holds only nulls (json.html#primitive)."""
    if all(item is None for item in out[key]):
        del out[key]


def _read_primitive(node: etree._Element, field: _Field) -> tuple[Any, dict[str, Any] | None]:
    """(JSON value or None, shadow object with id/extension or None)."""
    value: Any = None
    shadow: dict[str, Any] | None = None
    for key, raw in node.items():
        if key == "value":
            value = _convert(raw, field, node) if field.parse else raw
        elif key == "id":
            shadow = {"id": raw}
        elif not key.startswith(_XSI):
            raise _Bad(f"unexpected attribute {key!r}", line=node.sourceline)
    if len(node):
        shadow = shadow or {}
        shadow["extension"] = _read_primitive_extensions(node)
    if node.text is not None and not node.text.isspace():
        raise _text_error(node.text, node)
    if value is None and shadow is None:
        raise _Bad("a primitive element needs a value attribute or extensions", line=node.sourceline)
    return value, shadow


def _convert(raw: str, field: _Field, node: etree._Element) -> Any:
    try:
        return field.parse(raw)  # type: ignore[misc]
    except ValueError:
        raise _Bad(f"{raw[:60]!r} is not a valid {field.type}", line=node.sourceline) from None


def _read_primitive_extensions(node: etree._Element) -> list[dict[str, Any]]:
    extension_table = _tables().extension.table
    extensions = []
    for index, child in enumerate(node):
        if child.tag != _EXTENSION_TAG:
            raise _unknown_element(child)
        try:
            extensions.append(_read_complex(child, extension_table))
        except _Bad as bad:
            bad.steps.append(f"extension[{index}]")
            raise
        if child.tail is not None and not child.tail.isspace():
            raise _text_error(child.tail, node)
    return extensions


def _read_complex(node: etree._Element, table: _Table) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, raw in node.items():
        field = table.attrs.get(key)
        if field is not None:
            out[field.name] = raw
        elif not key.startswith(_XSI):
            raise _Bad(f"unexpected attribute {key!r}", line=node.sourceline)
    _read_children(node, table, out)
    return out


def _read_wrapped(node: etree._Element) -> dict[str, Any]:
    """A nested resource: ``<contained><Patient>...</Patient></contained>``."""
    if node.keys() or len(node) != 1:
        raise _Bad("must contain exactly one resource and no attributes", line=node.sourceline)
    for text in (node.text, node[0].tail):
        if text is not None and not text.isspace():
            raise _text_error(text, node)
    return _read_resource(node[0])


# Java's reference serialiser writes quotes in narrative text as &quot;; so do we.
_TEXT_WITH_QUOTE = re.compile(r'(?<=>)[^<]*"[^<]*')


def _read_xhtml(node: etree._Element) -> str:
    """The narrative div serialised as in JSON: default-namespace XHTML, nothing inherited."""
    if node.prefix is not None or node.nsmap != _XHTML_NSMAP:
        node = _standalone_div(node)
    text = etree.tostring(node, encoding="unicode", with_tail=False)
    return _TEXT_WITH_QUOTE.sub(lambda m: m.group().replace('"', "&quot;"), text)


def _standalone_div(node: etree._Element) -> etree._Element:
    """A copy of ``node`` without inherited FHIR/xsi namespace declarations or prefixes."""
    div = etree.Element(_XHTML_DIV, nsmap=_XHTML_NSMAP)
    for key, value in node.items():
        div.set(key, value)
    div.text = node.text
    for child in node:
        div.append(copy.deepcopy(child))
    return div


def _text_error(text: str, node: etree._Element) -> _Bad:
    return _Bad(f"unexpected text {text.strip()[:40]!r}", line=node.sourceline)


def _unknown_element(node: etree._Element) -> _Bad:
    tag = node.tag
    name = tag[len(_F) :] if tag.startswith(_F) else tag
    return _Bad(f"unknown element {name!r}", step=name, line=node.sourceline)


# --------------------------------------------------------------------------- JSON -> XML


def json_to_xml(resource: dict[str, Any], pretty: bool = False) -> bytes:
    """Serialise a FHIR JSON resource as FHIR XML (UTF-8, with an XML declaration).

    Raises ``FhirError('malformed')`` for properties the model does not know or values
    of the wrong JSON type.
    """
    resource_type = resource.get("resourceType") if isinstance(resource, dict) else None
    parts = [_XML_DECLARATION]
    try:
        _write_resource(parts, "\n" if pretty else "", resource, f' xmlns="{FHIR_NS}"')
    except _Bad as bad:
        name = resource_type if isinstance(resource_type, str) else "Resource"
        raise _error("Cannot write as XML", bad, name) from None
    except RecursionError:
        raise FhirError("malformed", "Cannot write as XML: elements are nested too deeply") from None
    if pretty:
        parts.append("\n")
    return "".join(parts).encode("utf-8")


def _indent(ind: str) -> str:
    """Indentation for children: ``ind`` is "" when compact, else a newline and spaces."""
    return ind + "  " if ind else ""


def _write_resource(parts: list[str], ind: str, resource: Any, xmlns: str = "") -> None:
    if type(resource) is not dict:
        raise _Bad("a resource must be a JSON object")
    resource_type = resource.get("resourceType")
    table = _resource_table(resource_type)
    if table is None:
        raise _Bad(f"unknown resource type {resource_type!r}", step="resourceType")
    try:
        orders = sorted({table.by_key[key] for key in resource if key != "resourceType"})
    except KeyError as exc:
        raise _unknown_property(exc.args[0], table) from None
    parts.append(f"{ind}<{resource_type}{xmlns}>")
    _write_children(parts, _indent(ind), resource, table, orders)
    parts.append(f"{ind}</{resource_type}>")


def _write_complex(parts: list[str], ind: str, tag: str, obj: Any, table: _Table) -> None:
    if type(obj) is not dict:
        raise _Bad("expected a JSON object")
    try:
        orders = sorted({table.by_key[key] for key in obj})
    except KeyError as exc:
        raise _unknown_property(exc.args[0], table) from None
    attrs = ""
    children = []
    fields = table.fields
    for order in orders:
        field = fields[order]
        if field.kind == _ATTR:  # Element.id, Extension.url
            attrs += f' {field.name}="{_attribute(obj[field.name], field.name)}"'
        else:
            children.append(order)
    if not children:
        parts.append(f"{ind}<{tag}{attrs}/>")
        return
    parts.append(f"{ind}<{tag}{attrs}>")
    _write_children(parts, _indent(ind), obj, table, children)
    parts.append(f"{ind}</{tag}>")


def _unknown_property(key: str, table: _Table) -> _Bad:
    return _Bad(f"unknown property {key!r} in {table.name}", step=key)


def _attribute(value: Any, name: str) -> str:
    try:
        return _write_string(value)
    except ValueError:
        raise _Bad(f"{name} must be a string", step=name) from None


def _write_children(parts: list[str], ind: str, obj: dict[str, Any], table: _Table, orders: list[int]) -> None:
    fields = table.fields
    for order in orders:
        field = fields[order]
        try:
            if field.kind == _PRIM:
                _write_primitive_field(parts, ind, obj, field)
            elif field.repeats:
                _write_list(parts, ind, obj[field.name], field)
            else:
                _write_value(parts, ind, obj[field.name], field)
        except _Bad as bad:
            bad.steps.append(field.name)
            raise


def _write_list(parts: list[str], ind: str, values: Any, field: _Field) -> None:
    if type(values) is not list:
        raise _Bad("expected a JSON array")
    for index, value in enumerate(values):
        try:
            _write_value(parts, ind, value, field)
        except _Bad as bad:
            bad.steps.append(f"[{index}]")
            raise


def _write_value(parts: list[str], ind: str, value: Any, field: _Field) -> None:
    kind = field.kind
    if kind == _COMPLEX:
        _write_complex(parts, ind, field.name, value, field.table)  # type: ignore[arg-type]
    elif kind == _RESOURCE:
        parts.append(f"{ind}<{field.name}>")
        _write_resource(parts, _indent(ind), value)
        parts.append(f"{ind}</{field.name}>")
    else:
        parts.append(ind + _checked_div(value))


def _write_primitive_field(parts: list[str], ind: str, obj: dict[str, Any], field: _Field) -> None:
    value = obj.get(field.name)
    shadow = obj.get(field.shadow)
    if not field.repeats:
        _write_primitive(parts, ind, field, value, shadow)
        return
    values = _array(value, field.name)
    shadows = _array(shadow, field.shadow)
    for index in range(max(len(values), len(shadows))):
        try:
            _write_primitive(
                parts,
                ind,
                field,
                values[index] if index < len(values) else None,
                shadows[index] if index < len(shadows) else None,
            )
        except _Bad as bad:
            bad.steps.append(f"[{index}]")
            raise


def _array(value: Any, key: str) -> list[Any]:
    if value is None:
        return []
    if type(value) is not list:
        raise _Bad(f"{key} must be a JSON array")
    return value


def _write_primitive(parts: list[str], ind: str, field: _Field, value: Any, shadow: Any) -> None:
    attrs = ""
    extensions: Any = None
    if shadow is not None:
        attrs, extensions = _shadow_parts(shadow)
    if value is not None:
        try:
            attrs += f' value="{field.write(value)}"'
        except ValueError:
            raise _Bad(f"{value!r} is not a valid JSON value for a {field.type}") from None
    elif shadow is None:
        raise _Bad(f"null needs an id or extensions in {field.shadow}")
    if not extensions:
        parts.append(f"{ind}<{field.name}{attrs}/>")
        return
    parts.append(f"{ind}<{field.name}{attrs}>")
    _write_list(parts, _indent(ind), extensions, _tables().extension)
    parts.append(f"{ind}</{field.name}>")


def _shadow_parts(shadow: Any) -> tuple[str, Any]:
    """(id attribute text, extension list) of a JSON ``_name`` object."""
    if type(shadow) is not dict or not shadow.keys() <= {"id", "extension"}:
        raise _Bad("a _ property must be an object with only id and extension")
    attrs = f' id="{_attribute(shadow["id"], "id")}"' if "id" in shadow else ""
    return attrs, shadow.get("extension")


_DIV_START = re.compile(r"<div[\s/>]")


def _checked_div(value: Any) -> str:
    """The narrative XHTML, verified to be one well-formed XHTML div, as written."""
    if type(value) is not str or not _DIV_START.match(value):
        raise _Bad("the narrative must be a string holding a <div> element")
    root = _parse_xml(value.encode("utf-8"), "the narrative div")
    if root.tag == "div":  # written without the XHTML namespace: supply it
        value = f'<div xmlns="{XHTML_NS}"' + value[4:]
        root = _parse_xml(value.encode("utf-8"), "the narrative div")
    if root.tag != _XHTML_DIV:
        raise _Bad(f"the narrative div must be in the namespace {XHTML_NS}")
    return value
