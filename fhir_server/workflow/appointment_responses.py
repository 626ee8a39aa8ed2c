"""An expert's answer to a booked consultation: accept, decline, or propose another time (R3).

Why an AppointmentResponse: issue 6 has the invited institution accept, reject (with a reason) or
propose a time; FHIR's reply of a participant to an appointment is the AppointmentResponse —
``participantStatus`` accepted, declined or tentative, and ``start``/``end`` that may be "a new
time to request a re-negotiation" of the appointment's. The response is the responder's record;
the server copies its status onto that participant of the Appointment in the same transaction,
so the booker sees the answer on the appointment itself (and its subscriptions announce it). A
proposed time is the booker's to take — it books that time (``$find``/``$book``, or a changed
Appointment); the server does not move a booking on its own.

Checked on every write (422 naming what is wrong): the Appointment exists and the writer can see
it, the ``actor`` is one of its participants, ``start`` comes before ``end``, a proposal
(``tentative`` with another time) gives both, and a decline gives its reason (``comment``).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.util.fhirdate import parse_range

#: AppointmentResponse.participantStatus copied to Appointment.participant.status
STATUSES = frozenset({"accepted", "declined", "tentative", "needs-action"})


def install(repo: Repository) -> None:
    repo.write_hooks["AppointmentResponse"] = before_write
    repo.after_write.setdefault("AppointmentResponse", []).append(after_write)


def before_write(session: Session, res_id: str, response: dict[str, Any] | None, current: StoredVersion | None) -> None:
    if response is None:
        return
    appointment = _appointment(session, response, res_id)  # read with the writer's access
    actor = (response.get("actor") or {}).get("reference")
    if actor not in _actors(appointment):
        raise _invalid(res_id, f"its actor {actor!r} is not a participant of the appointment", "actor")
    start, end = _instant(response.get("start"), res_id), _instant(response.get("end"), res_id)
    if start is not None and end is not None and start >= end:
        raise _invalid(res_id, "start must come before end", "start")
    status = response.get("participantStatus")
    proposes = status == "tentative" and (response.get("start"), response.get("end")) != (
        appointment.get("start"),
        appointment.get("end"),
    )
    if proposes and (start is None or end is None):
        raise _invalid(res_id, "a proposed time gives both start and end", "start")
    if status == "declined" and not response.get("comment"):
        raise _invalid(res_id, "a decline gives its reason (comment)", "comment")


def after_write(session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
    """The participant's status on the Appointment follows its latest response."""
    if written.deleted:
        return
    response = written.resource()
    status = response.get("participantStatus")
    if status not in STATUSES:
        return
    with session.unrestricted():  # the server's own change of the booker's record
        current = session.read_current("Appointment", _appointment_id(response["appointment"]["reference"]))
        if current is None or current.deleted:
            return
        appointment = current.resource()
        actor = response["actor"]["reference"]
        changed = False
        for participant in appointment.get("participant") or ():
            if (participant.get("actor") or {}).get("reference") == actor and participant.get("status") != status:
                participant["status"] = status
                changed = True
        if changed:
            session.update(current, appointment)


def _appointment(session: Session, response: dict[str, Any], res_id: str) -> dict[str, Any]:
    ref = (response.get("appointment") or {}).get("reference")
    if not isinstance(ref, str) or not ref.startswith("Appointment/"):
        raise _invalid(res_id, "appointment must reference the Appointment it answers", "appointment")
    found = session.read_current("Appointment", _appointment_id(ref))
    if found is None or found.deleted:
        raise _invalid(res_id, f"{ref} does not exist", "appointment")
    return found.resource()


def _appointment_id(reference: str) -> str:
    """``Appointment/5`` or ``Appointment/5/_history/2`` → ``5``."""
    return reference.split("/_history")[0].split("/", 1)[1]


def _actors(appointment: dict[str, Any]) -> list[str]:
    return [str((p.get("actor") or {}).get("reference")) for p in appointment.get("participant") or ()]


def _instant(value: Any, res_id: str) -> int | None:
    if not isinstance(value, str):
        return None
    try:
        return parse_range(value)[0]
    except ValueError:
        raise _invalid(res_id, f"{value!r} is not an instant", "start") from None


def _invalid(res_id: str, message: str, where: str) -> FhirError:
    return FhirError("processing", f"AppointmentResponse/{res_id}: {message}", f"AppointmentResponse.{where}")
