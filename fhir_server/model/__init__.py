"""The FHIR R4 (4.0.1) element model: every type's elements with cardinality, bindings and summary flags.

Why: validation, the XML codec and search-value extraction all need to know, for a
resource type and a JSON property, which FHIR type it holds and whether it repeats. The
tree is generated once by ``scripts/gen_r4_model.py`` from the official definitions and
loaded here, lazily, as immutable objects shared by every request.
"""

from __future__ import annotations

import functools
import gzip
import json
import pathlib
from dataclasses import dataclass, field

MODEL_FILE = pathlib.Path(__file__).with_name("r4_model.json.gz")
FHIR_VERSION = "4.0.1"

#: Primitive types whose JSON representation is a number or boolean rather than a string.
JSON_NUMBER_TYPES = frozenset({"decimal", "integer", "positiveInt", "unsignedInt"})
JSON_BOOLEAN_TYPES = frozenset({"boolean"})


@dataclass(frozen=True, slots=True, eq=False)
class Element:
    """One element of a type, e.g. ``Observation.status`` or ``Observation.valueQuantity``."""

    name: str
    type: str
    min: int
    repeats: bool
    choice: str | None = None
    binding: str | None = None
    targets: tuple[str, ...] | None = None
    children: dict[str, Element] | None = field(default=None, repr=False)
    path: str = ""
    #: ``isSummary`` in the base definition (part of ``_summary=true`` output)
    summary: bool = False

    @property
    def is_primitive(self) -> bool:
        return get_model().is_primitive(self.type)

    @property
    def is_resource(self) -> bool:
        return self.type == "Resource"


@dataclass(frozen=True, slots=True, eq=False)
class TypeDef:
    name: str
    kind: str  # resource | complex-type | primitive-type
    elements: dict[str, Element] = field(repr=False)
    choices: dict[str, tuple[Element, ...]] = field(repr=False)


class Model:
    """Immutable R4 model: types, elements and the codes of required bindings."""

    def __init__(self, doc: dict) -> None:
        self.fhir_version: str = doc["fhirVersion"]
        raw_types: dict = doc["types"]
        self._raw = raw_types
        self.types: dict[str, TypeDef] = {}
        for name, tdef in raw_types.items():
            elements = self._build(name, tdef["elements"])
            self.types[name] = TypeDef(name, tdef["kind"], elements, _choices(elements))
        self._resolve_content_references()
        self.resource_types: frozenset[str] = frozenset(n for n, t in self.types.items() if t.kind == "resource")
        self.primitive_types: frozenset[str] = frozenset(n for n, t in self.types.items() if t.kind == "primitive-type")
        self.valuesets: dict[str, dict[str, frozenset[str]]] = {
            url: {system: frozenset(codes) for system, codes in systems.items()}
            for url, systems in doc["valuesets"].items()
        }

    def _build(self, path: str, raw: dict) -> dict[str, Element]:
        out: dict[str, Element] = {}
        for name, (etype, emin, emax, choice, binding, targets, children, *flags) in raw.items():
            epath = f"{path}.{name}"
            out[name] = Element(
                name=name,
                type=etype,
                min=emin,
                repeats=emax == "*",
                choice=choice,
                binding=binding,
                targets=tuple(targets) if targets else None,
                children=self._build(epath, children) if children else None,
                path=epath,
                summary=bool(flags and flags[0]),  # stored only when true
            )
        return out

    def _resolve_content_references(self) -> None:
        """Replace ``#Questionnaire.item`` style types by the referenced element's children."""

        def lookup(ref: str) -> Element:
            tname, *parts = ref.lstrip("#").split(".")
            elems = self.types[tname].elements
            elem: Element | None = None
            for part in parts:
                elem = elems[part]
                elems = elem.children or {}
            assert elem is not None
            return elem

        def fix(elements: dict[str, Element]) -> None:
            for elem in list(elements.values()):
                if elem.type.startswith("#"):
                    target = lookup(elem.type)
                    object.__setattr__(elem, "children", target.children)
                    object.__setattr__(elem, "type", target.type)
                elif elem.children:
                    fix(elem.children)

        for tdef in self.types.values():
            fix(tdef.elements)

    def is_primitive(self, type_name: str) -> bool:
        return type_name in self.primitive_types

    def is_resource(self, type_name: str) -> bool:
        return type_name in self.resource_types

    def elements(self, type_name: str) -> dict[str, Element]:
        return self.types[type_name].elements

    def element_at(self, path: str) -> Element | None:
        """Element for a dotted path of JSON names, e.g. ``Observation.component.valueQuantity``."""
        tname, *parts = path.split(".")
        tdef = self.types.get(tname)
        if tdef is None:
            return None
        elems = tdef.elements
        elem = None
        for part in parts:
            elem = elems.get(part)
            if elem is None:
                return None
            elems = self.children_of(elem)
        return elem

    def children_of(self, elem: Element) -> dict[str, Element]:
        """Elements inside ``elem``: its inline backbone children or its type's elements."""
        if elem.children is not None:
            return elem.children
        tdef = self.types.get(elem.type)
        return tdef.elements if tdef else {}

    def codes(self, valueset_url: str) -> dict[str, frozenset[str]] | None:
        return self.valuesets.get(valueset_url)


def _choices(elements: dict[str, Element]) -> dict[str, tuple[Element, ...]]:
    groups: dict[str, list[Element]] = {}
    for elem in elements.values():
        if elem.choice:
            groups.setdefault(elem.choice, []).append(elem)
    return {k: tuple(v) for k, v in groups.items()}


@functools.cache
def get_model() -> Model:
    with gzip.open(MODEL_FILE, "rt", encoding="utf-8") as fh:
        return Model(json.load(fh))
