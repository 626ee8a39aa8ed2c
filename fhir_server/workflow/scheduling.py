"""Experts' time: which Slots can be had, and an Appointment taking them (R10; IHE ITI Scheduling).

Why these rules:

* **Availability is the Slot.** An institution publishes its experts' ``Schedule`` and ``Slot``
  resources (the directory: everyone signed in reads them). A slot can be had when it is
  ``free``, or ``busy-tentative`` under a hold that has expired (``slot-hold`` extension, the
  instant the hold ends): an abandoned hold frees itself, nobody has to clean up.
* **Every entrance takes slots the same way.** An Appointment written by ``$book``, a POST, a PUT,
  a PATCH or a transaction entry reaches ``Session.create``/``update``; the hook here takes the
  slots it newly occupies (``busy``) and frees those it leaves (cancelled, no-show, entered in
  error, or no longer referenced), in the same transaction. A slot another institution holds,
  or that is already booked, is a **409**.
* **No double booking.** Taking a slot is an update of the Slot under the repository's optimistic
  lock (``UPDATE … WHERE version = n``): of two requests that read the same free slot, one
  changes it and the other's write matches no row and is answered 409 — SQLite's writers take
  turns, PostgreSQL re-checks the row once the first commits.
* **Whose appointment.** The Appointment belongs to the institution that books it (its patient,
  its request); the slot stays its owner's, changed by the server on the booker's behalf. To take
  another institution's slot the Appointment is ``basedOn`` a ServiceRequest to that institution:
  booking an expert is part of asking for a consultation, and the request's grant is what lets the
  expert's institution see the patient (security/grants.py). The slots' institutions are
  co-owners of the Appointment that may change its ``status``, ``cancelationReason`` and
  ``comment`` only (the expert cancels or marks it fulfilled; accepting is an AppointmentResponse).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.security.grants import institutions
from fhir_server.security.tenancy import organization_id
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow.shared_records import as_stored, keep_owners_part

HOLD_URL = "http://fhir.telefhir.cn/StructureDefinition/slot-hold"
HOLDER_URL = "http://fhir.telefhir.cn/StructureDefinition/slot-holder"
#: how long ``$hold`` keeps a slot for its holder
HOLD_SECONDS = 600
#: Appointment statuses that occupy their slots
OCCUPYING = frozenset({"pending", "booked", "arrived", "checked-in", "fulfilled"})
#: what the slots' institutions may change in the booker's Appointment
SLOT_OWNER_WRITABLE = frozenset({"status", "cancelationReason", "comment"})


def install(repo: Repository) -> None:
    repo.write_hooks["Appointment"] = before_write
    repo.co_owners["Appointment"] = co_owners


def available(slot: dict[str, Any], at_us: int | None = None) -> bool:
    """Free, or tentatively busy under a hold that has expired."""
    status = slot.get("status")
    if status == "free":
        return True
    if status != "busy-tentative":
        return False
    until = hold_until(slot)
    return until is not None and until <= (now_us() if at_us is None else at_us)


def hold_until(slot: dict[str, Any]) -> int | None:
    for ext in slot.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == HOLD_URL and isinstance(ext.get("valueInstant"), str):
            try:
                return parse_range(ext["valueInstant"])[0]
            except ValueError:
                return None
    return None


def holder(slot: dict[str, Any]) -> str | None:
    """The institution holding a slot (its Organization id)."""
    for ext in slot.get("extension", []):
        if isinstance(ext, dict) and ext.get("url") == HOLDER_URL:
            return organization_id((ext.get("valueReference") or {}).get("reference"))
    return None


def occupied_slots(appointment: dict[str, Any] | None) -> list[str]:
    """The Slot ids an Appointment occupies (none unless its status is one that does)."""
    if not appointment or appointment.get("status") not in OCCUPYING:
        return []
    found = []
    for item in appointment.get("slot") or ():
        ref = item.get("reference") if isinstance(item, dict) else None
        if isinstance(ref, str) and ref.split("/_history")[0].rsplit("/", 2)[-2:-1] == ["Slot"]:
            found.append(ref.split("/_history")[0].rsplit("/", 1)[1])
    return found


# -- changing a slot ------------------------------------------------------------------------------
def hold(session: Session, slot_id: str, by: str | None) -> StoredVersion:
    """Hold a slot for ``by`` (an institution; None: the platform) for :data:`HOLD_SECONDS`."""
    current, slot = _read_slot(session, slot_id)
    if not available(slot) and not _held_by(slot, by):
        raise FhirError("conflict", f"Slot/{slot_id} ({slot.get('start')}) is no longer available: find another")
    slot["status"] = "busy-tentative"
    extensions = _without_hold(slot)
    extensions.append({"url": HOLD_URL, "valueInstant": instant(now_us() + HOLD_SECONDS * 1_000_000)})
    if by is not None:
        extensions.append({"url": HOLDER_URL, "valueReference": {"reference": f"Organization/{by}"}})
    slot["extension"] = extensions
    return _write_slot(session, current, slot)


def _take(session: Session, slot_id: str, by: str | None) -> None:
    current, slot = _read_slot(session, slot_id)
    if not available(slot) and not _held_by(slot, by):
        state = "held by another institution" if slot.get("status") == "busy-tentative" else slot.get("status")
        raise FhirError(
            "conflict", f"Slot/{slot_id} ({slot.get('start')}) is {state}: find another", "Appointment.slot"
        )
    slot["status"] = "busy"
    _set_extensions(slot, _without_hold(slot))
    _write_slot(session, current, slot)


def _release(session: Session, slot_id: str) -> None:
    with session.unrestricted():
        current = session.read_current("Slot", slot_id)
    if current is None or current.deleted:
        return  # the institution withdrew the slot meanwhile
    slot = current.resource()
    if slot.get("status") == "free":
        return
    slot["status"] = "free"
    _set_extensions(slot, _without_hold(slot))
    _write_slot(session, current, slot)


def _read_slot(session: Session, slot_id: str) -> tuple[StoredVersion, dict[str, Any]]:
    with session.unrestricted():
        current = session.read_current("Slot", slot_id)
    if current is None or current.deleted:
        raise FhirError("not-found", f"Slot/{slot_id} is not known")
    return current, current.resource()


def _write_slot(session: Session, current: StoredVersion, slot: dict[str, Any]) -> StoredVersion:
    """The server's change of a slot on the booker's behalf (the slot stays its owner's)."""
    with session.unrestricted():
        try:
            return session.update(current, slot)
        except FhirError as err:
            if err.kind == "conflict":  # another booking changed the slot after we read it
                raise FhirError(
                    "conflict", f"Slot/{current.res_id} was just taken by another request: find another"
                ) from None
            raise


def _held_by(slot: dict[str, Any], by: str | None) -> bool:
    return slot.get("status") == "busy-tentative" and (by is None or holder(slot) == by)


def _without_hold(slot: dict[str, Any]) -> list[dict[str, Any]]:
    ours = (HOLD_URL, HOLDER_URL)
    return [e for e in slot.get("extension", []) if not (isinstance(e, dict) and e.get("url") in ours)]


def _set_extensions(slot: dict[str, Any], extensions: list[dict[str, Any]]) -> None:
    if extensions:
        slot["extension"] = extensions
    else:
        slot.pop("extension", None)


# -- the Appointment hook ---------------------------------------------------------------------
def co_owners(session: Session, current: StoredVersion) -> set[str]:
    """The institutions whose slots an Appointment occupies."""
    found = set()
    with session.unrestricted():
        for slot_id in occupied_slots(as_stored(current)):
            slot = session.read_current("Slot", slot_id)
            if slot is not None and slot.tenant is not None:
                found.add(slot.tenant)
    return found


def before_write(session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None) -> None:
    stored = as_stored(current) if current is not None and not current.deleted else None
    access = session.access
    writer = None if access is None or access.platform else access.organization
    if stored is not None and writer is not None and current is not None and writer != current.tenant:
        keep_owners_part(resource or {}, stored, SLOT_OWNER_WRITABLE)  # a slot's institution: progress only
    before = occupied_slots(stored)
    after = occupied_slots(resource)
    for slot_id in before:
        if slot_id not in after:
            _release(session, slot_id)
    new = [s for s in after if s not in before]
    if not new:
        return
    owner = current.tenant if current is not None and current.tenant is not None else writer
    for slot_id in new:
        slot_current, _ = _read_slot(session, slot_id)
        if owner is not None and slot_current.tenant not in (None, owner):
            _require_request_to(session, resource or {}, slot_current.tenant, res_id)
        _take(session, slot_id, writer)


def _require_request_to(session: Session, appointment: dict[str, Any], institution: str, res_id: str) -> None:
    """Another institution's slot is booked for a consultation asked of it: the Appointment is
    ``basedOn`` an active ServiceRequest whose performer is that institution."""
    for item in appointment.get("basedOn") or ():
        ref = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(ref, str) or not ref.startswith("ServiceRequest/"):
            continue
        request = session.read_current("ServiceRequest", ref.split("/_history")[0].split("/", 1)[1])
        if request is None or request.deleted:
            continue
        content = request.resource()
        if content.get("status") == "active" and institution in institutions(session, content.get("performer") or []):
            return
    raise FhirError(
        "forbidden",
        f"Appointment/{res_id}: its slot is Organization/{institution}'s; booking it needs basedOn an active "
        f"ServiceRequest to Organization/{institution} (the consultation it is for)",
        "Appointment.basedOn",
    )
