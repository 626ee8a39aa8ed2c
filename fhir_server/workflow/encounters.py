"""The virtual Encounter of a booked consultation session, and where to meet.

Why written by the server: booking a teleconsultation (R3: "experts and time are booked —
Appointment, virtual Encounter with the meeting address") is the moment the session exists, and
every entrance that books — ``$book``, a POST or PUT of the Appointment, a transaction entry — ends
in the Appointment write hooks. When an Appointment ``basedOn`` a teleconsultation request turns
``booked``, the Encounter (class VR, virtual; ``planned``; ``appointment`` and ``basedOn`` set;
its period the appointment's) is written in the same transaction; when the appointment is
cancelled or marked no-show, so is the Encounter. It is the booking institution's record, as the
Appointment is.

Where to meet: R4's Encounter has no virtual-service element (R5 adds one), so the meeting room is
a ``Location`` (mode ``instance``, physical type ``vi`` virtual) whose ``telecom`` url is the
address, contained in the Encounter and named by its ``location`` — contained, because a
stand-alone Location is a directory entry every institution reads, and the room is only for the
consultation's parties, who see the Encounter as they see the patient's other consultation data.
The address comes from the platform's conferencing service: ``--meeting-url-template``, its
``{room}`` replaced by an unguessable room name. Without one the Encounter is written without a
room: the server does not invent an address no service answers at.
"""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import select

from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.storage.schema import idx_reference, resources
from fhir_server.workflow import machine as m

V3_ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
PHYSICAL_TYPE = "http://terminology.hl7.org/CodeSystem/location-physical-type"
#: appointment status -> the Encounter status that follows it
_FOLLOWS = {"booked": "planned", "arrived": "arrived", "fulfilled": "finished", "cancelled": "cancelled",
            "noshow": "cancelled", "entered-in-error": "entered-in-error"}  # fmt: skip


class VirtualEncounters:
    def __init__(self, meeting_url_template: str | None = None) -> None:
        self.meeting_url_template = meeting_url_template

    def install(self, repo: Repository) -> None:
        repo.after_write.setdefault("Appointment", []).append(self.after_write)

    def after_write(self, session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
        if written.deleted or written.content is None:
            return
        appointment = written.resource()
        status = appointment.get("status")
        if status not in _FOLLOWS:
            return
        existing = self._existing(session, written.res_id)
        if existing is None:
            if status == "booked" and self._teleconsultation(session, appointment):
                self._create(session, written, appointment)
            return
        encounter = existing.resource()
        if encounter.get("status") != _FOLLOWS[status]:
            encounter["status"] = _FOLLOWS[status]
            with session.unrestricted():  # the server keeps its record in step with the booking
                session.update(existing, encounter)

    def _existing(self, session: Session, appointment_id: str) -> StoredVersion | None:
        ref = idx_reference
        rid = session.conn.execute(
            select(ref.c.rid)
            .join(resources, resources.c.rid == ref.c.rid)
            .where(
                ref.c.target_type == "Appointment",
                ref.c.target_id == appointment_id,
                resources.c.res_type == "Encounter",
                resources.c.deleted.is_(False),
            )
            .limit(1)
        ).scalar()
        if rid is None:
            return None
        with session.unrestricted():
            found = session.read_many([rid])
        return found[0] if found else None

    def _teleconsultation(self, session: Session, appointment: dict[str, Any]) -> bool:
        for based_on in appointment.get("basedOn") or ():
            ref = based_on.get("reference") if isinstance(based_on, dict) else None
            if isinstance(ref, str) and ref.startswith("ServiceRequest/"):
                with session.unrestricted():
                    request = session.read_current("ServiceRequest", ref.split("/")[1])
                if request is not None and not request.deleted and m.kind_of(request.resource()) in (
                    "consultation", "offline", "multicentre",
                ):  # fmt: skip
                    return True
        return False

    def _create(self, session: Session, written: StoredVersion, appointment: dict[str, Any]) -> None:
        patient = next(
            (
                p["actor"]
                for p in appointment.get("participant") or ()
                if isinstance(p, dict) and str((p.get("actor") or {}).get("reference", "")).startswith("Patient/")
            ),
            None,
        )
        encounter: dict[str, Any] = {
            "resourceType": "Encounter",
            "status": "planned",
            "class": {"system": V3_ACT_CODE, "code": "VR", "display": "virtual"},
            "appointment": [{"reference": f"Appointment/{written.res_id}"}],
            "basedOn": [b for b in appointment.get("basedOn") or () if isinstance(b, dict)],
            "participant": [
                {"individual": p["actor"]}
                for p in appointment.get("participant") or ()
                if isinstance(p, dict)
                and str((p.get("actor") or {}).get("reference", "")).startswith(("Practitioner/", "PractitionerRole/"))
            ],
        }
        if patient is not None:
            encounter["subject"] = patient
        if appointment.get("start"):
            encounter["period"] = {
                "start": appointment["start"],
                **({"end": appointment["end"]} if appointment.get("end") else {}),
            }
        if self.meeting_url_template:
            encounter["contained"] = [self._room(appointment)]
            encounter["location"] = [{"location": {"reference": "#room"}, "status": "planned"}]
        encounter = {k: v for k, v in encounter.items() if v not in ([], None)}
        session.create(encounter)  # the booking institution's, as the Appointment is

    def _room(self, appointment: dict[str, Any]) -> dict[str, Any]:
        url = str(self.meeting_url_template).replace("{room}", secrets.token_urlsafe(16))
        return {
            "resourceType": "Location",
            "id": "room",
            "status": "active",
            "mode": "instance",
            "name": f"远程会诊室 Teleconsultation room {appointment.get('start', '')}".strip(),
            "physicalType": {"coding": [{"system": PHYSICAL_TYPE, "code": "vi", "display": "Virtual"}]},
            "telecom": [{"system": "url", "value": url}],
        }
