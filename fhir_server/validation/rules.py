"""Profiles that rules require of resources that do not claim them: ``ImplementationGuide.global``.

Why: a consultation request written by an EHR that knows nothing of our profiles must still
meet them, or the workflow downstream breaks on a missing consultation number. FHIR says how an
implementation guide requires a profile of every resource of a type (``global``); we narrow a
rule to some resources of the type with the extension ``global-criteria`` (a FHIRPath boolean
evaluated on the resource, e.g. "its category is a teleconsultation"). Rules come from every
stored ``active`` ImplementationGuide, re-read when one changes (checked at most once per ``ttl``
seconds, storage/stamp.py); a type without rules costs a dict lookup per write.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Repository, Session
from fhir_server.storage.stamp import TypeStamp
from fhir_server.validation import fhirpath

CRITERIA_URL = "http://fhir.telefhir.cn/StructureDefinition/global-criteria"


@dataclass(frozen=True)
class Rule:
    profile: str
    #: FHIRPath on the resource; None: every resource of the type
    criteria: str | None
    source: str


class ProfileRules:
    def __init__(self, search: Any, repo: Repository, ttl: float = 1.0) -> None:
        self.search = search
        self.repo = repo
        self.stamp = TypeStamp(repo, "ImplementationGuide", ttl)
        self._rules: dict[str, list[Rule]] = {}

    def invalidate(self) -> None:
        self.stamp.expire()

    def required(self, resource: dict[str, Any]) -> list[str]:
        """The profiles rules require of ``resource``."""
        rules = self._current().get(resource.get("resourceType", ""), [])
        return [r.profile for r in rules if r.criteria is None or _holds(r.criteria, resource)]

    def _current(self) -> dict[str, list[Rule]]:
        if self.stamp.changed():
            with self.repo.session(side=True) as session:  # not the writer's: it must not flush a Bundle
                self._rules = self._read(session)
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


#: ``element.coding.where(system = 'S' [and code = 'C']).exists()``, the usual rule criteria
_CODED = re.compile(r"(\w+)\.coding\.where\(system = '([^']*)'(?: and code = '([^']*)')?\)\.exists\(\)")


def _holds(criteria: str, resource: dict[str, Any]) -> bool:
    """Whether a rule covers ``resource``. Rules run on every write of their type, and fhirpathpy
    took 40% of ingest evaluating them, so the usual form ("it carries this code") is answered
    directly; anything else is evaluated as FHIRPath."""
    coded = _CODED.fullmatch(criteria)
    if coded is not None:
        element, system, code = coded.groups()
        concepts = resource.get(element)
        for concept in concepts if isinstance(concepts, list) else [concepts]:
            for coding in (concept or {}).get("coding", []) if isinstance(concept, dict) else []:
                if coding.get("system") == system and (code is None or coding.get("code") == code):
                    return True
        return False
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
