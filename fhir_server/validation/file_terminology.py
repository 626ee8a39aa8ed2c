"""Value-set membership answered from JSON files (the ``terminology/`` folder), without a database.

Why: the profile tests and the validation benchmark check bindings and binding-based slice
discriminators against our value sets the way the server does (the same compose set algebra,
terminology.compose, over the same CodeSystem views), but on files, so they need no server.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.codesystem import CodeSystemView
from fhir_server.terminology.compose import Pair, evaluate_compose
from fhir_server.validation.conformance import in_valueset


def _load(folder: pathlib.Path) -> dict[str, dict[str, Any]]:
    out = {}
    for path in sorted(folder.glob("*.json")):
        resource = json.loads(path.read_text())
        out[resource["url"]] = resource
    return out


class FileTerminology:
    """Value-set membership from the ``terminology/`` folder: compose evaluated by the server's
    own set algebra (terminology.compose) over the CodeSystem files."""

    def __init__(self, folder: pathlib.Path) -> None:
        self.codesystems = _load(folder / "codesystem")
        self.valuesets = _load(folder / "valueset")
        self._codes: dict[str, frozenset[Pair] | None] = {}

    def codesystem(self, system: str, version: str | None) -> CodeSystemView:
        if system not in self.codesystems:
            raise FhirError("not-found", f"CodeSystem {system} is not in terminology/")
        return CodeSystemView.from_resource(self.codesystems[system])

    def valueset(self, reference: str) -> frozenset[Pair]:
        codes = self.codes(reference)
        if codes is None:
            raise FhirError("not-found", f"ValueSet {reference} is not in terminology/")
        return codes

    def codes(self, url: str) -> frozenset[Pair] | None:
        url = url.partition("|")[0]
        if url not in self._codes:
            vs = self.valuesets.get(url)
            self._codes[url] = None if vs is None else evaluate_compose(url, vs["compose"], self, 100_000)
        return self._codes[url]

    def check(self, url: str, system: str | None, code: str) -> bool | None:
        return in_valueset(self.codes(url), url, system, code)
