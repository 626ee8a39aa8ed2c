"""JSON Patch (RFC 6902) for the FHIR ``patch`` interaction.

Why: http://hl7.org/fhir/R4/http.html#patch lets clients send ``application/json-patch+json``
documents. The ``jsonpatch`` library does the pointer work; this module adds what a server
needs around it: the input resource is never touched (it may be a cached stored version), the
operations are copied so the result shares no objects with the request, ``test`` compares JSON
values strictly (``true`` is not ``1``), and library exceptions become ``FhirError`` kinds:
a malformed document is the client's syntax error (400 ``bad-request``); a well-formed patch
that does not fit this resource (failed ``test``, missing target) is ``processing`` (422), as
HAPI and most servers answer.
"""

from __future__ import annotations

import copy
from decimal import Decimal
from typing import Any

import jsonpatch
import jsonpointer

from fhir_server.errors import FhirError

#: Members each RFC 6902 operation must carry besides ``op`` and ``path`` (section 4).
_REQUIRED_MEMBERS: dict[str, tuple[str, ...]] = {
    "add": ("value",),
    "remove": (),
    "replace": ("value",),
    "move": ("from",),
    "copy": ("from",),
    "test": ("value",),
}


def json_equal(a: Any, b: Any) -> bool:
    """RFC 6902 section 4.6 equality: same JSON type and value; numbers compare numerically."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float, Decimal)) and isinstance(b, (int, float, Decimal)):
        return Decimal(str(a)) == Decimal(str(b))
    if isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(json_equal(a[k], b[k]) for k in a)
    return a is None and b is None


class _StrictTestOperation(jsonpatch.TestOperation):
    """``test`` with JSON (not Python) equality, so ``1`` does not match ``true``."""

    def apply(self, obj: Any) -> Any:
        try:
            subobj, part = self.pointer.to_last(obj)
            val = subobj if part is None else self.pointer.walk(subobj, part)
        except jsonpointer.JsonPointerException as exc:
            raise jsonpatch.JsonPatchTestFailed(str(exc)) from None
        if "value" not in self.operation:
            raise jsonpatch.InvalidJsonPatch("The operation does not contain a 'value' member")
        if not json_equal(val, self.operation["value"]):
            raise jsonpatch.JsonPatchTestFailed(
                f"test failed at {self.location}: value is {val!r}, expected {self.operation['value']!r}"
            )
        return obj


class _FhirJsonPatch(jsonpatch.JsonPatch):
    operations = {**jsonpatch.JsonPatch.operations, "test": _StrictTestOperation}


def _check_document(operations: Any) -> None:
    """Reject what is not an RFC 6902 document before the library sees it."""
    if not isinstance(operations, list):
        raise FhirError("bad-request", "A JSON Patch document must be a JSON array of operations")
    for n, op in enumerate(operations):
        where = f"JSON Patch operation {n}"
        if not isinstance(op, dict):
            raise FhirError("bad-request", f"{where} is not a JSON object")
        name = op.get("op")
        if name not in _REQUIRED_MEMBERS:
            raise FhirError("bad-request", f"{where}: unknown or missing 'op' {name!r}")
        if not isinstance(op.get("path"), str):
            raise FhirError("bad-request", f"{where} ({name}): missing or non-string 'path'")
        for member in _REQUIRED_MEMBERS[name]:
            if member not in op:
                raise FhirError("bad-request", f"{where} ({name}): missing '{member}'")
        for member in ("path", "from"):
            pointer = op.get(member, "")
            if not isinstance(pointer, str) or (pointer and not pointer.startswith("/")):
                raise FhirError("bad-request", f"{where} ({name}): '{member}' is not a JSON Pointer")


def apply_json_patch(resource: dict, operations: list) -> dict:
    """Apply an RFC 6902 document to a copy of ``resource`` and return the copy."""
    _check_document(operations)
    try:
        patch = _FhirJsonPatch(copy.deepcopy(operations))
        result = patch.apply(resource, in_place=False)
    except jsonpatch.JsonPatchTestFailed as exc:
        raise FhirError("processing", f"JSON Patch test operation failed: {exc}") from None
    except jsonpatch.InvalidJsonPatch as exc:
        raise FhirError("bad-request", f"Invalid JSON Patch: {exc}") from None
    except (jsonpatch.JsonPatchConflict, jsonpointer.JsonPointerException) as exc:
        raise FhirError("processing", f"JSON Patch cannot be applied: {exc}") from None
    except (TypeError, KeyError, IndexError, ValueError) as exc:
        raise FhirError("processing", f"JSON Patch cannot be applied: {exc}") from None
    if not isinstance(result, dict):
        raise FhirError("processing", "JSON Patch result is not a JSON object")
    return result
