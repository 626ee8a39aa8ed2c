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
from fhir_server.storage.repository import Repository, Session
from fhir_server.storage.stamp import TypeStamp
from fhir_server.terminology import codes_in_valueset
from fhir_server.validation import fhirpath
from fhir_server.validation.definitions import base_definition, is_core_url
from fhir_server.validation.profiles import Node, Validator
from fhir_server.validation.rules import ProfileRules
from fhir_server.validation.snapshot import SnapshotError, generate, with_snapshot

CORE_VALUESETS = "http://hl7.org/fhir/ValueSet/"


class ProfileStore:
    """StructureDefinitions by url and their compiled trees, shared by a worker's requests.

    Why: every write that claims a profile looks its profiles up, and Synthea claims US Core
    profiles on every resource: a query per resource and claim cost a third of ingest. Lookups
    (found or not) and trees are kept until a StructureDefinition changes: this worker drops
    them when it stores one (``invalidate``), and sees another worker's within ``ttl`` seconds
    (one indexed query per ``ttl``, storage/stamp.py). Core definitions never change.
    """

    def __init__(self, search: Any, repo: Repository, ttl: float = 1.0, max_entries: int = 2000) -> None:
        self.search = search
        self.repo = repo
        self.max_entries = max_entries
        self.stamp = TypeStamp(repo, "StructureDefinition", ttl)
        self._found: dict[str, dict[str, Any] | None] = {}
        #: value sets' codes by url (None: not usable), kept until a ValueSet or CodeSystem changes
        self.terminology_stamps = (TypeStamp(repo, "ValueSet", ttl), TypeStamp(repo, "CodeSystem", ttl))
        self._codes: dict[str, frozenset[tuple[str | None, str]] | None] = {}
        #: url -> (the definition it was compiled from, tree)
        self._trees: dict[str, tuple[dict[str, Any], Node]] = {}

    def invalidate(self) -> None:
        self.stamp.expire()

    def fresh(self, url: str) -> tuple[bool, dict[str, Any] | None]:
        if self.stamp.changed():
            self._found, self._trees = {}, {}
        if url in self._found:
            return True, self._found[url]
        return False, None

    def codes(self, url: str) -> frozenset[tuple[str | None, str]] | None:
        """The codes of the stored value set ``url``, or None when it cannot be used. Read on a
        connection of its own and kept: a binding check inside a Bundle must neither flush the
        Bundle's rows nor query per resource (a value set written earlier in the same
        transaction is therefore not seen: its bindings are warnings, never wrongly errors)."""
        changed = [stamp.changed() for stamp in self.terminology_stamps]  # each stamp checked
        if any(changed):
            self._codes = {}
        if url not in self._codes:
            with self.repo.session(side=True) as session:
                try:
                    self._codes[url] = codes_in_valueset(session, url, self.search)
                except FhirError:
                    self._codes[url] = None
        return self._codes[url]

    def definition(self, url: str, resolve: Any) -> dict[str, Any] | None:
        known, sd = self.fresh(url)
        if known:
            return sd
        # On a connection of its own: a lookup inside a Bundle must not flush the Bundle's
        # pending rows (that undid its batched COPY and tripled ingest time).
        with self.repo.session(side=True) as session:
            sd = self._lookup(session, url, resolve)
        if len(self._found) >= self.max_entries:
            self._found, self._trees = {}, {}
        self._found[url] = sd
        return sd

    def _lookup(self, session: Session, url: str, resolve: Any) -> dict[str, Any] | None:
        canonical, _, version = url.partition("|")
        if is_core_url(canonical) and not version:
            core = base_definition(canonical)
            if core is not None:
                return core
        params = [("url", canonical)] + ([("version", version)] if version else [])
        found = self.search.match(session, "StructureDefinition", params, limit=50)
        if not found:
            return base_definition(canonical) if is_core_url(canonical) else None
        newest = max(found, key=lambda v: v.updated_us).resource()
        if "snapshot" not in newest and "differential" in newest:
            try:
                newest = with_snapshot(newest, resolve)
            except SnapshotError:
                return None
        return newest

    def tree(self, url: str) -> Node | None:
        """The compiled tree of ``url`` if it was compiled from the definition held now."""
        entry = self._trees.get(url)
        known, sd = self.fresh(url)
        return entry[1] if entry is not None and known and sd is entry[0] else None

    def keep_tree(self, url: str, tree: Node) -> None:
        known, sd = self.fresh(url)
        if known and sd is not None:
            self._trees[url] = (sd, tree)

    def trees(self) -> _Trees:
        return _Trees(self)


def in_valueset(
    codes: frozenset[tuple[str | None, str]] | None, url: str, system: str | None, code: str
) -> bool | None:
    """A binding's answer from a value set's codes (None: the value set is not available; a core
    value set the server does not hold is left to structural.py, so it answers True)."""
    if codes is None:
        return True if url.startswith(CORE_VALUESETS) else None
    if system is None:
        return any(c == code for _s, c in codes)
    return (system, code) in codes or (None, code) in codes


class _Trees(dict[str, Node]):
    """The Validator's tree cache backed by the store: a tree is reused while the definition it
    was compiled from is still the one the store holds."""

    def __init__(self, store: ProfileStore) -> None:
        super().__init__()
        self.store = store

    def get(self, url: str, default: Any = None) -> Any:
        tree = self.store.tree(url)
        return default if tree is None else tree

    def __setitem__(self, url: str, tree: Node) -> None:
        self.store.keep_tree(url, tree)


class ProfileValidation:
    """One request's view: profiles (through the worker's ProfileStore) and value sets."""

    def __init__(self, session: Session, store: ProfileStore) -> None:
        self.session = session
        self.store = store
        self.search = store.search
        self.validator = Validator(self.resolve, self.check_code, store.trees())

    # -- StructureDefinitions -----------------------------------------------------------------
    def resolve(self, url: str) -> dict[str, Any] | None:
        pending = self.session.conformance.get(url.partition("|")[0])
        if pending is not None and pending.get("resourceType") == "StructureDefinition":
            return pending
        return self.store.definition(url, self.resolve)

    # -- value sets ---------------------------------------------------------------------------
    def check_code(self, url: str, system: str | None, code: str) -> bool | None:
        return in_valueset(self.store.codes(url), url, system, code)

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


def enforce_profiles(store: ProfileStore, rules: ProfileRules) -> Any:
    """A repository write check: a resource must meet the profiles it claims in ``meta.profile``
    and those rules require of it (validation/rules.py); 422 with every issue, nothing stored.
    Claimed profiles the server does not hold are not checked (a claim, not a demand: Synthea
    claims US Core on every resource). A resource with nothing to check costs dict lookups."""

    def known(url: str) -> dict[str, Any] | None:
        return store.definition(url, known)

    def check(session: Session, _res_id: str, resource: dict[str, Any] | None, _current: Any) -> None:
        if resource is None:
            return
        claimed = [p for p in declared_profiles(resource)[1:] if p.partition("|")[0] in session.conformance or known(p)]
        required = [p for p in rules.required(resource) if p not in claimed]
        if not claimed and not required:
            return
        raise_for_errors(ProfileValidation(session, store).validate(resource, claimed + required))

    return check


def raise_for_errors(issues: list[Issue]) -> None:
    errors = [i for i in issues if i.severity in ("error", "fatal")]
    if errors:
        more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
        raise FhirError("invalid", f"{errors[0].diagnostics}{more}", issues=issues)


def complete_snapshot(store: ProfileStore) -> Any:
    """A StructureDefinition write hook: a profile stored with a differential and no snapshot
    gets its snapshot generated (so it is usable at once, and readers see what is enforced);
    one whose differential cannot be applied to its base, or whose invariants do not parse, is
    a 422."""

    def hook(session: Session, _res_id: str, resource: dict[str, Any] | None, _current: Any) -> None:
        store.invalidate()  # later writes of this transaction look again (and see this one)
        session.after_commit.append(store.invalidate)  # this worker sees the change at once
        if resource is None:
            return
        _check_invariants(resource)
        if resource.get("url"):
            session.conformance[resource["url"]] = resource  # later entries of this transaction see it
        if "snapshot" in resource or not (resource.get("differential") or {}).get("element"):
            return
        if resource.get("derivation", "constraint") != "constraint":
            return
        try:
            resource["snapshot"] = {"element": generate(resource, ProfileValidation(session, store).resolve)}
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
