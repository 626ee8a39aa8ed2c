"""The implementation guide (profiles/implementationguide-telefhir.json, docs/implementation-guide.md)
is generated; it must list what profiles/ and terminology/ hold now."""

from __future__ import annotations

import importlib.util
import json
import pathlib
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _gen() -> Any:
    spec = importlib.util.spec_from_file_location("gen_ig", ROOT / "scripts" / "gen_implementation_guide.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    return gen


def test_generated_guide_and_page_are_current() -> None:
    guide, page = _gen().render()
    hint = "run: .venv/bin/python scripts/gen_implementation_guide.py"
    assert (ROOT / "profiles" / "implementationguide-telefhir.json").read_text() == guide, hint
    assert (ROOT / "docs" / "implementation-guide.md").read_text() == page, hint


def test_every_profile_has_an_example() -> None:
    guide = json.loads((ROOT / "profiles" / "implementationguide-telefhir.json").read_text())
    exemplified = {e["exampleCanonical"] for e in guide["definition"]["resource"] if "exampleCanonical" in e}
    profiles = [json.loads(p.read_text()) for p in (ROOT / "profiles").glob("structuredefinition-*.json")]
    missing = [sd["id"] for sd in profiles if sd["type"] != "Extension" and sd["url"] not in exemplified]
    assert missing == []
