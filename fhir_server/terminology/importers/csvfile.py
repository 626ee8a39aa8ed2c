"""Generic CSV: a header row with ``code``, ``display``, ``parent`` and optionally ``definition``.

Any further column becomes a string property of that name (declared in ``CodeSystem.property``);
``parent`` may name several parents separated by ``|``. UTF-8, with or without a byte-order mark
(as spreadsheet programs write it). The hierarchy is stated with the ``parent`` property
(http://hl7.org/fhir/concept-properties#parent), so rows may come in any order.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterator
from typing import Any

from fhir_server.errors import FhirError

PARENT_URI = "http://hl7.org/fhir/concept-properties#parent"
_KNOWN = ("code", "display", "parent", "definition")


def read(path: pathlib.Path, options: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle)
    columns = [c.strip() for c in reader.fieldnames or ()]
    lowered = [c.lower() for c in columns]
    missing = [c for c in ("code", "display", "parent") if c not in lowered]
    if missing:
        handle.close()
        raise FhirError(
            "invalid", f"{path.name}: the header must name code, display and parent (missing: {', '.join(missing)})"
        )
    extra = [c for c in columns if c.lower() not in _KNOWN]
    header: dict[str, Any] = {
        "name": options.name or path.stem,
        "hierarchyMeaning": "is-a",
        "property": [
            {"code": "parent", "uri": PARENT_URI, "type": "code"},
            *({"code": c, "type": "string"} for c in extra),
        ],
    }

    def concepts() -> Iterator[dict[str, Any]]:
        with handle:
            for line, row in enumerate(reader, start=2):
                values = {(k or "").strip().lower(): (v or "").strip() for k, v in row.items() if k is not None}
                code = values.get("code")
                if not code:
                    raise FhirError("invalid", f"{path.name} line {line}: no code")
                concept: dict[str, Any] = {"code": code}
                if values.get("display"):
                    concept["display"] = values["display"]
                if values.get("definition"):
                    concept["definition"] = values["definition"]
                props = [
                    {"code": "parent", "valueCode": p.strip()} for p in values.get("parent", "").split("|") if p.strip()
                ]
                props += [{"code": c, "valueString": row[c].strip()} for c in extra if (row.get(c) or "").strip()]
                if props:
                    concept["property"] = props
                yield concept

    return header, concepts()
