"""FHIRPath Patch: a ``Parameters`` resource of add/insert/delete/replace/move operations.

Why: http://hl7.org/fhir/R4/fhirpatch.html is the format-neutral patch of the FHIR ``patch``
interaction (http://hl7.org/fhir/R4/http.html#patch). Each operation names its target with a
FHIRPath expression, so we need not the *values* an expression selects but their *places*:
the JSON object that holds them, the property name and the list position.

How: expressions are parsed strictly (``fhirpathpy`` silently ignores syntax errors) and
evaluated with ``fhirpathpy`` in raw mode, which yields its internal nodes. A node of a complex
element holds a reference to the very dict inside our working copy, so objects are located by
identity (an index built over the resource). Primitive values have no identity; their node
carries the full path it was reached by (``Patient.name[0].given[1]``), which we walk again and
check against the value. The R4 model (``fhir_server.model``) says which elements repeat
(``add`` appends to a list), which JSON name a choice element takes (``value`` +
``valueQuantity`` -> ``valueQuantity``) and which element types a value may take.

JSON detail kept throughout: a primitive's id/extensions live in the ``_name`` companion
property (a parallel array for repeating primitives), which moves, inserts and deletes keep
aligned. Objects and arrays an operation leaves empty are removed at the end (FHIR JSON allows
neither).
"""

from __future__ import annotations

import copy
import functools
import re
from dataclasses import dataclass
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from antlr4.tree.Tree import ParseTreeWalker
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as _fhirpath_models
from fhirpathpy.parser.ASTPathListener import ASTPathListener
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser

from fhir_server.errors import FhirError
from fhir_server.model import Element, get_model

OPERATION_TYPES = ("add", "insert", "delete", "replace", "move")
_PART_NAMES = frozenset({"type", "path", "name", "value", "index", "source", "destination"})
_REQUIRED_PARTS: dict[str, tuple[str, ...]] = {
    "add": ("path", "name", "value"),
    "insert": ("path", "index", "value"),
    "delete": ("path",),
    "replace": ("path", "value"),
    "move": ("path", "source", "destination"),
}
#: Specialisations of Quantity that share its JSON shape.
_QUANTITY_TYPES = frozenset({"Quantity", "Age", "Count", "Distance", "Duration", "SimpleQuantity", "MoneyQuantity"})
_VALUE_KEY = re.compile(r"_?value[A-Z][A-Za-z0-9]*")
_PROP_SEGMENT = re.compile(r"([A-Za-z][A-Za-z0-9]*)(?:\[(\d+)\])?")
_TRAILING_MEMBER = re.compile(r"(.+)\.([A-Za-z][A-Za-z0-9]*)")
#: ``Narrative.div`` collides with the ``div`` operator; as a member name it gets backticks.
_KEYWORD_MEMBER = re.compile(r"\.\s*(div|mod)\b(?!\s*\()")
_STRING_LITERAL = re.compile(r"('(?:[^'\\]|\\.)*')")


# --------------------------------------------------------------------------- request shape


@dataclass(frozen=True, slots=True)
class PatchOperation:
    """One ``Parameters.parameter`` named ``operation``; ``number`` is its 1-based position."""

    number: int
    type: str
    path: str
    name: str | None = None
    value: dict | None = None  # the raw ``value`` part: converted once the target is known
    index: int | None = None
    source: int | None = None
    destination: int | None = None

    def error(self, kind: str, message: str) -> FhirError:
        where = f"FHIRPath Patch operation {self.number} ({self.type} at '{self.path}')"
        return FhirError(kind, f"{where}: {message}", f"Parameters.parameter[{self.number - 1}]")


@dataclass(frozen=True, slots=True)
class Value:
    """The content of a ``value`` part as JSON, plus the ``_x`` companion of a primitive."""

    content: Any
    extension: dict | None
    suffix: str | None  # ``Date`` for ``valueDate``; ``Resource`` for a resource; None for parts


def parse_operations(parameters: Any) -> list[PatchOperation]:
    """Check the ``Parameters`` shape (fhirpatch.html) and return its operations in order."""
    if not isinstance(parameters, dict) or parameters.get("resourceType") != "Parameters":
        raise FhirError("bad-request", "A FHIRPath Patch must be a Parameters resource")
    params = parameters.get("parameter", [])
    if not isinstance(params, list):
        raise FhirError("bad-request", "Parameters.parameter must be an array")
    return [_parse_operation(n, param) for n, param in enumerate(params, start=1)]


def _parse_operation(number: int, param: Any) -> PatchOperation:
    where = f"FHIRPath Patch parameter {number}"
    if not isinstance(param, dict) or param.get("name") != "operation":
        raise FhirError("bad-request", f"{where}: every parameter must be named 'operation'")
    parts = param.get("part")
    if not isinstance(parts, list) or not parts:
        raise FhirError("bad-request", f"{where}: an operation needs parts (type, path, ...)")
    found: dict[str, dict] = {}
    for part in parts:
        name = part.get("name") if isinstance(part, dict) else None
        if name not in _PART_NAMES:
            raise FhirError("bad-request", f"{where}: unknown part {name!r}")
        if name in found:
            raise FhirError("bad-request", f"{where}: part '{name}' is repeated")
        found[name] = part
    op_type = _primitive_part(found, "type", str, where)
    if op_type not in OPERATION_TYPES:
        raise FhirError("bad-request", f"{where}: unknown operation type {op_type!r}")
    for required in _REQUIRED_PARTS[op_type]:
        if required not in found:
            raise FhirError("bad-request", f"{where} ({op_type}): missing part '{required}'")
    return PatchOperation(
        number=number,
        type=op_type,
        path=_primitive_part(found, "path", str, where),
        name=_primitive_part(found, "name", str, where),
        value=found.get("value"),
        index=_primitive_part(found, "index", int, where),
        source=_primitive_part(found, "source", int, where),
        destination=_primitive_part(found, "destination", int, where),
    )


def _primitive_part(found: dict[str, dict], name: str, kind: type, where: str) -> Any:
    """The single ``value[x]`` of part ``name`` (None if absent), which must be a ``kind``."""
    part = found.get(name)
    if part is None:
        return None
    values = [v for k, v in part.items() if _VALUE_KEY.fullmatch(k) and not k.startswith("_")]
    if len(values) != 1 or isinstance(values[0], bool) or not isinstance(values[0], kind):
        expected = "an integer" if kind is int else "a string or code"
        raise FhirError("bad-request", f"{where}: part '{name}' must have one value[x] that is {expected}")
    if kind is str and not values[0].strip():
        raise FhirError("bad-request", f"{where}: part '{name}' is empty")
    return values[0]


# --------------------------------------------------------------------------- FHIRPath


class _RaisingErrorListener(ErrorListener):
    def syntaxError(self, recognizer, offendingSymbol, line, column, msg, e):  # noqa: N802, N803
        raise ValueError(f"at character {column}: {msg}")


def _quote_keyword_members(expression: str) -> str:
    """``Patient.text.div`` -> ``Patient.text.`div```, outside string literals.

    The FHIRPath grammar reserves ``div``/``mod``, yet patches (and HL7's own test cases)
    address ``Narrative.div`` unquoted, as fhirpath.js and HAPI accept.
    """
    pieces = _STRING_LITERAL.split(expression)
    for i in range(0, len(pieces), 2):
        pieces[i] = _KEYWORD_MEMBER.sub(lambda m: ".`" + m.group(1) + "`", pieces[i])
    return "".join(pieces)


@functools.lru_cache(maxsize=512)
def _parse_fhirpath(expression: str) -> dict:
    """fhirpathpy's AST for ``expression``; ``ValueError`` on any syntax error or trailing text."""
    lexer = FHIRPathLexer(InputStream(_quote_keyword_members(expression)))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_RaisingErrorListener())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_RaisingErrorListener())
    tree = parser.expression()
    if tokens.LA(1) != Token.EOF:
        raise ValueError(f"unexpected {tokens.LT(1).text!r} after the expression")
    listener = ASTPathListener()
    ParseTreeWalker().walk(listener, tree)
    return listener.parentStack[0]


def _evaluate(resource: dict, expression: str, op: PatchOperation) -> list[Any]:
    """fhirpathpy's raw result nodes for ``expression`` on ``resource``."""
    try:
        ast = _parse_fhirpath(expression)
    except Exception as exc:  # noqa: BLE001 - antlr raises assorted types for lexer errors
        raise op.error("bad-request", f"invalid FHIRPath: {exc}") from None
    try:
        return fhirpathpy.apply_parsed_path(
            resource, ast, model=_fhirpath_models["r4"], options={"returnRawData": True}
        )
    except Exception as exc:  # noqa: BLE001 - fhirpathpy signals unknown functions etc. with bare Exception
        raise op.error("processing", f"FHIRPath evaluation failed: {exc}") from None


# --------------------------------------------------------------------------- locations


@dataclass(frozen=True, slots=True)
class Slot:
    """Where an element sits: ``parent[key]`` or ``parent[key][index]``."""

    parent: dict
    key: str
    index: int | None

    def get(self) -> Any:
        value = self.parent.get(self.key)
        if self.index is None:
            return value
        return value[self.index] if isinstance(value, list) and self.index < len(value) else None

    def identity(self) -> tuple[int, str, int | None]:
        return id(self.parent), self.key, self.index


def _child_elements(elem: Element | None, item: Any, companion: bool = False) -> dict[str, Element]:
    """Elements allowed inside ``item``, the JSON object held by an ``elem`` property."""
    model = get_model()
    if elem is None:
        return {}
    if companion:  # ``_name``: the id/extension of a primitive
        return model.elements(elem.type) if elem.type in model.types else {}
    if elem.type == "Resource" or model.is_resource(elem.type):
        rtype = item.get("resourceType") if isinstance(item, dict) else None
        return model.elements(rtype) if rtype in model.resource_types else {}
    return model.children_of(elem)


class ResourceTree:
    """Index of a resource: each JSON object's slot and the elements it may contain."""

    def __init__(self, resource: dict) -> None:
        model = get_model()
        self.root = resource
        self.slots: dict[int, Slot] = {}
        self.elements: dict[int, dict[str, Element]] = {}
        rtype = resource.get("resourceType")
        self._walk(resource, model.elements(rtype) if rtype in model.resource_types else {})

    def _walk(self, obj: dict, elems: dict[str, Element]) -> None:
        self.elements[id(obj)] = elems
        for key, value in obj.items():
            companion = key.startswith("_")
            elem = elems.get(key[1:] if companion else key)
            items = value if isinstance(value, list) else [value]
            for i, item in enumerate(items):
                if isinstance(item, dict):
                    self.slots[id(item)] = Slot(obj, key, i if isinstance(value, list) else None)
                    self._walk(item, _child_elements(elem, item, companion))

    def element_of(self, slot: Slot) -> Element | None:
        return self.elements.get(id(slot.parent), {}).get(slot.key)

    def locate(self, node: Any, op: PatchOperation) -> Slot | None:
        """The slot of a result node; None for the resource itself."""
        data = node.data if isinstance(node, ResourceNode) else node
        if isinstance(data, dict):
            if data is self.root:
                return None
            slot = self.slots.get(id(data))
            if slot is None:
                raise op.error("processing", "the path selects content outside the resource being patched")
            if slot.key.startswith("_"):  # the id/extension half of a primitive: the primitive
                slot = Slot(slot.parent, slot.key[1:], slot.index)
            return slot
        prop_name = node.propName if isinstance(node, ResourceNode) else None
        slot = self._walk_prop_name(prop_name) if prop_name else None
        if slot is None or slot.get() != data:
            message = f"the path selects the value {data!r}, which cannot be traced to an element of the resource"
            raise op.error("processing", message)
        return slot

    def _walk_prop_name(self, prop_name: str) -> Slot | None:
        """Follow fhirpathpy's ``Type.a[0].b`` path of a primitive node back to its slot."""
        segments = prop_name.split(".")
        if segments[0] != self.root.get("resourceType"):
            return None
        current: Any = self.root
        slot: Slot | None = None
        for segment in segments[1:]:
            match = _PROP_SEGMENT.fullmatch(segment)
            if match is None or not isinstance(current, dict):
                return None
            key = _json_name_in(current, match.group(1))
            if key is None:
                return None
            index = int(match.group(2)) if match.group(2) is not None else None
            if (index is None) == isinstance(current.get(key, current.get("_" + key)), list):
                return None
            slot = Slot(current, key, index)
            current = slot.get()
            if not isinstance(current, dict):  # a primitive: its children are in ``_key``
                companion = Slot(slot.parent, "_" + key, index).get()
                current = companion if isinstance(companion, dict) else current
        return slot


def _json_name_in(obj: dict, name: str) -> str | None:
    """The property of ``obj`` that FHIRPath name ``name`` denotes (choice types add a type)."""
    if name in obj or "_" + name in obj:
        return name
    for key in obj:
        bare = key.lstrip("_")
        if bare.startswith(name) and len(bare) > len(name) and bare[len(name)].isupper():
            return bare
    return None


def _select(resource: dict, tree: ResourceTree, expression: str, op: PatchOperation) -> list[Slot | None]:
    """Distinct slots selected by ``expression`` (value and ``_`` halves of a primitive count once)."""
    seen: set[Any] = set()
    out: list[Slot | None] = []
    for node in _evaluate(resource, expression, op):
        if isinstance(node, ResourceNode) and node.data is None:
            continue  # the null placeholder of a ``_name`` array
        slot = tree.locate(node, op)
        ident = slot.identity() if slot else "root"
        if ident not in seen:
            seen.add(ident)
            out.append(slot)
    return out


def _single(resource: dict, tree: ResourceTree, op: PatchOperation, *, required: bool = True) -> list[Slot | None]:
    """The one slot ``op.path`` selects (or none, when ``required`` is False)."""
    slots = _select(resource, tree, op.path, op)
    if len(slots) > 1:
        raise op.error("processing", f"the path must select a single element, but selects {len(slots)}")
    if not slots and required:
        raise op.error("processing", "no content found at the path")
    return slots


def _collection(resource: dict, tree: ResourceTree, op: PatchOperation) -> tuple[dict, str]:
    """The list (``parent[key]``) ``op.path`` denotes, for insert and move."""
    slots = _select(resource, tree, op.path, op)
    if not slots:
        return _empty_collection(resource, tree, op)
    holders = {(id(s.parent), s.key) if s else None for s in slots}
    first = slots[0]
    if len(holders) != 1 or first is None or first.index is None:
        raise op.error("processing", "the path must select the items of a single repeating element")
    return first.parent, first.key


def _empty_collection(resource: dict, tree: ResourceTree, op: PatchOperation) -> tuple[dict, str]:
    """``X.name`` selecting nothing: the still absent list ``name`` of the single element X."""
    match = _TRAILING_MEMBER.fullmatch(op.path.strip())
    if match is None:
        raise op.error("processing", "no list found at the path")
    parent_op = PatchOperation(op.number, op.type, match.group(1))
    (slot,) = _single(resource, tree, parent_op)
    container = resource if slot is None else slot.get()
    if not isinstance(container, dict):
        raise op.error("processing", "no list found at the path")
    elem = tree.elements.get(id(container), {}).get(match.group(2))
    if tree.elements.get(id(container)) and (elem is None or not elem.repeats):
        raise op.error("processing", f"'{match.group(2)}' is not a repeating element")
    return container, match.group(2)


# --------------------------------------------------------------------------- values


def _build_value(part: dict, elem: Element | None, op: PatchOperation) -> Value:
    """JSON for a ``value`` part: a ``value[x]``, a ``resource`` or nested ``part``s."""
    value_keys = {k.lstrip("_") for k in part if _VALUE_KEY.fullmatch(k)}
    kinds = len(value_keys) + ("resource" in part) + ("part" in part)
    if kinds != 1:
        raise op.error("bad-request", f"part '{part.get('name')}' needs exactly one of value[x], resource or part")
    if value_keys:
        key = value_keys.pop()
        extension = part.get("_" + key)
        if extension is not None and not isinstance(extension, dict):
            raise op.error("bad-request", f"'_{key}' must be an object")
        return Value(copy.deepcopy(part.get(key)), copy.deepcopy(extension), key[len("value") :])
    if "resource" in part:
        resource = part["resource"]
        if not isinstance(resource, dict) or "resourceType" not in resource:
            raise op.error("bad-request", "a 'resource' part must hold a resource")
        return Value(copy.deepcopy(resource), None, "Resource")
    if not isinstance(part["part"], list):
        raise op.error("bad-request", f"part '{part.get('name')}': 'part' must be an array")
    return Value(_object_from_parts(part["part"], elem, op), None, None)


def _object_from_parts(parts: list, elem: Element | None, op: PatchOperation) -> dict:
    """An anonymous (backbone) or complex value given as one part per child element."""
    children = _child_elements(elem, None)
    out: dict = {}
    for part in parts:
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str) or not name:
            raise op.error("bad-request", "every part of a value needs a name")
        value = _build_value(part, children.get(name), op)
        key, child = _json_key(children, name, value, op)
        _check_type(child, value, op)
        if child is not None and child.repeats:
            _insert_item(out, key, len(_aligned(out, key, op)[0]), value, op)
        elif key in out or "_" + key in out:
            raise op.error("bad-request", f"value part '{name}' is given more than once")
        else:
            _set_single(out, key, value)
    return out


def _suffix_type(suffix: str) -> str:
    """FHIR type named by a ``value[x]`` suffix: ``Date`` -> ``date``, ``Coding`` -> ``Coding``."""
    lowered = suffix[:1].lower() + suffix[1:]
    return lowered if get_model().is_primitive(lowered) else suffix


def _json_key(elems: dict[str, Element], name: str, value: Value, op: PatchOperation) -> tuple[str, Element | None]:
    """JSON property for element ``name`` holding ``value`` (a choice element adds the type)."""
    if not elems:
        return name, None
    if name in elems:
        return name, elems[name]
    base = name[:-3] if name.endswith("[x]") else name
    if value.suffix and value.suffix != "Resource":
        candidates = [value.suffix]
        if _suffix_type(value.suffix) in _QUANTITY_TYPES:
            candidates.append("Quantity")
        for suffix in candidates:
            if base + suffix in elems:
                return base + suffix, elems[base + suffix]
    raise op.error("processing", f"'{name}' is not a known element here (or cannot hold this type)")


def _check_type(elem: Element | None, value: Value, op: PatchOperation) -> None:
    """fhirpatch.html: the value's type must suit the place it goes."""
    if elem is None:
        return
    model = get_model()
    if value.suffix == "Resource":
        ok = elem.type == "Resource" or model.is_resource(elem.type)
    elif value.suffix is None:  # built from parts: any complex or backbone type
        ok = not model.is_primitive(elem.type) and elem.type != "Resource"
    else:
        vtype = _suffix_type(value.suffix)
        if model.is_primitive(elem.type) or model.is_primitive(vtype):
            ok = model.is_primitive(elem.type) and model.is_primitive(vtype)
        else:
            ok = vtype == elem.type or {vtype, elem.type} <= _QUANTITY_TYPES
    if not ok:
        given = "parts" if value.suffix is None else value.suffix
        raise op.error("processing", f"a {given} value cannot be used for '{elem.name}' of type {elem.type}")


# --------------------------------------------------------------------------- JSON edits


def _aligned(parent: dict, key: str, op: PatchOperation) -> tuple[list, list | None]:
    """Copies of the ``key`` array and its ``_key`` companion, padded to equal length."""
    main, companion = parent.get(key), parent.get("_" + key)
    if main is not None and not isinstance(main, list):
        raise op.error("processing", f"'{key}' is not a repeating element")
    main = list(main or [])
    companion = list(companion) if isinstance(companion, list) else None
    size = max(len(main), len(companion or []))
    main += [None] * (size - len(main))
    if companion is not None:
        companion += [None] * (size - len(companion))
    return main, companion


def _store(parent: dict, key: str, main: list, companion: list | None) -> None:
    """Write back an aligned pair, dropping what is left empty."""
    if companion is not None and any(c is not None for c in companion):
        parent["_" + key] = companion
    else:
        parent.pop("_" + key, None)
        companion = None
    if any(m is not None for m in main) or (companion is not None and main):
        parent[key] = main
    else:
        parent.pop(key, None)


def _set_single(parent: dict, key: str, value: Value) -> None:
    for name, content in ((key, value.content), ("_" + key, value.extension)):
        if content is None:
            parent.pop(name, None)
        else:
            parent[name] = content


def _insert_item(parent: dict, key: str, index: int, value: Value, op: PatchOperation) -> None:
    main, companion = _aligned(parent, key, op)
    if not 0 <= index <= len(main):
        raise op.error("processing", f"index {index} is outside the list (0..{len(main)})")
    if companion is None and value.extension is not None:
        companion = [None] * len(main)
    main.insert(index, value.content)
    if companion is not None:
        companion.insert(index, value.extension)
    _store(parent, key, main, companion)


def _remove(slot: Slot, op: PatchOperation) -> None:
    if slot.index is None:
        slot.parent.pop(slot.key, None)
        slot.parent.pop("_" + slot.key, None)
        return
    main, companion = _aligned(slot.parent, slot.key, op)
    del main[slot.index]
    if companion is not None:
        del companion[slot.index]
    _store(slot.parent, slot.key, main, companion)


def _replace(slot: Slot, key: str, value: Value, op: PatchOperation) -> None:
    """Put ``value`` where ``slot`` is, under ``key`` (differs from ``slot.key`` for a new choice type)."""
    if slot.index is None:
        if key != slot.key:
            _remove(slot, op)
        _set_single(slot.parent, key, value)
        return
    main, companion = _aligned(slot.parent, slot.key, op)
    main[slot.index] = value.content
    if companion is None and value.extension is not None:
        companion = [None] * len(main)
    if companion is not None:
        companion[slot.index] = value.extension
    _store(slot.parent, slot.key, main, companion)


def _move(parent: dict, key: str, source: int, destination: int, op: PatchOperation) -> None:
    main, companion = _aligned(parent, key, op)
    for label, index in (("source", source), ("destination", destination)):
        if not 0 <= index < len(main):
            raise op.error("processing", f"{label} index {index} is outside the list (0..{len(main) - 1})")
    main.insert(destination, main.pop(source))
    if companion is not None:
        companion.insert(destination, companion.pop(source))
    _store(parent, key, main, companion)


def _prune(node: Any, companion: bool = False) -> Any:
    """Drop empty objects and arrays; a ``_name`` array keeps nulls that align it with ``name``."""
    if isinstance(node, dict):
        for key in list(node):
            value = _prune(node[key], key.startswith("_"))
            if value == {} or value == []:
                del node[key]
            else:
                node[key] = value
    elif isinstance(node, list):
        items = [_prune(item) for item in node]
        if companion:
            items = [None if item == {} else item for item in items]
            items = items if any(item is not None for item in items) else []
        else:
            items = [item for item in items if item != {} and item != []]
        node[:] = items
    return node


# --------------------------------------------------------------------------- operations


def _container(
    tree: ResourceTree, resource: dict, slot: Slot | None, op: PatchOperation
) -> tuple[dict, dict[str, Element]]:
    """The JSON object ``add`` writes into, and the elements it may hold."""
    if slot is None:
        return resource, tree.elements.get(id(resource), {})
    target = slot.get()
    if isinstance(target, dict):
        return target, tree.elements.get(id(target), {})
    elem = tree.element_of(slot)  # a primitive: its children (id, extension) go into ``_key``
    if slot.index is None:
        companion = slot.parent.setdefault("_" + slot.key, {})
    else:
        main, companions = _aligned(slot.parent, slot.key, op)
        companions = companions or [None] * len(main)
        companions[slot.index] = companions[slot.index] or {}
        _store(slot.parent, slot.key, main, companions)
        companion = companions[slot.index]
    return companion, _child_elements(elem, companion, companion=True)


def _op_add(resource: dict, tree: ResourceTree, op: PatchOperation) -> None:
    (slot,) = _single(resource, tree, op)
    container, elems = _container(tree, resource, slot, op)
    assert op.name is not None and op.value is not None
    value = _build_value(op.value, elems.get(op.name), op)
    key, elem = _json_key(elems, op.name, value, op)
    _check_type(elem, value, op)
    if (elem is not None and elem.repeats) or isinstance(container.get(key), list):
        _insert_item(container, key, len(_aligned(container, key, op)[0]), value, op)
    elif key in container:
        raise op.error("processing", f"'{key}' already has a value; use replace")
    else:
        _set_single(container, key, value)


def _op_insert(resource: dict, tree: ResourceTree, op: PatchOperation) -> None:
    parent, key = _collection(resource, tree, op)
    elem = tree.elements.get(id(parent), {}).get(key)
    assert op.value is not None and op.index is not None
    value = _build_value(op.value, elem, op)
    _check_type(elem, value, op)
    _insert_item(parent, key, op.index, value, op)


def _op_delete(resource: dict, tree: ResourceTree, op: PatchOperation) -> None:
    slots = _single(resource, tree, op, required=False)
    if not slots:
        return  # fhirpatch.html: delete the element "if found"
    if slots[0] is None:
        raise op.error("processing", "the resource itself cannot be deleted by a patch")
    _remove(slots[0], op)


def _op_replace(resource: dict, tree: ResourceTree, op: PatchOperation) -> None:
    (slot,) = _single(resource, tree, op)
    if slot is None:
        raise op.error("processing", "the resource itself cannot be replaced by a patch")
    elem = tree.element_of(slot)
    assert op.value is not None
    value = _build_value(op.value, elem, op)
    key = slot.key
    if elem is not None and elem.choice and value.suffix not in (None, "Resource"):
        base = elem.choice[:-3] if elem.choice.endswith("[x]") else elem.choice
        key, elem = _json_key(tree.elements.get(id(slot.parent), {}), base, value, op)
    _check_type(elem, value, op)
    _replace(slot, key, value, op)


def _op_move(resource: dict, tree: ResourceTree, op: PatchOperation) -> None:
    parent, key = _collection(resource, tree, op)
    assert op.source is not None and op.destination is not None
    _move(parent, key, op.source, op.destination, op)


_HANDLERS = {
    "add": _op_add,
    "insert": _op_insert,
    "delete": _op_delete,
    "replace": _op_replace,
    "move": _op_move,
}


def apply_fhirpath_patch(resource: dict, parameters: dict) -> dict:
    """Apply the operations of a FHIRPath Patch ``Parameters`` to a copy of ``resource``."""
    operations = parse_operations(parameters)
    result = copy.deepcopy(resource)
    for op in operations:
        _HANDLERS[op.type](result, ResourceTree(result), op)
    return _prune(result)
