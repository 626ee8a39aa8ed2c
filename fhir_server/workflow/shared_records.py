"""Records two institutions change: the owner's content, and the part a co-owner may change.

A Task is the requester's and its performer moves it on; an Appointment is the booker's and the
expert's institution cancels it or marks it fulfilled (security/tenancy.py ``co_owners``). What a
co-owner sends is merged into the stored record: the fields it may change are taken from its
body, every other field stays as the owner wrote it, whatever the body says.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from fhir_server.formats import json as fjson
from fhir_server.storage.repository import StoredVersion


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
