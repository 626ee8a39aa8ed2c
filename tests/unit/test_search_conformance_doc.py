"""docs/search-parameters.md is generated; it must say what the code does now."""

from __future__ import annotations

import importlib.util
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2]


def test_generated_parameter_list_is_current() -> None:
    spec = importlib.util.spec_from_file_location("gen", ROOT / "scripts" / "gen_search_conformance.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    committed = (ROOT / "docs" / "search-parameters.md").read_text(encoding="utf-8")
    assert committed == gen.render(), "run: .venv/bin/python scripts/gen_search_conformance.py"
