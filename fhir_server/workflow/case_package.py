"""The case data package of a consultation (001 §7.2 g, §7.3 a), and its archive (§7.4 c).

Why assembled per recipient rather than stored: the package is everything the consultation has
gathered about the patient — the request, the patient, its supporting information, the invitations
and data requests, the data the participants provided, the experts' opinions — and each institution
may see a different part of it, de-identified for it (security/tenancy.py, security/egress.py).
Reading every piece through the caller's own session gives each recipient exactly its share, with
its own stable pseudonyms, and nothing that it could not read one by one: ``$package`` never widens
access.

The archive is the leader's package (plus the published report's index entries) kept as one
``collection`` Bundle tagged consultation-archive, for at least three years (workflow/retention.py):
the consultation's record as it was when closed, whatever later happens to its parts.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from fhir_server.security.categories import ARCHIVE_TAG
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.workflow import data_requests
from fhir_server.workflow.multicentre import NUMBER_SYSTEM, WORKFLOW, consultation_number

ARCHIVE = ARCHIVE_TAG[1]
OPINION_PROFILE = "http://fhir.telefhir.cn/StructureDefinition/consultation-opinion"

#: finds current resources: (resource type, search parameters) → versions the session may see
Finder = Callable[[str, list[tuple[str, str]]], list[StoredVersion]]


def package(session: Session, request: StoredVersion, find: Finder, base_url: str) -> dict[str, Any]:
    """The case data package of ``request`` as the session's institution may see it."""
    content = request.resource()
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "collection", "timestamp": instant(now_us())}
    number = consultation_number(content)
    if number:
        bundle["identifier"] = {"system": NUMBER_SYSTEM, "value": number}
    bundle["entry"] = [
        {"fullUrl": f"{base_url}/{v.res_type}/{v.res_id}", "resource": v.resource()}
        for v in _parts(session, request, content, find)
    ]
    return bundle


def archive(session: Session, request: StoredVersion, find: Finder, base_url: str) -> dict[str, Any]:
    """The archive Bundle of a closed consultation: its package and its published reports."""
    bundle = package(session, request, find, base_url)
    bundle.setdefault("meta", {})["tag"] = [{"system": WORKFLOW, "code": ARCHIVE, "display": "会诊归档 archive"}]
    reports = find("DocumentReference", [("related", f"ServiceRequest/{request.res_id}")])
    bundle["entry"] += [
        {"fullUrl": f"{base_url}/DocumentReference/{v.res_id}", "resource": v.resource()} for v in reports
    ]
    return bundle


def _parts(session: Session, request: StoredVersion, content: dict[str, Any], find: Finder) -> Iterator[StoredVersion]:
    seen: set[str] = set()

    def visible(ref: Any) -> StoredVersion | None:
        if not isinstance(ref, str) or ref.count("/") != 1 or ref in seen:
            return None
        seen.add(ref)
        res_type, res_id = ref.split("/")
        version = session.read_current(res_type, res_id)
        return version if version is not None and not version.deleted else None

    seen.add(f"ServiceRequest/{request.res_id}")
    yield request
    for ref in [(content.get("subject") or {}).get("reference")] + [
        s.get("reference") for s in content.get("supportingInfo") or () if isinstance(s, dict)
    ]:
        found = visible(ref)
        if found is not None:
            yield found
    based_on = f"ServiceRequest/{request.res_id}"
    tasks = find("Task", [("based-on", based_on)])
    for task in tasks:
        seen.add(f"Task/{task.res_id}")
        yield task
    for task in tasks:
        if data_requests.task_type(task.resource()):
            for ref in data_requests.provided(task.resource()):
                found = visible(ref)
                if found is not None:
                    yield found
    for opinion in find("Observation", [("based-on", based_on), ("_profile", OPINION_PROFILE)]):
        if f"Observation/{opinion.res_id}" not in seen:
            seen.add(f"Observation/{opinion.res_id}")
            yield opinion
