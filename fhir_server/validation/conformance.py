"""Profile validation against what the server holds: stored StructureDefinitions and ValueSets.

Why here: profiles.py is pure (it is given a resolver and a code check); this module answers
both from a database session — a profile by canonical url (``url|version`` picks a version),
stored ones first, then the R4 core definitions — and value-set membership from the
terminology package. A core value set that is not stored is left to structural.py, which checks
the base's required bindings on every write; any other unknown value set is a warning.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError, Issue
from fhir_server.storage.repository import Session
from fhir_server.terminology import codes_in_valueset
from fhir_server.validation import fhirpath
from fhir_server.validation.definitions import base_definition, is_core_url
from fhir_server.validation.profiles import Node, Validator
from fhir_server.validation.rules import ProfileRules
from fhir_server.validation.snapshot import SnapshotError, generate, with_snapshot

CORE_VALUESETS = "http://hl7.org/fhir/ValueSet/"


class _Trees(dict[str, Node]):
    """Compiled trees: the core definitions' kept for the process (they never change), stored
    profiles' for one request (a new version must be seen at once)."""

    core: dict[str, Node] = {}

    def get(self, url: str, default: Any = None) -> Any:
        return self.core.get(url) or super().get(url, default)

    def __setitem__(self, url: str, tree: Node) -> None:
        if is_core_url(url):
            self.core[url] = tree
        else:
            super().__setitem__(url, tree)


class ProfileValidation:
    """One request's view: profiles and value sets read once each."""

    def __init__(self, session: Session, search: Any) -> None:
        self.session = session
        self.search = search
        self._sds: dict[str, dict[str, Any] | None] = {}
        self._valuesets: dict[str, frozenset[tuple[str | None, str]] | None] = {}
        self.validator = Validator(self.resolve, self.check_code, _Trees())

    # -- StructureDefinitions -----------------------------------------------------------------
    def resolve(self, url: str) -> dict[str, Any] | None:
        if url not in self._sds:
            self._sds[url] = self._find(url)
        return self._sds[url]

    def _find(self, url: str) -> dict[str, Any] | None:
        canonical, _, version = url.partition("|")
        params = [("url", canonical)] + ([("version", version)] if version else [])
        found = self.search.match(self.session, "StructureDefinition", params, limit=50)
        if found:
            newest = max(found, key=lambda v: v.updated_us).resource()
            if "snapshot" not in newest and "differential" in newest:
                try:
                    newest = with_snapshot(newest, self.resolve)
                except SnapshotError:
                    return None
            return newest
        return base_definition(canonical) if is_core_url(canonical) else None

    # -- value sets ---------------------------------------------------------------------------
    def check_code(self, url: str, system: str | None, code: str) -> bool | None:
        if url not in self._valuesets:
            try:
                self._valuesets[url] = codes_in_valueset(self.session, url, self.search)
            except FhirError:
                self._valuesets[url] = None
        codes = self._valuesets[url]
        if codes is None:
            return True if url.startswith(CORE_VALUESETS) else None
        if system is None:
            return any(c == code for _s, c in codes)
        return (system, code) in codes or (None, code) in codes

    # -- entry points -------------------------------------------------------------------------
    def validate(self, resource: dict[str, Any], profiles: list[str] | None = None) -> list[Issue]:
        """Issues against ``profiles`` (default: the base definition and every ``meta.profile``)."""
        urls = list(profiles) if profiles else declared_profiles(resource)
        claimed = set(declared_profiles(resource)[1:])
        issues: list[Issue] = []
        for url in urls:
            if url in claimed and self.resolve(url) is None:
                # Profiles are claims a server may not know (Synthea's US Core ones): not checked,
                # and no reason to refuse the resource (http://hl7.org/fhir/R4/profiling.html#profile-uses).
                where = f"{resource.get('resourceType')}.meta.profile"
                issues.append(Issue("warning", "not-found", f"Profile {url} is not known here; not checked", [where]))
                continue
            issues += self.validator.validate(resource, url)
        return _unique(issues)


def declared_profiles(resource: dict[str, Any]) -> list[str]:
    """The base definition of the resource's type and the profiles it claims in ``meta.profile``."""
    base = f"http://hl7.org/fhir/StructureDefinition/{resource.get('resourceType')}"
    claimed = [p for p in (resource.get("meta") or {}).get("profile", []) if isinstance(p, str)]
    return [base] + [p for p in claimed if p != base]


def _unique(issues: list[Issue]) -> list[Issue]:
    seen: set[tuple[str, str, tuple[str, ...]]] = set()
    out = []
    for issue in issues:
        key = (issue.severity, issue.diagnostics, tuple(issue.expression or ()))
        if key not in seen:
            seen.add(key)
            out.append(issue)
    return out


def enforce_profiles(search: Any, rules: ProfileRules) -> Any:
    """A repository write check: a resource must meet the profiles it claims in ``meta.profile``
    and those rules require of it (validation/rules.py); 422 with every issue, nothing stored.
    A resource that claims none and that no rule covers costs a dict lookup."""

    def check(session: Session, _res_id: str, resource: dict[str, Any] | None, _current: Any) -> None:
        if resource is None:
            return
        claimed = declared_profiles(resource)[1:]
        required = [p for p in rules.required(session, resource) if p not in claimed]
        if not claimed and not required:
            return
        raise_for_errors(ProfileValidation(session, search).validate(resource, claimed + required))

    return check


def raise_for_errors(issues: list[Issue]) -> None:
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        raise FhirError("invalid", f"{errors[0].diagnostics}{more}", issues=issues)


def complete_snapshot(search: Any) -> Any:
    """A StructureDefinition write hook: a profile stored with a differential and no snapshot
    gets its snapshot generated (so it is usable at once, and readers see what is enforced);
    one whose differential cannot be applied to its base, or whose invariants do not parse, is
    a 422."""

    def hook(session: Session, _res_id: str, resource: dict[str, Any] | None, _current: Any) -> None:
        if resource is None:
            return
        _check_invariants(resource)
        if "snapshot" in resource or not (resource.get("differential") or {}).get("element"):
            return
        if resource.get("derivation", "constraint") != "constraint":
            return
        try:
            resource["snapshot"] = {"element": generate(resource, ProfileValidation(session, search).resolve)}
        except SnapshotError as exc:
            raise FhirError("invalid", f"StructureDefinition {resource.get('url')}: {exc}") from None

    return hook


def _check_invariants(sd: dict[str, Any]) -> None:
    for part in ("differential", "snapshot"):
        for i, element in enumerate((sd.get(part) or {}).get("element", [])):
            for c in element.get("constraint", []):
                try:
                    if c.get("expression"):
                        fhirpath.compiled(c["expression"])
                except fhirpath.FhirPathError as exc:
                    where = f"StructureDefinition.{part}.element[{i}]"
                    raise FhirError(
                        "invalid", f"{element.get('id', element.get('path'))}: invariant {c.get('key')}: {exc}", where
                    ) from None
