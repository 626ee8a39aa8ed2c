"""Finding what a terminology operation addresses: a CodeSystem's content, a ValueSet, a ConceptMap.

Why a module of its own: all five operations name their subject the same ways (a canonical
``url`` with an optional version, or the id of an instance-level call) and must agree on what
"not stored" and "ambiguous" mean. A CodeSystem is answered from its concept rows when every
current version under its url has them (``table.py``), else from its parsed content
(``memory.py``), so a database written before the rows existed still answers correctly.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.storage.repository import Session
from fhir_server.terminology import canonical
from fhir_server.terminology.cache import caches_for
from fhir_server.terminology.concepts import Content
from fhir_server.terminology.memory import MemoryContent
from fhir_server.terminology.store import Matcher, NotStored, Store, probe
from fhir_server.terminology.table import TableContent, current_systems


def _store(session: Session, search: Matcher | None) -> Store:
    from fhir_server.terminology.service import _matcher

    return Store(session, _matcher(search), caches_for(session.repo))


def _memory(resource: dict[str, Any]) -> MemoryContent:
    return MemoryContent(resource, resource.get("id"))


def _same(resource: dict[str, Any]) -> dict[str, Any]:
    return resource


def table_content(session: Session, ref: canonical.Ref, version: str | None = None) -> TableContent | None:
    """The rows of the CodeSystem ``ref`` names, if every current version under its url (or
    its id) has rows; None when it must be read from its content. ``version`` (or the one in
    ``ref``) picks among several. Raises ``NotStored`` when no stored version has it,
    ``invalid-param`` when several do and none is named."""
    if ref.res_id is not None:
        rows = current_systems(session, res_id=ref.res_id)
    else:
        rows = current_systems(session, url=ref.url)
        if rows and len(rows) != len(probe(session, [ref.key])[ref.key]):
            return None  # some current version has no rows (stored before them): read all from content
    if not rows:
        return None
    wanted = version if version is not None else ref.version
    if wanted is not None:
        rows = [r for r in rows if r[2] == wanted]
        if not rows:
            raise NotStored(canonical.Ref("CodeSystem", url=ref.url, version=wanted, res_id=ref.res_id))
    if len(rows) > 1:
        versions = ", ".join(sorted(str(r[2]) for r in rows))
        raise FhirError(
            "invalid-param",
            f"{len(rows)} stored CodeSystems have url {ref.url} (versions: {versions}); name one as "
            f"{ref.url}|<version> or with the version parameter",
        )
    cs_id, cs_version, _, header, count = rows[0]
    return TableContent(session, cs_id, cs_version, fjson.loads(header), count)


def open_codesystem(
    session: Session,
    system: str | None = None,
    version: str | None = None,
    *,
    res_id: str | None = None,
    search: Matcher | None = None,
) -> Content:
    """The content of the CodeSystem with url ``system`` (``url|version`` or ``version`` picks
    one of several versions), or of the one with id ``res_id``.

    Raises ``NotStored`` if there is none, ``invalid-param`` if several versions are stored and
    none is named.
    """
    if res_id is not None:
        ref = canonical.Ref("CodeSystem", res_id=res_id)
    elif system:
        ref = canonical.parse("CodeSystem", system, version)
    else:
        raise FhirError("invalid-param", "A code system is needed: give its url (system)")
    table = table_content(session, ref, version)
    if table is not None:
        return table
    _, content = _store(session, search).find(ref, {}, _memory, kind="content")
    if res_id is not None and version is not None and content.info.version != version:
        raise NotStored(canonical.Ref("CodeSystem", url=content.info.url, version=version))
    return content


def open_resource(
    session: Session,
    res_type: str,
    reference: str | None = None,
    version: str | None = None,
    *,
    res_id: str | None = None,
    search: Matcher | None = None,
) -> dict[str, Any]:
    """The stored ValueSet or ConceptMap named by canonical ``reference`` (and ``version``) or
    by ``res_id``. The dict is shared with the cache: read it, never change it.

    Raises ``NotStored`` if there is none, ``invalid-param`` if it is ambiguous.
    """
    if res_id is not None:
        ref = canonical.Ref(res_type, res_id=res_id)
    elif reference:
        ref = canonical.parse(res_type, reference, version)
    else:
        raise FhirError("invalid-param", f"A {res_type} is needed: give its url")
    _, resource = _store(session, search).find(ref, {}, _same)
    if res_id is not None and version is not None and resource.get("version") != version:
        raise NotStored(canonical.Ref(res_type, url=resource.get("url"), version=version))
    return resource


__all__ = ["NotStored", "open_codesystem", "open_resource", "table_content"]
