"""The conformance resources that ship with the server (``profiles/``, ``terminology/``), stored.

Why they are stored rather than served from files: everything that reads them — search
(``CodeSystem?url=``), the terminology modifiers ``:in``/``:below``, the terminology operations,
profile validation — already reads stored resources, with caches that notice a new version. A
user's own CodeSystem or StructureDefinition goes in by the same path, and ours can be read,
searched and versioned like theirs.

Each file is stored under its own ``id`` (update-or-create), and only when its content differs
from the stored current version, so start-up writes nothing on an unchanged database. Examples
(``profiles/examples/``) are test data, not installed.
"""

from __future__ import annotations

import pathlib
from collections.abc import Iterator
from typing import Any

import orjson

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Repository
from fhir_server.validation import check_resource

ROOT = pathlib.Path(__file__).resolve().parent.parent
#: folders whose JSON files are installed (``profiles/examples`` is skipped)
PACKAGED_DIRS = (ROOT / "terminology", ROOT / "profiles")
#: resource types that are conformance or knowledge resources (anything else is not installed)
INSTALLABLE = frozenset(
    {
        "CodeSystem",
        "ValueSet",
        "ConceptMap",
        "NamingSystem",
        "StructureDefinition",
        "SearchParameter",
        "OperationDefinition",
        "Questionnaire",
        "ImplementationGuide",
        "CapabilityStatement",
    }
)


def packaged_files(dirs: tuple[pathlib.Path, ...] = PACKAGED_DIRS) -> Iterator[pathlib.Path]:
    for folder in dirs:
        if folder.is_dir():
            yield from sorted(p for p in folder.rglob("*.json") if "examples" not in p.relative_to(folder).parts)


def packaged_resources(dirs: tuple[pathlib.Path, ...] = PACKAGED_DIRS) -> Iterator[tuple[pathlib.Path, dict[str, Any]]]:
    for path in packaged_files(dirs):
        resource = orjson.loads(path.read_bytes())
        if resource.get("resourceType") in INSTALLABLE:
            yield path, resource


def _same(stored: dict[str, Any], resource: dict[str, Any]) -> bool:
    strip = {"meta"}
    return {k: v for k, v in stored.items() if k not in strip} == {k: v for k, v in resource.items() if k not in strip}


def install(repo: Repository, dirs: tuple[pathlib.Path, ...] = PACKAGED_DIRS) -> list[str]:
    """Store every packaged resource that is missing or changed; returns ``Type/id`` of those written.

    One transaction: a broken file leaves the database as it was (and the error names the file).
    """
    written: list[str] = []
    with repo.session(write=True) as session:
        for path, resource in packaged_resources(dirs):
            res_type, res_id = resource["resourceType"], resource.get("id")
            if not res_id:
                raise FhirError("invalid", f"{path}: a packaged resource needs an id")
            try:
                check_resource(resource, res_type)
            except FhirError as err:
                raise FhirError("invalid", f"{path}: {err.diagnostics}", issues=err.issues) from None
            current = session.read_current(res_type, res_id)
            if current is not None and not current.deleted and _same(current.resource(), resource):
                continue
            if current is None:
                session.create(resource, res_id=res_id, method="PUT")
            else:
                session.update(current, resource)
            written.append(f"{res_type}/{res_id}")
    return written
