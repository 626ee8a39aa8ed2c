"""LOINC's table file ``Loinc.csv`` (also ``LoincTableCore.csv``) as the CodeSystem http://loinc.org.

Columns used (named as in the LOINC distribution's header): ``LOINC_NUM`` (the code),
``LONG_COMMON_NAME`` (the display, as HL7's LOINC CodeSystem uses it), ``SHORTNAME`` and
``DisplayName`` (designations), ``DefinitionDescription`` (definition), ``STATUS`` (ACTIVE,
TRIAL, DISCOURAGED, DEPRECATED; DEPRECATED concepts are marked ``inactive``), and the six
parts plus ``CLASS``, ``CLASSTYPE``, ``ORDER_OBS``, ``EXAMPLE_UCUM_UNITS`` as string properties
with the column names as codes. The file carries no version: give ``--version`` (e.g. 2.77).
LOINC content is licensed by Regenstrief: an import is the user's own copy, nothing is bundled.
"""

from __future__ import annotations

import csv
import pathlib
from collections.abc import Iterator
from typing import Any

from fhir_server.errors import FhirError

URL = "http://loinc.org"
PROPERTY_COLUMNS = (
    "COMPONENT",
    "PROPERTY",
    "TIME_ASPCT",
    "SYSTEM",
    "SCALE_TYP",
    "METHOD_TYP",
    "CLASS",
    "CLASSTYPE",
    "ORDER_OBS",
    "EXAMPLE_UCUM_UNITS",
    "STATUS",
)
#: columns that become designations (without ``use``: R4 names no use codes for LOINC's names)
_DESIGNATIONS = ("SHORTNAME", "DisplayName")


def read(path: pathlib.Path, options: Any) -> tuple[dict[str, Any], Iterator[dict[str, Any]]]:
    handle = path.open(newline="", encoding="utf-8-sig")
    reader = csv.DictReader(handle)
    columns = set(reader.fieldnames or ())
    missing = [c for c in ("LOINC_NUM", "LONG_COMMON_NAME") if c not in columns]
    if missing:
        handle.close()
        raise FhirError("invalid", f"{path.name} is not a LOINC table file (no {', '.join(missing)} column)")
    props = [c for c in PROPERTY_COLUMNS if c in columns]
    header: dict[str, Any] = {
        "id": "loinc",
        "url": URL,
        "name": "LOINC",
        "title": "LOINC Code System",
        "publisher": "Regenstrief Institute, Inc.",
        "copyright": "This content LOINC® is copyright © 1995 Regenstrief Institute, Inc. and the LOINC Committee",
        "caseSensitive": False,
        "property": [{"code": c, "type": "string"} for c in props]
        + [{"code": "inactive", "uri": "http://hl7.org/fhir/concept-properties#inactive", "type": "boolean"}],
    }

    def concepts() -> Iterator[dict[str, Any]]:
        with handle:
            for line, row in enumerate(reader, start=2):
                code = (row.get("LOINC_NUM") or "").strip()
                if not code:
                    raise FhirError("invalid", f"{path.name} line {line}: no LOINC_NUM")
                concept: dict[str, Any] = {"code": code}
                display = (row.get("LONG_COMMON_NAME") or "").strip()
                if display:
                    concept["display"] = display
                definition = (row.get("DefinitionDescription") or "").strip()
                if definition:
                    concept["definition"] = definition
                designations = [
                    {"language": "en-US", "value": row[column].strip()}
                    for column in _DESIGNATIONS
                    if (row.get(column) or "").strip()
                ]
                if designations:
                    concept["designation"] = designations
                properties = [{"code": c, "valueString": row[c].strip()} for c in props if (row.get(c) or "").strip()]
                if (row.get("STATUS") or "").strip().upper() == "DEPRECATED":
                    properties.append({"code": "inactive", "valueBoolean": True})
                if properties:
                    concept["property"] = properties
                yield concept

    return header, concepts()
