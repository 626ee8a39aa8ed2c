"""Write the generated ``snapshot`` of every StructureDefinition in ``profiles/`` from its differential.

Why committed snapshots: other tools (the IG Publisher, HAPI, Firely) read a profile's snapshot,
and ours must not differ from what the server generates for the same differential; the test
``tests/unit/test_profiles.py`` regenerates them and fails when a file is stale.

Usage: ``python scripts/gen_profile_snapshots.py`` (``--check``: only report stale files).
"""

from __future__ import annotations

import json
import pathlib
import sys
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fhir_server.validation.definitions import base_definition  # noqa: E402
from fhir_server.validation.snapshot import generate  # noqa: E402

PROFILES = ROOT / "profiles"


def profile_files() -> list[pathlib.Path]:
    return sorted(PROFILES.glob("structuredefinition-*.json"))


def local_resolver(files: list[pathlib.Path]) -> Any:
    """Our StructureDefinitions by url (snapshots generated on first use), then the core ones."""
    sources = {}
    for path in files:
        sd = json.loads(path.read_text())
        sources[sd["url"]] = sd
    done: dict[str, dict[str, Any]] = {}

    def resolve(url: str) -> dict[str, Any] | None:
        url = url.partition("|")[0]
        if url in done:
            return done[url]
        sd = sources.get(url)
        if sd is None:
            return base_definition(url)
        out = dict(sd)
        out["snapshot"] = {"element": generate(sd, resolve)}
        done[url] = out
        return out

    return resolve


def rendered(sd: dict[str, Any]) -> str:
    return json.dumps(sd, ensure_ascii=False, indent=2) + "\n"


def regenerate() -> dict[pathlib.Path, str]:
    """Each profile file's content with its snapshot regenerated."""
    files = profile_files()
    resolve = local_resolver(files)
    out = {}
    for path in files:
        sd = json.loads(path.read_text())
        sd.pop("snapshot", None)
        sd["snapshot"] = resolve(sd["url"])["snapshot"]  # type: ignore[index]
        out[path] = rendered(sd)
    return out


def main() -> int:
    stale = [p for p, text in regenerate().items() if p.read_text() != text]
    if "--check" in sys.argv:
        for p in stale:
            print(f"stale: {p.relative_to(ROOT)}")
        return 1 if stale else 0
    for path, text in regenerate().items():
        path.write_text(text)
    print(f"{len(profile_files())} profiles, {len(stale)} rewritten", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
