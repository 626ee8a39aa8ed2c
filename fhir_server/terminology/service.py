"""The two questions token search modifiers ask: which codes are in a value set (``:in``,
``:not-in``), and which codes are under or over a code (``:below``, ``:above``).

Why results are cached with a fingerprint: a search with ``:in`` may run many times a second,
and expanding a value set reads and walks whole CodeSystems. An expansion is kept together with
the stored rows (rid, version, last update) of every ValueSet and CodeSystem it was computed
from; before it is reused, one indexed query (``store.probe``) checks that those are still the
current rows under the same urls. A new version of any of them is therefore seen at once.
See http://hl7.org/fhir/R4/search.html#token and http://hl7.org/fhir/R4/valueset.html.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session
from fhir_server.terminology import canonical
from fhir_server.terminology.cache import caches_for
from fhir_server.terminology.codesystem import _SUBSUMPTION_MEANINGS, CodeSystemView, Direction
from fhir_server.terminology.compose import Pair, TooMany, evaluate_compose, too_many
from fhir_server.terminology.concepts import NO_CODES
from fhir_server.terminology.expansion import expansion_codes, is_complete
from fhir_server.terminology.locate import table_content
from fhir_server.terminology.store import Fingerprint, Matcher, ProbeKey, RowId, Store, probe
from fhir_server.terminology.table import TableContent

#: the most codes a value set (or a subsumption closure) may have to be used in a search
MAX_CODES = 10_000
#: how deep ValueSet imports may nest (a guard besides the cycle check)
MAX_IMPORT_DEPTH = 32
#: the largest CodeSystem whose content is parsed into memory to evaluate a compose (a whole
#: system, filters); larger ones (LOINC) are answered only from their rows: ``$lookup``,
#: ``$validate-code``, ``$subsumes``, ``$expand`` of the whole system, ``:below``/``:above``
MAX_PARSED_CONCEPTS = 25_000

_default_matcher: Matcher | None = None


@dataclass(frozen=True)
class Expansion:
    """A value set's codes and the stored rows they were computed from."""

    codes: frozenset[Pair]
    fingerprint: tuple[tuple[ProbeKey, frozenset[RowId]], ...]


def _matcher(search: Matcher | None) -> Matcher:
    """``search`` or a ``SearchEngine`` on the standard registry (``url`` and ``version`` are
    standard parameters, so any registry answers them the same way)."""
    global _default_matcher
    if search is not None:
        return search
    if _default_matcher is None:
        from fhir_server.search.engine import SearchEngine  # here: engine imports query, which may import us
        from fhir_server.search.registry import get_registry

        _default_matcher = SearchEngine(get_registry())
    return _default_matcher


class _Evaluation:
    """One ``codes_in_valueset``/``code_closure`` call: a ``ComposeSource`` over stored resources,
    with the import stack (cycle guard) and the fingerprint of what has been read."""

    def __init__(self, session: Session, search: Matcher | None, limit: int) -> None:
        self.session = session
        self.caches = caches_for(session.repo)
        self.store = Store(session, _matcher(search), self.caches)
        self.limit = limit
        self.stack: list[str] = []
        self.fingerprints: list[Fingerprint] = [{}]

    # -- ComposeSource --------------------------------------------------------------------
    def codesystem(self, system: str, version: str | None) -> CodeSystemView:
        ref = canonical.parse("CodeSystem", system, version)
        table = table_content(self.session, ref)
        if table is not None and table.info.count > MAX_PARSED_CONCEPTS:
            # parsing LOINC-sized content costs a worker ~140 MB and over a second (table.py)
            raise TooMany(f"CodeSystem {ref} ({table.info.count} concepts)", MAX_PARSED_CONCEPTS)
        _, view = self.store.find(ref, self.fingerprints[-1], CodeSystemView.from_resource)
        return view

    def valueset(self, reference: str) -> frozenset[Pair]:
        ref = canonical.parse("ValueSet", reference)
        name = str(ref)
        if name in self.stack:
            raise FhirError("invalid-param", f"ValueSet import cycle: {' -> '.join([*self.stack, name])}")
        if len(self.stack) >= MAX_IMPORT_DEPTH:
            raise FhirError("invalid-param", f"ValueSet imports nest deeper than {MAX_IMPORT_DEPTH} at {name}")
        cached: Expansion | None = self.caches.expansions.get(name)
        if cached is not None:
            current = probe(self.session, [key for key, _ in cached.fingerprint])
            if current == dict(cached.fingerprint):
                return self._done(name, cached)
        fingerprint: Fingerprint = {}
        _, resource = self.store.find(ref, fingerprint, _valueset_json)
        self.stack.append(name)
        self.fingerprints.append(fingerprint)
        try:
            codes = self._codes_of(name, resource)
        except TooMany:
            raise
        except FhirError as exc:
            raise FhirError(exc.kind, f"ValueSet {name}: {exc.diagnostics}") from None
        finally:
            self.stack.pop()
            self.fingerprints.pop()
        expansion = Expansion(codes, tuple(sorted(fingerprint.items())))
        self.caches.expansions.put(name, expansion)
        return self._done(name, expansion)

    # -- helpers --------------------------------------------------------------------------
    def _done(self, name: str, expansion: Expansion) -> frozenset[Pair]:
        """Hand ``expansion`` to the importer: its fingerprint joins the importer's."""
        if len(expansion.codes) > self.limit:
            raise too_many(f"ValueSet {name}", self.limit)
        self.fingerprints[-1].update(expansion.fingerprint)
        return expansion.codes

    def _codes_of(self, name: str, resource: dict[str, Any]) -> frozenset[Pair]:
        expansion = resource.get("expansion")
        compose = resource.get("compose")
        if isinstance(expansion, dict):
            pairs = expansion_codes(expansion)
            if is_complete(expansion, len(pairs)):
                codes = frozenset(pairs)
                if len(codes) > self.limit:
                    raise too_many("its expansion", self.limit)
                return codes
            if not isinstance(compose, dict):
                raise FhirError(
                    "invalid-param",
                    f"its stored expansion is partial ({len(pairs)} of {expansion.get('total')} codes, "
                    f"offset {expansion.get('offset', 0)}) and it has no compose",
                )
        if not isinstance(compose, dict):
            raise FhirError("invalid-param", "it has neither an expansion nor a compose to take codes from")
        return evaluate_compose("it", compose, self, self.limit)


def _valueset_json(resource: dict[str, Any]) -> dict[str, Any]:
    return resource


def codes_in_valueset(
    session: Session, url: str, search: Matcher | None = None, *, max_codes: int = MAX_CODES
) -> frozenset[Pair]:
    """The (system, code) pairs of the stored ValueSet ``url`` (``url|version`` picks a version;
    ``ValueSet/<id>`` names one by id).

    From its complete ``expansion`` if it has one, else from ``compose`` evaluated against the
    stored CodeSystems and imported ValueSets. A system of ``None`` means the expansion listed
    the code without a system. Raises ``FhirError("invalid-param")`` for anything unknown,
    unsupported, cyclic or larger than ``max_codes``. ``search`` is the ``SearchEngine`` (any
    object with its ``match``); by default one on the standard registry.
    """
    return _Evaluation(session, search, max_codes).valueset(url)


def code_closure(
    session: Session,
    system: str,
    code: str,
    direction: Direction,
    search: Matcher | None = None,
    *,
    max_codes: int = MAX_CODES,
) -> frozenset[str]:
    """``code`` and all codes under it (``"below"``) or over it (``"above"``) in the stored
    CodeSystem whose url is ``system`` (``system|version`` picks a version).

    Raises ``FhirError("invalid-param")`` if the CodeSystem is not stored, does not list its
    codes, has no such code, has a hierarchy that is not subsumption, or the closure has more
    than ``max_codes`` codes.
    """
    if direction not in ("below", "above"):
        raise FhirError("invalid-param", f"direction must be 'below' or 'above', not {direction!r}")
    table = table_content(session, canonical.parse("CodeSystem", system))
    if table is not None:  # walked in SQL on the concept rows, never parsed
        codes = _table_closure(table, code, direction, max_codes)
    else:
        codes = _Evaluation(session, search, max_codes).codesystem(system, None).closure(code, direction)
    if len(codes) > max_codes:
        raise too_many(f"The {direction} closure of {system}|{code}", max_codes)
    return codes


def _table_closure(table: TableContent, code: str, direction: Direction, max_codes: int) -> frozenset[str]:
    """``CodeSystemView.closure`` on the concept rows, with the same refusals (400 for a search)."""
    info = table.info
    if info.content in NO_CODES:
        raise FhirError(
            "invalid-param", f"{info.label} is stored with content={info.content!r}, so its codes are not known"
        )
    if info.hierarchy_meaning not in _SUBSUMPTION_MEANINGS:
        raise FhirError(
            "invalid-param",
            f"{info.label} has hierarchyMeaning={info.hierarchy_meaning!r}: its hierarchy is not "
            "subsumption (is-a), so is-a, descendent-of, is-not-a, generalizes, :above and :below "
            "are not defined on it",
        )
    if table.get(code) is None:
        raise FhirError("invalid-param", f"{info.label} has no code {code!r}")
    return frozenset(table.closure(code, direction, max_codes + 1))
