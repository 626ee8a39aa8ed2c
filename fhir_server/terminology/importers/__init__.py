"""Loading external code systems (LOINC, WHO ICD-10 ClaML, plain CSV) as stored CodeSystems.

Why "through the same path": the file becomes one ordinary CodeSystem resource, checked like any
other and written by the repository in one transaction, so it gets its search index, history,
write hooks (the concept rows of ``terminology/table.py``) and profile checks exactly as if it
had been PUT over REST; the terminology operations then answer from it with nothing special.

Each reader streams its file (``csv`` rows, ``iterparse`` with each ``Class`` cleared once
read) into concept dicts; only the CodeSystem being built is held, not a second copy of the
file. The resource is stored under a fixed id per source (``loinc``, ``icd-10``) or the last
segment of ``--url``; importing again replaces it with a new version.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Repository, StoredVersion
from fhir_server.validation import check_resource

#: a reader: (file, options) -> CodeSystem header fields and the concepts, streamed
Reader = Callable[[pathlib.Path, "ImportOptions"], tuple[dict[str, Any], Iterator[dict[str, Any]]]]


@dataclass(frozen=True)
class ImportOptions:
    url: str | None = None
    version: str | None = None
    res_id: str | None = None
    name: str | None = None


def readers() -> dict[str, Reader]:
    from fhir_server.terminology.importers import claml, csvfile, loinc

    return {"loinc": loinc.read, "icd10-claml": claml.read, "csv": csvfile.read}


FORMATS = ("loinc", "icd10-claml", "csv")


def build(fmt: str, path: pathlib.Path, options: ImportOptions) -> dict[str, Any]:
    """The CodeSystem resource for ``path`` read as ``fmt``."""
    reader = readers().get(fmt)
    if reader is None:
        raise FhirError("invalid-param", f"Unknown import format {fmt!r} (known: {', '.join(FORMATS)})")
    header, concepts = reader(path, options)
    listed = list(concepts)  # first: a reader may learn header fields (ClaML's version) on the way
    resource: dict[str, Any] = {"resourceType": "CodeSystem", **header}
    if options.url:
        resource["url"] = options.url
    if options.version:
        resource["version"] = options.version
    if options.name:
        resource["name"] = options.name
    if not resource.get("url"):
        raise FhirError("invalid-param", f"{path.name}: a {fmt} import needs --url (the code system's canonical url)")
    resource["id"] = options.res_id or header.get("id") or str(resource["url"]).rstrip("/").rsplit("/", 1)[-1]
    resource.setdefault("status", "active")
    resource.setdefault("content", "complete")
    if not listed:
        raise FhirError("invalid", f"{path.name}: no concepts found (is it a {fmt} file?)")
    resource["count"] = len(listed)
    resource["concept"] = listed
    return resource


def store(repo: Repository, resource: dict[str, Any]) -> StoredVersion:
    """Create or replace the CodeSystem under its id, in one transaction, after the same checks
    as a REST write. A different CodeSystem (another url) under the same id is refused."""
    check_resource(resource, "CodeSystem")
    with repo.session(write=True) as session:
        current = session.read_current("CodeSystem", resource["id"])
        if current is None:
            return session.create(resource, res_id=resource["id"], method="PUT")
        if not current.deleted:
            stored_url = current.resource().get("url")
            if stored_url != resource["url"]:
                raise FhirError(
                    "conflict",
                    f"CodeSystem/{resource['id']} already holds {stored_url}, not {resource['url']}; "
                    "choose another --id",
                )
        return session.update(current, resource)


def import_file(repo: Repository, fmt: str, path: pathlib.Path, options: ImportOptions) -> StoredVersion:
    return store(repo, build(fmt, path, options))
