"""Validation of a resource against a StructureDefinition's snapshot (a profile or a base type).

Why on top of structural.py: the structural pass (run on every write, fast) knows the base R4
shape; a profile adds what the base leaves open — tighter cardinality, fixed and pattern
values, bindings to our value sets, slices (the resident ID card among the identifiers, one
component per constitution type), type and target profiles, and invariants in FHIRPath. This
walks the instance against the snapshot's element tree (http://hl7.org/fhir/R4/profiling.html,
validation.html) and reports issues with FHIRPath locations. Elements the snapshot does not
unroll are checked against their type's own definition (its invariants and bindings), so a
profile's ``Quantity`` gets ``qty-3`` like the base does.

Not checked here, because structural.py already does on every write: JSON shape, primitive
formats, unknown elements, the base's required bindings, ``ele-1``, ``ext-1`` and the ``dom-*``
and ``txt-*`` invariants. An invariant that evaluates to empty passes; one that cannot be
evaluated is a warning naming its key.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, MutableMapping
from typing import Any

from fhir_server.errors import Issue
from fhir_server.validation import fhirpath

#: ``(valueset url, system, code) -> True/False``, or None when the value set cannot be used
CodeCheck = Callable[[str, str | None, str], bool | None]
Resolver = Callable[[str], dict[str, Any] | None]

_SKIPPED_CONSTRAINTS = frozenset({"ele-1", "ext-1", "dom-2", "dom-3", "dom-4", "dom-5", "txt-1", "txt-2"})
MAX_DEPTH = 24
_FHIRPATH_STRING = "http://hl7.org/fhirpath/System.String"


class Node:
    """One element of the snapshot with its children and, if sliced, its slices; what validation
    asks of the ElementDefinition is read once here (a tree serves many requests)."""

    __slots__ = (
        "element",
        "name",
        "children",
        "slices",
        "types",
        "min",
        "max",
        "repeats",
        "fixed",
        "binding",
        "rules",
        "limits",
        "max_length",
    )

    def __init__(self, element: dict[str, Any], name: str) -> None:
        self.element = element
        self.name = name
        self.children: list[Node] = []
        self.slices: list[Node] = []
        self.types: list[dict[str, Any]] = element.get("type") or []
        self.min = int(element.get("min", 0))
        self.max = float("inf") if element.get("max", "*") == "*" else float(element["max"])
        base_max = (element.get("base") or {}).get("max", element.get("max", "*"))
        self.repeats = base_max not in ("1", "0")
        self.fixed = _fixed_or_pattern(element)
        binding = element.get("binding") or {}
        strong = binding.get("valueSet") and binding.get("strength") in ("required", "extensible")
        self.binding: dict[str, Any] | None = binding if strong else None
        #: the invariants to evaluate here (structural.py covers the skipped ones)
        self.rules = [
            c for c in element.get("constraint", []) if c.get("expression") and c.get("key") not in _SKIPPED_CONSTRAINTS
        ]
        #: (``min``/``max``, the bound) from ``minValue[x]``/``maxValue[x]``
        self.limits = [(k[:3], v) for k, v in element.items() if k.startswith(("minValue", "maxValue"))]
        self.max_length: int | None = element.get("maxLength")

    def child(self, name: str) -> Node | None:
        return next((c for c in self.children if c.name == name), None)


def compile_tree(elements: list[dict[str, Any]]) -> Node:
    """The element tree of a snapshot (ids name the parent: ``A.b:slice.c``)."""
    root = Node(elements[0], elements[0]["path"])
    by_id: dict[str, Node] = {elements[0]["id"]: root}
    for element in elements[1:]:
        element_id = element.get("id") or element["path"]
        parent_id, _, last = element_id.rpartition(".")
        name, _, slice_name = last.partition(":")
        node = Node(element, name)
        by_id[element_id] = node
        if slice_name and "/" not in slice_name:
            sliced = by_id.get(f"{parent_id}.{name}")
            if sliced is not None:
                sliced.slices.append(node)
                continue
        parent = by_id.get(parent_id)
        if parent is not None:
            parent.children.append(node)
    return root


def _suffix(code: str) -> str:
    return code[0].upper() + code[1:]


def _is_primitive(code: str) -> bool:
    return code[:1].islower() or code == _FHIRPATH_STRING


def _listify(value: Any) -> list[Any]:
    if value is None:
        return []
    return value if isinstance(value, list) else [value]


def _matches_pattern(value: Any, pattern: Any) -> bool:
    """``value`` has everything ``pattern`` has (arrays: each pattern item matched by some item)."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(_matches_pattern(value.get(k), v) for k, v in pattern.items())
    if isinstance(pattern, list):
        items = _listify(value)
        return all(any(_matches_pattern(item, p) for item in items) for p in pattern)
    return value == pattern


def _fixed_or_pattern(element: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in element.items():
        if key.startswith("fixed"):
            return "fixed", value
        if key.startswith("pattern"):
            return "pattern", value
    return None


def _codings(value: Any, type_code: str) -> list[tuple[str | None, str]]:
    """(system, code) pairs a bound element carries."""
    if type_code == "CodeableConcept" and isinstance(value, dict):
        return [(c.get("system"), c["code"]) for c in value.get("coding", []) if "code" in c]
    if type_code in ("Coding", "Quantity") and isinstance(value, dict) and "code" in value:
        return [(value.get("system"), value["code"])]
    if isinstance(value, str):
        return [(None, value)]
    return []


class Validator:
    """Validates resources against snapshots; ``resolve`` finds StructureDefinitions by url,
    ``check_code`` answers value-set membership (None: the value set is not available)."""

    def __init__(
        self, resolve: Resolver, check_code: CodeCheck, trees: MutableMapping[str, Node] | None = None
    ) -> None:
        self.resolve = resolve
        self.check_code = check_code
        #: compiled trees by url (a caller may share one mapping between validators)
        self._trees: MutableMapping[str, Node] = trees if trees is not None else {}

    def tree(self, url: str) -> Node | None:
        tree = self._trees.get(url)
        if tree is None:
            sd = self.resolve(url)
            if sd is None or not (sd.get("snapshot") or {}).get("element"):
                return None
            tree = self._trees[url] = compile_tree(sd["snapshot"]["element"])
        return tree

    def validate(self, resource: dict[str, Any], url: str) -> list[Issue]:
        tree = self.tree(url)
        if tree is None:
            return [Issue("error", "not-found", f"Profile {url} is not known to this server", [])]
        run = _Run(self, resource)
        run.node(tree, resource, tree.name, 0)
        return run.issues


class _Run:
    def __init__(self, validator: Validator, resource: dict[str, Any], root: dict[str, Any] | None = None) -> None:
        self.v = validator
        self.resource = resource
        #: %rootResource: the container of a contained resource, else the resource itself
        self.root = root if root is not None else resource
        self.issues: list[Issue] = []

    def error(self, where: str, message: str, code: str = "invariant", severity: str = "error") -> None:
        self.issues.append(Issue(severity, code, f"{message} (at {where})", [where]))

    # -- one object against one node's children ---------------------------------------------
    def node(self, node: Node, obj: dict[str, Any], where: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            return
        self.constraints(node, obj, where)
        for child in node.children:
            self.element(child, obj, where, depth)

    def element(self, child: Node, obj: dict[str, Any], where: str, depth: int) -> None:
        items = self.items(child, obj, where)
        path = f"{where}.{child.name.removesuffix('[x]')}"
        if len(items) < child.min:
            self.error(path, f"{child.element['path']}: minimum required = {child.min}, but only found {len(items)}")
        if len(items) > child.max:
            what = "is not allowed by the profile" if child.max == 0 else f"allows at most {child.element['max']}"
            self.error(path, f"{child.element['path']} {what}, found {len(items)}")
        matched: dict[int, Node] = {}
        if child.slices:
            matched = self.slice(child, items, path, depth)
        for i, (key, value, type_code) in enumerate(items):
            at = f"{where}.{key}[{i}]" if child.repeats else f"{where}.{key}"
            self.item(child, value, type_code, at, depth)
            if i in matched:
                self.item(matched[i], value, type_code, at, depth)

    def items(self, child: Node, obj: dict[str, Any], where: str) -> list[tuple[str, Any, str]]:
        """(json key, value, type code) of every value of ``child`` in ``obj``."""
        name = child.name
        types = child.types
        out: list[tuple[str, Any, str]] = []
        if name.endswith("[x]"):
            stem = name[:-3]
            allowed = {_suffix(t["code"]): t["code"] for t in types}
            for key, value in obj.items():
                if key.startswith(stem) and key[len(stem) : len(stem) + 1].isupper():
                    suffix = key[len(stem) :]
                    if suffix not in allowed:
                        self.error(f"{where}.{key}", f"{child.element['path']}: type {suffix} is not allowed here")
                        continue
                    out += [(key, v, allowed[suffix]) for v in _listify(value)]
            return out
        type_code = types[0]["code"] if types else "BackboneElement"
        values = _listify(obj.get(name))
        if not values and _is_primitive(type_code) and f"_{name}" in obj:
            values = [None] * len(_listify(obj[f"_{name}"]))
        return [(name, v, type_code) for v in values]

    def item(self, node: Node, value: Any, type_code: str, at: str, depth: int) -> None:
        element = node.element
        fixed = node.fixed
        if fixed is not None and value is not None:
            kind, expected = fixed
            ok = value == expected if kind == "fixed" else _matches_pattern(value, expected)
            if not ok:
                self.error(at, f"Value does not match the {kind} value {expected!r} of {element['path']}", "value")
        if node.binding is not None and value is not None:
            self.binding(node.binding, value, type_code, at)
        if value is not None and (node.limits or node.max_length is not None):
            self.bounds(node, value, at)
        if value is None or _is_primitive(type_code):
            if node.children and isinstance(value, dict):
                self.node(node, value, at, depth + 1)
            elif value is not None:
                self.constraints(node, value, at)  # a profile's invariant on a primitive element
            return
        if not isinstance(value, dict):
            return
        if type_code == "Reference":
            self.reference(element, value, at)
        if node.children:
            self.node(node, value, at, depth + 1)
            return
        # an element the snapshot does not unroll still has its own invariants (its type's come below)
        self.constraints(node, value, at)
        # a resource inside this one is its own %resource; a contained one keeps %rootResource
        run = self
        if "resourceType" in value:
            contained = node.element["path"].endswith(".contained")
            run = _Run(self.v, value, self.root if contained else value)
        for url in self.type_profiles(node, type_code, value):
            tree = self.v.tree(url)
            if tree is None:
                self.error(at, f"Profile {url} is not known; {at} was not checked against it", "not-found", "warning")
                continue
            run.node(tree, value, at, depth + 1)
        if run is not self:
            self.issues += run.issues

    def type_profiles(self, node: Node, type_code: str, value: dict[str, Any]) -> list[str]:
        for t in node.types:
            if t["code"] == type_code and t.get("profile"):
                return list(t["profile"])
        if type_code in ("Resource", "DomainResource") or type_code[:1].isupper() and "resourceType" in value:
            return [f"http://hl7.org/fhir/StructureDefinition/{value.get('resourceType', type_code)}"]
        if type_code in ("BackboneElement", "Element"):
            return []
        return [f"http://hl7.org/fhir/StructureDefinition/{type_code}"]

    # -- checks -------------------------------------------------------------------------------
    def constraints(self, node: Node, obj: Any, where: str) -> None:
        for c in node.rules:
            try:
                ok = fhirpath.holds(c["expression"], obj, node.element["path"], self.resource, self.root)
            except fhirpath.FhirPathError as exc:
                self.error(where, f"Invariant {c['key']} could not be evaluated: {exc}", "processing", "warning")
                continue
            if not ok:
                severity = "warning" if c.get("severity") == "warning" else "error"
                self.error(
                    where, f"Invariant {c['key']} failed: {c.get('human', c['expression'])}", "invariant", severity
                )

    def bounds(self, node: Node, value: Any, at: str) -> None:
        """``maxLength`` of strings; ``minValue[x]``/``maxValue[x]`` of numbers, dates, times
        and Quantities (compared when the units agree: a bound in mg says nothing of a value in g)."""
        path = node.element["path"]
        if node.max_length is not None and isinstance(value, str) and len(value) > node.max_length:
            self.error(at, f"{path}: {len(value)} characters, more than maxLength {node.max_length}", "value")
        for kind, bound in node.limits:
            actual, limit = _comparable(value, bound)
            if actual is None or limit is None:
                continue
            if (kind == "min" and actual < limit) or (kind == "max" and actual > limit):
                word = "below minValue" if kind == "min" else "above maxValue"
                self.error(at, f"{path}: {value!r} is {word} {bound!r}", "value")

    def binding(self, binding: dict[str, Any], value: Any, type_code: str, at: str) -> None:
        codes = _codings(value, type_code)
        if not codes:
            if binding["strength"] == "required" and type_code in ("CodeableConcept", "Coding", "code"):
                self.error(at, f"No code from the required value set {binding['valueSet']}", "code-invalid")
            return
        url = binding["valueSet"]
        answers = [self.v.check_code(url, system, code) for system, code in codes]
        if any(a is None for a in answers):
            self.error(at, f"Value set {url} is not available; the binding was not checked", "not-found", "warning")
            return
        if any(answers):
            return
        shown = ", ".join(f"{s}|{c}" if s else c for s, c in codes)
        if binding["strength"] == "required":
            self.error(at, f"{shown} is not in the required value set {url}", "code-invalid")
        else:
            self.error(at, f"{shown} is not in the extensible value set {url}", "code-invalid", "warning")

    def reference(self, element: dict[str, Any], value: dict[str, Any], at: str) -> None:
        targets = [
            p for t in element.get("type", []) if t.get("code") == "Reference" for p in t.get("targetProfile", [])
        ]
        ref = value.get("reference")
        if not targets or not isinstance(ref, str):
            return
        target_type = _referenced_type(ref, self.root)
        if target_type is None:
            return
        allowed = {_profile_type(p, self.v.resolve) for p in targets}
        if "Resource" not in allowed and target_type not in allowed:
            self.error(at, f"Reference to {target_type} is not allowed here (allowed: {', '.join(sorted(allowed))})")

    def slice(self, sliced: Node, items: list[tuple[str, Any, str]], path: str, depth: int) -> dict[int, Node]:
        slicing = sliced.element.get("slicing") or {}
        discriminators = slicing.get("discriminator") or []
        matched: dict[int, Node] = {}
        counts = {id(s): 0 for s in sliced.slices}
        for i, (_key, value, type_code) in enumerate(items):
            for s in sliced.slices:
                if self.in_slice(s, discriminators, value, type_code):
                    matched[i] = s
                    counts[id(s)] += 1
                    break
            else:
                if slicing.get("rules") == "closed":
                    self.error(
                        f"{path}[{i}]", f"{sliced.element['path']}: the item matches none of the slices (closed)"
                    )
        for s in sliced.slices:
            n = counts[id(s)]
            name = s.element.get("sliceName")
            if n < s.min:
                self.error(path, f"Slice {sliced.element['path']}:{name}: minimum required = {s.min}, found {n}")
            if n > s.max:
                self.error(path, f"Slice {sliced.element['path']}:{name} allows at most {s.element['max']}, found {n}")
        return matched

    def in_slice(self, s: Node, discriminators: list[dict[str, Any]], value: Any, type_code: str) -> bool:
        for d in discriminators:
            kind, dpath = d.get("type"), d.get("path", "$this")
            if kind in ("value", "pattern"):
                if not _discriminator_value_matches(s, dpath, value, self):
                    return False
            elif kind == "type":
                if type_code not in {t["code"] for t in s.types}:
                    return False
            elif kind == "exists":
                present = bool(_at_path(value, dpath))
                target = _node_at(s, dpath)
                if target is not None and present != (target.min > 0):
                    return False
            elif kind == "profile":
                profiles = [p for t in s.types for p in t.get("profile", [])]
                if profiles and not all(self.conforms(value, p) for p in profiles):
                    return False
            else:
                return False
        return True

    def conforms(self, value: Any, url: str) -> bool:
        tree = self.v.tree(url)
        if tree is None or not isinstance(value, dict):
            return False
        probe = _Run(self.v, self.resource, self.root)
        probe.node(tree, value, "probe", 0)
        return not any(i.severity == "error" for i in probe.issues)


def _comparable(value: Any, bound: Any) -> tuple[Any, Any]:
    """The two sides of a min/max comparison, or Nones when they cannot be compared."""
    if isinstance(bound, dict) and isinstance(value, dict):  # Quantity
        same = (bound.get("system"), bound.get("code")) == (value.get("system"), value.get("code"))
        if same and isinstance(bound.get("value"), (int, float)) and isinstance(value.get("value"), (int, float)):
            return value["value"], bound["value"]
        return None, None
    if isinstance(bound, bool) or isinstance(value, bool):
        return None, None
    if isinstance(bound, (int, float)) and isinstance(value, (int, float)):
        return value, bound
    if isinstance(bound, str) and isinstance(value, str):  # date, dateTime, instant, time (ISO 8601)
        n = min(len(bound), len(value))
        return value[:n], bound[:n]
    return None, None


def _at_path(value: Any, dpath: str) -> list[Any]:
    values = [value]
    if dpath in ("$this", ""):
        return values
    for part in dpath.split("."):
        values = [v for x in values if isinstance(x, dict) for v in _listify(x.get(part))]
    return values


def _node_at(s: Node, dpath: str) -> Node | None:
    node: Node | None = s
    if dpath in ("$this", ""):
        return node
    for part in dpath.split("."):
        node = node.child(part) if node is not None else None
    return node


def _discriminator_value_matches(s: Node, dpath: str, value: Any, run: _Run) -> bool:
    if dpath == "url" and not s.children:  # extension slices: the url is the extension's profile
        profiles = [p for t in s.types for p in t.get("profile", [])]
        if profiles:
            return isinstance(value, dict) and value.get("url") in profiles
    target = _node_at(s, dpath)
    if target is None:
        return False
    expected = _fixed_or_pattern(target.element)
    actual = _at_path(value, dpath)
    if expected is not None:
        kind, want = expected
        return any((v == want) if kind == "fixed" else _matches_pattern(v, want) for v in actual)
    binding = target.element.get("binding") or {}
    if binding.get("strength") == "required" and binding.get("valueSet"):
        type_code = target.types[0]["code"] if target.types else "code"
        return any(
            run.v.check_code(binding["valueSet"], sys, code) for v in actual for sys, code in _codings(v, type_code)
        )
    return False


def _referenced_type(ref: str, resource: dict[str, Any]) -> str | None:
    if ref.startswith("#"):
        for contained in resource.get("contained", []):
            if contained.get("id") == ref[1:]:
                return contained.get("resourceType")
        return None
    if ref.startswith("urn:") or "?" in ref:
        return None
    parts = ref.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


@functools.lru_cache(maxsize=512)
def _core_type(url: str) -> str:
    return url.rsplit("/", 1)[-1]


def _profile_type(url: str, resolve: Resolver) -> str:
    sd = resolve(url)
    if sd is not None and sd.get("type"):
        return str(sd["type"])
    return _core_type(url)
