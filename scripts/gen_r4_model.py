"""Generate ``fhir_server/model/r4_model.json.gz`` from FHIR.js's parsed R4 4.0.1 definitions.

Why: the server needs the R4 element tree (types, cardinality, choice types, reference
targets, required-binding codes) at run time for validation and for the XML codec. The npm
package ``fhir`` (FHIR.js, Apache-2.0) ships the official ``profiles-types.json`` and
``profiles-resources.json`` already parsed into that tree together with expanded value sets.
This script turns it into a compact file the server loads in milliseconds.

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

FHIRJS = "fhir@4.12.0"
OUT = pathlib.Path(__file__).resolve().parent.parent / "fhir_server" / "model" / "r4_model.json.gz"


def fetch(tmp: pathlib.Path) -> tuple[dict, dict]:
    subprocess.run(["npm", "pack", FHIRJS, "--silent"], cwd=tmp, check=True, capture_output=True)
    tgz = next(tmp.glob("fhir-*.tgz"))
    with tarfile.open(tgz) as tar:
        types = json.load(tar.extractfile("package/profiles/types.json"))  # type: ignore[arg-type]
        vsets = json.load(tar.extractfile("package/profiles/valuesets.json"))  # type: ignore[arg-type]
    return types, vsets


def element(prop: dict, required_vs: set[str]) -> list:
    """[type, min, max('*' or 1), choice, binding, targets, children]."""
    binding = None
    if prop.get("_valueSetStrength") == "required" and prop.get("_valueSet"):
        binding = prop["_valueSet"].split("|")[0]
        required_vs.add(binding)
    targets = [t.rsplit("/", 1)[-1] for t in prop.get("_targetProfiles", [])] or None
    children = None
    if prop.get("_properties"):
        children = props(prop["_properties"], required_vs)
    return [
        prop["_type"],
        1 if prop.get("_required") else 0,
        "*" if prop.get("_multiple") else 1,
        prop.get("_choice"),
        binding,
        targets,
        children,
    ]


def props(plist: list, required_vs: set[str]) -> dict:
    out = {}
    for p in plist:
        name = p["_name"]
        if name.startswith("_"):
            continue  # JSON shadow elements of primitives are implied by the type
        out[name] = element(p, required_vs)
    return out


def main() -> int:
    with tempfile.TemporaryDirectory() as tmpdir:
        types, vsets = fetch(pathlib.Path(tmpdir))
    required_vs: set[str] = set()
    model_types = {}
    for name, sd in types.items():
        model_types[name] = {"kind": sd["_kind"], "elements": props(sd.get("_properties", []), required_vs)}
    valuesets = {}
    for url in sorted(required_vs):
        vs = vsets.get(url)
        if not vs:
            continue
        valuesets[url] = {s["uri"]: sorted({c["code"] for c in s.get("codes", [])}) for s in vs.get("systems", [])}
    doc = {"fhirVersion": "4.0.1", "source": FHIRJS, "types": model_types, "valuesets": valuesets}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(OUT, "wt", encoding="utf-8") as fh:
        json.dump(doc, fh, separators=(",", ":"))  # element order = definition order (XML needs it)
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes, {len(model_types)} types, {len(valuesets)} value sets)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
