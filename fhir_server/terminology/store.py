"""Finding the stored ValueSet or CodeSystem a reference names, and telling cheaply if it changed.

Why two lookups:
- ``probe`` answers "which current rows carry this url (or id), at which version?" with one
  indexed query over ``idx_uri``/``resources`` that reads no content. Its answer, the
  *fingerprint*, is what cached expansions and parsed CodeSystems are keyed on: any create,
  update or delete of a resource with that url changes it (a version bump, a new rid, a row
  gone), so a stale cache entry is never used.
- ``Store.find`` reads the resource itself through the ordinary search machinery
  (``SearchEngine.match`` on ``url`` and ``version``), only when the parsed form is not cached.

The probe runs *before* the read, so a write that commits in between can at worst make the next
search recompute; it can never leave a stale result under a current fingerprint.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, Protocol, TypeVar

from sqlalchemy import select

from fhir_server.errors import FhirError
from fhir_server.search.registry import get_registry
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import idx_uri, resources
from fhir_server.terminology.cache import TerminologyCaches
from fhir_server.terminology.canonical import Ref, escape_search_value

T = TypeVar("T")
#: (rid, version, updated_us) of one stored row; updated_us guards against a rid reused after a rollback
RowId = tuple[int, int, int]
#: ("url" | "id", resource type, url or id)
ProbeKey = tuple[str, str, str]
Fingerprint = dict[ProbeKey, frozenset[RowId]]

#: how many resources with one url are read to choose among versions (more means "name a version")
CANDIDATES = 5


class Matcher(Protocol):
    """What ``SearchEngine`` offers for finding resources by search parameters."""

    def match(
        self, session: Session, res_type: str, params: list[tuple[str, str]], limit: int = 2
    ) -> list[StoredVersion]: ...


class NotStored(FhirError):
    """Nothing current is stored under a reference (a search parameter error, 400, unless the
    caller knows better: the terminology operations answer 404 for the resource they address)."""

    def __init__(self, ref: Ref) -> None:
        super().__init__("invalid-param", f"{ref.res_type} {ref} is not stored on this server")
        self.ref = ref


def probe(session: Session, keys: Iterable[ProbeKey]) -> Fingerprint:
    """The current rows for each key, in at most two queries whatever the number of keys."""
    wanted = set(keys)
    out: Fingerprint = {key: frozenset() for key in wanted}
    if not wanted:
        return out
    session.flush()
    found: dict[ProbeKey, set[RowId]] = {}
    r = resources
    by_url = [k for k in wanted if k[0] == "url"]
    if by_url:
        registry = get_registry()  # CodeSystem.url is stored as its twin parameter "system"
        type_of_sp = {sp: t for _, t, _ in by_url for sp in registry.stored_sps(registry.get(t, "url"))}
        rows = session.conn.execute(
            select(idx_uri.c.sp, idx_uri.c.uri, r.c.rid, r.c.version, r.c.updated_us)
            .join(r, r.c.rid == idx_uri.c.rid)
            .where(
                idx_uri.c.sp.in_(list(type_of_sp)),
                idx_uri.c.uri.in_(sorted({url for _, _, url in by_url})),
                r.c.deleted.is_(False),
            )
        ).all()
        for sp, uri, rid, version, updated in rows:
            key = ("url", type_of_sp[sp], uri)
            if key in wanted:
                found.setdefault(key, set()).add((rid, version, updated))
    by_id = [k for k in wanted if k[0] == "id"]
    if by_id:
        rows = session.conn.execute(
            select(r.c.res_type, r.c.res_id, r.c.rid, r.c.version, r.c.updated_us).where(
                r.c.res_type.in_(sorted({t for _, t, _ in by_id})),
                r.c.res_id.in_(sorted({i for _, _, i in by_id})),
                r.c.deleted.is_(False),
            )
        ).all()
        for res_type, res_id, rid, version, updated in rows:
            key = ("id", res_type, res_id)
            if key in wanted:
                found.setdefault(key, set()).add((rid, version, updated))
    out.update({key: frozenset(rows) for key, rows in found.items()})
    return out


def row_id(version: StoredVersion) -> RowId:
    return (version.rid, version.version, version.updated_us)


class Store:
    """Reads referenced terminology resources for one session, through the caches."""

    def __init__(self, session: Session, matcher: Matcher, caches: TerminologyCaches) -> None:
        self.session = session
        self.matcher = matcher
        self.caches = caches

    def find(
        self, ref: Ref, fingerprint: Fingerprint, build: Callable[[dict[str, Any]], T], kind: str = ""
    ) -> tuple[RowId, T]:
        """The one stored resource ``ref`` names, parsed by ``build`` (or from the cache).

        ``kind`` names what ``build`` makes, when one resource type is parsed in more than one
        way (the cache keeps each apart). Records what it probed in ``fingerprint``. Raises
        ``NotStored`` if nothing is stored under the reference, ``invalid-param`` if several
        versions are and the reference names none.
        """
        rows = probe(self.session, [ref.key])[ref.key]
        fingerprint[ref.key] = rows
        if not rows:
            raise NotStored(ref)
        cached = {row: self.caches.parsed.get((ref.res_type, kind, *row)) for row in rows}
        if all(entry is not None for entry in cached.values()):
            candidates = [(row, entry[0], entry[1]) for row, entry in cached.items()]
        else:
            candidates = [(row_id(v), *self._parse(ref, v, build, kind)) for v in self._read(ref)]
        if ref.version is not None:
            candidates = [c for c in candidates if c[1] == ref.version]
        if not candidates:
            raise NotStored(ref)
        if len(candidates) > 1:
            versions = ", ".join(sorted(str(c[1]) for c in candidates))
            raise FhirError(
                "invalid-param",
                f"{len(candidates)} stored {ref.res_type}s have url {ref.url} (versions: {versions}); "
                f"name one as {ref.url}|<version>",
            )
        row, _, parsed = candidates[0]
        return row, parsed

    def _read(self, ref: Ref) -> list[StoredVersion]:
        if ref.res_id is not None:
            current = self.session.read_current(ref.res_type, ref.res_id)
            return [current] if current is not None and not current.deleted else []
        assert ref.url is not None
        params = [("url", escape_search_value(ref.url))]
        if ref.version is not None:
            params.append(("version", escape_search_value(ref.version)))
        found = self.matcher.match(self.session, ref.res_type, params, limit=CANDIDATES)
        return [v for v in found if v.res_type == ref.res_type]

    def _parse(
        self, ref: Ref, version: StoredVersion, build: Callable[[dict[str, Any]], T], kind: str
    ) -> tuple[str | None, T]:
        key = (ref.res_type, kind, *row_id(version))
        entry = self.caches.parsed.get(key)
        if entry is None:
            resource = version.resource()
            if ref.url is not None and resource.get("url") != ref.url:
                # the url search matched something else (it should not): never use it silently
                raise FhirError("exception", f"search for {ref.res_type} url {ref.url} returned {version.location}")
            business_version = resource.get("version")
            entry = (business_version if isinstance(business_version, str) else None, build(resource))
            self.caches.parsed.put(key, entry)
        return entry
