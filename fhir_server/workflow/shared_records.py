"""Records two institutions change: the owner's content, and the part a co-owner may change.

A Task is the requester's and its performer moves it on; an Appointment is the booker's and the
expert's institution cancels it or marks it fulfilled (security/tenancy.py ``co_owners``). What a
co-owner sends is merged into the stored record: the fields it may change are taken from its
body, every other field stays as the owner wrote it, whatever the body says.

And who acted, for the Provenance the server writes of each step (a Task's, a publication's).
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fhir_server.formats import json as fjson
from fhir_server.storage.repository import Session, StoredVersion

PROVENANCE_AGENT = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"


def as_stored(version: StoredVersion | None) -> dict[str, Any]:
    """The resource as stored (not the de-identified view another institution reads)."""
    if version is None or version.stored_content is None:
        return {}
    return dict(fjson.loads(version.stored_content))


def keep_owners_part(resource: dict[str, Any], stored: dict[str, Any], writable: Collection[str]) -> None:
    """Make ``resource`` the stored record with only the ``writable`` fields from ``resource``."""
    merged = {k: v for k, v in stored.items() if k not in writable and k != "meta"}
    merged.update({k: v for k, v in resource.items() if k in writable})
    merged["meta"] = stored.get("meta", {})
    resource.clear()
    resource.update(merged)


def acting(session: Session) -> dict[str, Any]:
    """Who acts, as a Reference: the signed-in person, else the institution, else the server."""
    access = session.access
    if access is not None and access.user:
        return {"reference": access.user}
    if access is not None and access.organization:
        return {"reference": f"Organization/{access.organization}"}
    return {"reference": "Device/telefhir"}


def provenance_agent(session: Session, role: str) -> dict[str, Any]:
    """The Provenance agent of the request's step: who, for which institution, in what role
    (provenance-participant-type: performer, author …)."""
    agent: dict[str, Any] = {
        "type": {"coding": [{"system": PROVENANCE_AGENT, "code": role}]},
        "who": acting(session),
    }
    access = session.access
    if access is not None and access.organization:
        agent["onBehalfOf"] = {"reference": f"Organization/{access.organization}"}
    return agent
