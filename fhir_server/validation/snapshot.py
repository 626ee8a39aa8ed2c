"""Snapshot generation: a profile's full element list from its base's snapshot and its differential.

Why our own: the tools that do this (HAPI's ProfileUtilities, the IG Publisher, the npm
``fhir-snapshot-generator``) need the JVM or the FHIR package registry, which our users' servers
and our CI cannot reach; profiles POSTed with only a differential must still be usable. This
follows http://hl7.org/fhir/R4/profiling.html#snapshot for what profiles use: cardinality,
types and their profiles, fixed and pattern values, bindings, invariants, slicing (slices and
their children, extension slices), children of complex types unrolled from the type's own
definition (``Patient.identifier:idCard.system``), choice types narrowed by type-specific paths
(``Observation.valueQuantity``), and ``contentReference`` elements. Differential elements are
matched by ``id`` (``path`` plus slice names), or by ``path`` and ``sliceName`` when ``id`` is
absent. A differential that loosens its base (lower ``min``, higher ``max``, a type the base does
not allow) or names an element the base does not have is refused with :class:`SnapshotError`.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

from fhir_server.model import get_model

Resolver = Callable[[str], dict[str, Any] | None]
#: ElementDefinition keys a differential replaces (the rest are merged or kept from the base)
_REPLACED = (
    "short",
    "definition",
    "comment",
    "requirements",
    "alias",
    "min",
    "max",
    "type",
    "meaningWhenMissing",
    "orderMeaning",
    "maxLength",
    "mustSupport",
    "isModifierReason",
    "isSummary",
    "binding",
    "slicing",
    "sliceName",
    "label",
    "code",
    "contentReference",
    "sliceIsConstraining",
)
_PREFIXED = ("fixed", "pattern", "defaultValue", "minValue", "maxValue")


class SnapshotError(ValueError):
    """The differential cannot be applied to its base; the message names the element."""


def _max(value: str | None) -> float:
    return float("inf") if value in (None, "*") else float(value)  # type: ignore[arg-type]


def _parent_id(element_id: str) -> str:
    return element_id.rsplit(".", 1)[0] if "." in element_id else ""


def _strip_slices(element_id: str) -> str:
    return ".".join(part.split(":", 1)[0] for part in element_id.split("."))


class _Snapshot:
    def __init__(self, elements: list[dict[str, Any]], resolve: Resolver, url: str) -> None:
        self.elements = elements
        self.resolve = resolve
        self.url = url

    def index(self, element_id: str) -> int | None:
        for i, element in enumerate(self.elements):
            if element["id"] == element_id:
                return i
        return None

    def end_of(self, i: int) -> int:
        """The index after element ``i`` and all its descendants (and, for a sliced element, its slices)."""
        own = self.elements[i]["id"]
        j = i + 1
        while j < len(self.elements):
            other = self.elements[j]["id"]
            if not (other.startswith(own + ".") or other.startswith(own + ":")):
                break
            j += 1
        return j

    # -- finding or creating the element a differential entry constrains ------------------
    def locate(self, element_id: str) -> int:
        i = self.index(element_id)
        if i is not None:
            return i
        parent_id, _, last = element_id.rpartition(".")
        name, _, slice_name = last.partition(":")
        if slice_name:
            return self._add_slice(f"{parent_id}.{name}" if parent_id else name, slice_name)
        if not parent_id:
            raise SnapshotError(f"{element_id}: not an element of the base definition")
        parent = self.locate(parent_id)
        self._unroll(parent)
        i = self.index(element_id)
        if i is None:
            i = self._choice(parent_id, name)
        if i is None:
            raise SnapshotError(f"{element_id}: not an element of the base definition")
        return i

    def _choice(self, parent_id: str, name: str) -> int | None:
        """``valueQuantity`` names ``value[x]`` narrowed to Quantity."""
        for i, element in enumerate(self.elements):
            eid = element["id"]
            if _parent_id(eid) != parent_id or not eid.endswith("[x]"):
                continue
            stem = eid.rsplit(".", 1)[-1][:-3]
            for t in element.get("type", []):
                code = t["code"]
                if name == stem + code[0].upper() + code[1:]:
                    element["type"] = [t]
                    return i
        return None

    def _add_slice(self, sliced_id: str, slice_name: str) -> int:
        base_i = self.locate(sliced_id)
        base = self.elements[base_i]
        if "slicing" not in base and not base["path"].endswith("xtension"):
            raise SnapshotError(f"{sliced_id}:{slice_name}: {sliced_id} is not sliced")
        new = copy.deepcopy(base)
        new.pop("slicing", None)
        new["id"] = f"{sliced_id}:{slice_name}"
        new["sliceName"] = slice_name
        new["min"] = (new.get("base") or {}).get("min", 0)  # the sliced element's own min counts all slices
        end = self.end_of(base_i)
        # a slice starts with the sliced element's children as constrained so far: a backbone
        # element (Observation.component) has no type definition to unroll them from
        own = sliced_id + "."
        children = [copy.deepcopy(e) for e in self.elements[base_i + 1 : end] if e["id"].startswith(own)]
        for child in children:
            child["id"] = f"{new['id']}.{child['id'][len(own) :]}"
        self.elements[end:end] = [new, *children]
        return end

    def _unroll(self, i: int) -> None:
        """Give element ``i`` its children from its type's definition, if it has none yet."""
        element = self.elements[i]
        own = element["id"]
        if i + 1 < len(self.elements) and self.elements[i + 1]["id"].startswith(own + "."):
            return
        children = self._type_children(element)
        if not children:
            return
        prefix_path = element["path"]
        added = []
        for child in children:
            child = copy.deepcopy(child)
            tail_id = child["id"].split(".", 1)[1]
            tail_path = child["path"].split(".", 1)[1]
            child["id"] = f"{own}.{tail_id}"
            child["path"] = f"{prefix_path}.{tail_path}"
            added.append(child)
        self.elements[i + 1 : i + 1] = added

    def _type_children(self, element: dict[str, Any]) -> list[dict[str, Any]]:
        ref = element.get("contentReference")
        if ref:  # e.g. Questionnaire.item.item -> #Questionnaire.item
            target = ref.lstrip("#")
            start = next((k for k, e in enumerate(self.elements) if e["id"] == target), None)
            if start is None:
                raise SnapshotError(f"{element['id']}: contentReference {ref} not found")
            out = []
            for e in self.elements[start + 1 : self.end_of(start)]:
                e = copy.deepcopy(e)
                e["id"] = "X." + e["id"][len(target) + 1 :]
                e["path"] = "X." + e["path"][len(target) + 1 :]
                out.append(e)
            return out
        types = element.get("type") or []
        if len(types) != 1:
            return []
        t = types[0]
        url = (t.get("profile") or [f"http://hl7.org/fhir/StructureDefinition/{t['code']}"])[0]
        sd = self.resolve(url)
        if sd is None or "snapshot" not in sd:
            raise SnapshotError(f"{element['id']}: the definition {url} of its type is not available")
        return list(sd["snapshot"]["element"][1:])

    # -- applying one differential entry -----------------------------------------------------
    def apply(self, diff: dict[str, Any], element_id: str) -> None:
        i = self.locate(element_id)
        target = self.elements[i]
        where = element_id
        if "min" in diff and diff["min"] < target.get("min", 0) and "sliceName" not in target:
            raise SnapshotError(f"{where}: min {diff['min']} is below the base's {target.get('min', 0)}")
        if "max" in diff and _max(diff["max"]) > _max(target.get("max")) and "sliceName" not in target:
            raise SnapshotError(f"{where}: max {diff['max']} is above the base's {target.get('max')}")
        if "type" in diff and target.get("type"):
            allowed = {t["code"] for t in target["type"]}
            for t in diff["type"]:
                if t["code"] not in allowed and not _specialises(t["code"], allowed):
                    raise SnapshotError(f"{where}: type {t['code']} is not allowed by the base ({sorted(allowed)})")
        for key, value in diff.items():
            if key in ("id", "path", "extension"):
                continue
            if key == "constraint":
                known = {c.get("key") for c in target.get("constraint", [])}
                target["constraint"] = target.get("constraint", []) + [
                    {**c, "source": c.get("source", self.url)} for c in value if c.get("key") not in known
                ]
            elif key == "condition":
                target["condition"] = sorted(set(target.get("condition", [])) | set(value))
            elif key in _REPLACED or key.startswith(_PREFIXED) or key == "isModifier":
                if key.startswith(_PREFIXED):  # one fixed[x]/pattern[x] at a time
                    for stale in [k for k in target if k.startswith(_PREFIXED[:2])]:
                        del target[stale]
                target[key] = copy.deepcopy(value)


def _specialises(code: str, allowed: set[str]) -> bool:
    """A narrower type where the base allows a wider one (``Resource`` for a resource type)."""
    if "Resource" in allowed or "DomainResource" in allowed:
        return code in get_model().resource_types
    return False


def _differential_id(diff: dict[str, Any], previous: dict[str, str]) -> str:
    if diff.get("id"):
        return str(diff["id"])
    path = str(diff["path"])
    # without ids: a child of the most recent slice of its parent path belongs to that slice
    parent_path, _, last = path.rpartition(".")
    base = previous.get(parent_path, parent_path) if parent_path else ""
    own = f"{base}.{last}" if base else last
    if diff.get("sliceName"):
        own = f"{own}:{diff['sliceName']}"
    return own


def generate(sd: dict[str, Any], resolve: Resolver) -> list[dict[str, Any]]:
    """The snapshot elements of ``sd`` (a constraint on ``baseDefinition``), from its differential."""
    base_url = sd.get("baseDefinition")
    if not base_url:
        raise SnapshotError("baseDefinition is missing")
    base = resolve(base_url)
    if base is None or "snapshot" not in base:
        raise SnapshotError(f"the base {base_url} is not available with a snapshot")
    snapshot = _Snapshot(copy.deepcopy(base["snapshot"]["element"]), resolve, sd.get("url", ""))
    for element in snapshot.elements:  # base.path/min/max stay as the base's base says
        element.setdefault("base", {"path": element["path"], "min": element.get("min", 0), "max": element.get("max")})
    latest_slice: dict[str, str] = {}
    root = base["snapshot"]["element"][0]["path"]
    for diff in (sd.get("differential") or {}).get("element", []):
        path = str(diff.get("path", ""))
        if path.split(".", 1)[0] != root:
            raise SnapshotError(f"{path}: differential paths must start with {root}")
        element_id = _differential_id(diff, latest_slice)
        snapshot.apply(diff, element_id)
        latest_slice[_strip_slices(element_id)] = element_id
    return snapshot.elements


def with_snapshot(sd: dict[str, Any], resolve: Resolver) -> dict[str, Any]:
    """``sd`` with a freshly generated ``snapshot`` (a copy; ``sd`` is left as it was)."""
    out = dict(sd)
    out["snapshot"] = {"element": generate(sd, resolve)}
    return out
