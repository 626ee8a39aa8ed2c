"""Profiles that rules require of resources that do not claim them: ``ImplementationGuide.global``.

Why: a consultation request written by an EHR that knows nothing of our profiles must still
meet them, or the workflow downstream breaks on a missing consultation number. FHIR says how an
implementation guide requires a profile of every resource of a type (``global``); we narrow a
rule to some resources of the type with the extension ``global-criteria`` (a FHIRPath boolean
evaluated on the resource, e.g. "its category is a teleconsultation"). Rules come from every
stored ``active`` ImplementationGuide, re-read at most once per ``ttl`` seconds (a new guide is
enforced within that time on every worker); a type without rules costs a dict lookup per write.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session
from fhir_server.validation import fhirpath

CRITERIA_URL = "http://fhir.telefhir.cn/StructureDefinition/global-criteria"


@dataclass(frozen=True)
class Rule:
    profile: str
    #: FHIRPath on the resource; None: every resource of the type
    criteria: str | None
    source: str


class ProfileRules:
    def __init__(self, search: Any, ttl: float = 1.0) -> None:
        self.search = search
        self.ttl = ttl
        self._rules: dict[str, list[Rule]] = {}
        self._read_at = float("-inf")
        self._lock = threading.Lock()

    def invalidate(self) -> None:
        self._read_at = float("-inf")

    def required(self, session: Session, resource: dict[str, Any]) -> list[str]:
        """The profiles rules require of ``resource``."""
        rules = self._current(session).get(resource.get("resourceType", ""), [])
        return [r.profile for r in rules if r.criteria is None or _holds(r.criteria, resource)]

    def _current(self, session: Session) -> dict[str, list[Rule]]:
        now = time.monotonic()
        if now - self._read_at < self.ttl:
            return self._rules
        with self._lock:
            if now - self._read_at >= self.ttl:
                self._rules = self._read(session)
                self._read_at = now
        return self._rules

    def _read(self, session: Session) -> dict[str, list[Rule]]:
        rules: dict[str, list[Rule]] = {}
        for version in self.search.match(session, "ImplementationGuide", [("status", "active")], limit=1000):
            guide = version.resource()
            for entry in guide.get("global", []):
                criteria = next(
                    (e.get("valueString") for e in entry.get("extension", []) if e.get("url") == CRITERIA_URL), None
                )
                rule = Rule(entry["profile"], criteria, guide.get("url", f"ImplementationGuide/{version.res_id}"))
                rules.setdefault(entry["type"], []).append(rule)
        return rules


def _holds(criteria: str, resource: dict[str, Any]) -> bool:
    try:
        result = fhirpath.evaluate(criteria, resource, resource.get("resourceType", ""), resource)
    except fhirpath.FhirPathError:
        return True  # a rule that cannot be evaluated is enforced rather than silently dropped
    return result == [True]


def guide_write_hook(rules: ProfileRules) -> Any:
    """ImplementationGuide writes: every ``global-criteria`` must parse (422 otherwise), and this
    worker sees the new rules as soon as the write commits."""

    def hook(session: Session, _res_id: str, resource: dict[str, Any] | None, _current: Any) -> None:
        for i, entry in enumerate((resource or {}).get("global", [])):
            for e in entry.get("extension", []):
                if e.get("url") == CRITERIA_URL:
                    try:
                        fhirpath.compiled(e.get("valueString", ""))
                    except fhirpath.FhirPathError as exc:
                        where = f"ImplementationGuide.global[{i}]"
                        raise FhirError("invalid", f"{where}: global-criteria {exc}", where) from None
        session.after_commit.append(rules.invalidate)

    return hook
