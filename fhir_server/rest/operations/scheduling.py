"""``Appointment/$find``, ``$hold`` and ``$book``: IHE ITI Scheduling [ITI-115], [ITI-116], [ITI-117].

https://profiles.ihe.net/ITI/Scheduling/. The rules about slots are workflow/scheduling.py's; this
module reads the operations' inputs and answers with the profile's Bundles.

* ``$find`` answers a ``searchset`` Bundle of **proposed** Appointments, one per slot that can be
  had in the window, earliest first, at most ``_count``. Proposals are not stored: each one's id
  names its slot (``proposed-<slot id>``), and ``$hold``/``$book`` take that reference. With
  ``patient-reference``, slots overlapping the patient's own appointments are left out.
* ``$hold`` keeps the slot for the caller's institution for ten minutes (the Slot turns
  ``busy-tentative`` with the instant the hold ends); the answer is the Appointment ``pending``.
* ``$book`` stores the Appointment ``booked`` — the proposal, completed by ``appointment-resource``
  (participants, ``basedOn``, reason, comment) and ``patient-reference`` — and takes the slot in the
  same transaction. A slot somebody else had first is a 409 with an OperationOutcome saying so.

Inputs the IHE definitions have and this server does not implement (``location-string``,
``patient-resource``, ``reason``, ``referral-identifier``, ``timing``, ``insurance-reference``) are
refused with 400 rather than ignored (rest/operations/inputs.py).
"""

from __future__ import annotations

from typing import Any

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.bundles import bundle
from fhir_server.rest.interactions.search import entry
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import DATETIME, INTEGER, REFERENCE, STRING, Inputs
from fhir_server.search.engine import Cursor
from fhir_server.storage.repository import Session, StoredVersion
from fhir_server.storage.schema import resources
from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow import scheduling as sched

PROPOSED = "proposed-"
FIND_SPEC = {
    "start": (DATETIME, False),
    "end": (DATETIME, False),
    "specialty": (STRING, True),
    "visit-type": (STRING, True),
    "practitioner": (REFERENCE, True),
    "organization": (REFERENCE, True),
    "location-reference": (REFERENCE, True),
    "patient-reference": (REFERENCE, True),
    "_count": (INTEGER, False),
}
FIND_UNSUPPORTED = frozenset(
    {"location-string", "patient-resource", "reason", "referral-identifier", "timing", "insurance-reference"}
)
HOLD_SPEC = {"appointment-reference": (REFERENCE, False)}
BOOK_SPEC = {
    "appointment-reference": (REFERENCE, False),
    "appointment-resource": ("resource:Appointment", False),
    "patient-reference": (REFERENCE, True),
}
#: what ``appointment-resource`` may add to the proposal it books
_BOOKER_FIELDS = (
    "identifier", "cancelationReason", "serviceCategory", "serviceType", "specialty", "appointmentType",
    "reasonCode", "reasonReference", "priority", "description", "supportingInformation", "comment",
    "patientInstruction", "basedOn", "requestedPeriod", "extension",
)  # fmt: skip
#: how many pages of candidate slots ``$find`` reads before answering with what it found
_MAX_PAGES = 10
#: how long before the window an appointment that overlaps it may start
_LONGEST_APPOINTMENT_US = 24 * 3600 * 1_000_000


def find(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "find", FIND_SPEC, FIND_UNSUPPORTED)
    start, end = _window(inputs)
    asked = inputs.get("_count")
    count = min(ctx.settings.default_count if asked is None else max(asked, 1), ctx.settings.max_count)
    params = [("status", "free,busy-tentative"), ("start", f"ge{instant(start)}"), ("start", f"lt{instant(end)}")]
    params.append(("_sort", "start"))
    for name, search in (("specialty", "specialty"), ("visit-type", "service-type")):
        if inputs.has(name):
            params.append((search, ",".join(inputs.all(name))))
    for name in ("practitioner", "location-reference"):  # each kind of actor is an AND, its values an OR
        if inputs.has(name):
            params.append(("schedule.actor", ",".join(_reference(r, name) for r in inputs.all(name))))
    where = []
    if inputs.has("organization"):
        orgs = [_reference(r, "organization").split("/")[-1] for r in inputs.all("organization")]
        where.append(resources.c.tenant.in_(orgs))
    proposals: list[dict[str, Any]] = []
    with ctx.session() as session:
        busy = _patients_busy(session, ctx, inputs, start, end)
        schedules: dict[str, dict[str, Any] | None] = {}
        cursor = None
        for _ in range(_MAX_PAGES):
            size = min(count * 2, ctx.settings.max_count)
            page = ctx.search.search(session, "Slot", params, size, cursor, where=where)
            for slot in page.versions:
                content = slot.resource()
                if sched.available(content) and not _overlaps(content, busy):
                    proposals.append(proposal(session, slot.res_id, content, schedules))
                    if len(proposals) == count:
                        break
            if len(proposals) == count or not page.has_next or not page.versions:
                break
            cursor = Cursor(page.keys[-1], page.versions[-1].rid)
    entries = [_entry(ctx, appointment) for appointment in proposals]
    return FhirResponse(200, resource=bundle("searchset", entries, [], total=len(entries)))


def hold(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "hold", HOLD_SPEC)
    slot_id = _proposed_slot(_required(inputs, "appointment-reference", "hold"), "hold")
    with ctx.session(write=True) as session:
        held = sched.hold(session, slot_id, _institution(session))
        appointment = proposal(session, slot_id, held.resource(), {})
    appointment["status"] = "pending"
    return FhirResponse(200, resource=bundle("searchset", [_entry(ctx, appointment)], [], total=1))


def book(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "book", BOOK_SPEC, body_resource="appointment-resource")
    given: dict[str, Any] = inputs.get("appointment-resource") or {}
    inputs.forbid_together("appointment-reference", "appointment-resource")
    if inputs.has("appointment-reference"):
        slot_id = _proposed_slot(inputs.get("appointment-reference"), "book")
    elif given:
        slot_id = _slot_of_resource(given)
    else:
        raise FhirError("invalid-param", "$book needs appointment-reference or appointment-resource")
    with ctx.session(write=True) as session:
        current = session.read_current("Slot", slot_id)
        if current is None or current.deleted:
            raise FhirError("not-found", f"Slot/{slot_id} is not known")
        appointment = proposal(session, slot_id, current.resource(), {})
        appointment.pop("id")
        for key in _BOOKER_FIELDS:
            if key in given:
                appointment[key] = given[key]
        appointment["status"] = "booked"
        appointment["created"] = instant(now_us())[:10]
        appointment["participant"] = _participants(appointment, given, inputs.all("patient-reference"))
        stored = session.create(appointment)
    return FhirResponse(200, resource=bundle("searchset", [entry(ctx, stored, "match", None, None)], [], total=1))


def proposal(
    session: Session, slot_id: str, slot: dict[str, Any], schedules: dict[str, dict[str, Any] | None]
) -> dict[str, Any]:
    """The proposed Appointment for a slot: its time and service, its schedule's actors."""
    appointment: dict[str, Any] = {
        "resourceType": "Appointment",
        "id": PROPOSED + slot_id,
        "meta": {"profile": ["https://profiles.ihe.net/ITI/Scheduling/StructureDefinition/ihe-sched-appt"]},
        "status": "proposed",
    }
    for key in ("serviceCategory", "serviceType", "specialty", "appointmentType"):
        if slot.get(key):
            appointment[key] = slot[key]
    appointment["start"], appointment["end"] = slot["start"], slot["end"]
    appointment["slot"] = [{"reference": f"Slot/{slot_id}"}]
    schedule = _schedule(session, (slot.get("schedule") or {}).get("reference"), schedules)
    appointment["participant"] = [
        {"actor": actor, "required": "required", "status": "needs-action"}
        for actor in (schedule or {}).get("actor", [])
        if isinstance(actor, dict)
    ]
    return appointment


# -- inputs ---------------------------------------------------------------------------------------
def _window(inputs: Inputs) -> tuple[int, int]:
    """The window to search, from now on: IHE's ``start`` and ``end`` (both required)."""
    bounds = []
    for name in ("start", "end"):
        raw = _required(inputs, name, "find")
        try:
            bounds.append(parse_range(raw)[0])
        except ValueError:
            raise FhirError("invalid-param", f"$find: {name} must be a FHIR dateTime, not {raw!r}", name) from None
    start, end = max(bounds[0], now_us()), bounds[1]
    if end <= bounds[0]:
        raise FhirError("invalid-param", "$find: end must be after start", "end")
    return start, end


def _required(inputs: Inputs, name: str, operation: str) -> Any:
    value = inputs.get(name)
    if value is None:
        raise FhirError("invalid-param", f"${operation} needs the parameter {name!r}", name)
    return value


def _reference(value: dict[str, Any], name: str) -> str:
    ref = value.get("reference")
    if not isinstance(ref, str) or "/" not in ref:
        raise FhirError("invalid-param", f"{name} must be a reference Type/id, not {value!r}", name)
    return ref.split("/_history")[0]


def _proposed_slot(value: dict[str, Any], operation: str) -> str:
    """The slot of ``Appointment/proposed-<slot>`` (a proposal of ``$find``)."""
    ref = _reference(value, "appointment-reference")
    kind, _, ident = ref.rpartition("/")
    if kind.rsplit("/", 1)[-1] != "Appointment" or not ident.startswith(PROPOSED) or len(ident) == len(PROPOSED):
        raise FhirError(
            "invalid-param",
            f"${operation} takes an appointment proposed by $find (Appointment/{PROPOSED}…), not {ref!r}; "
            "a stored appointment changes by update",
            "appointment-reference",
        )
    return ident[len(PROPOSED) :]


def _slot_of_resource(given: dict[str, Any]) -> str:
    ident = given.get("id")
    if isinstance(ident, str) and ident.startswith(PROPOSED):
        return ident[len(PROPOSED) :]
    slots = [s.get("reference") for s in given.get("slot") or () if isinstance(s, dict)]
    if len(slots) != 1 or not isinstance(slots[0], str) or "Slot/" not in slots[0]:
        raise FhirError(
            "invalid-param",
            "$book: appointment-resource names one proposal (its id) or one Slot",
            "appointment-resource",
        )
    return slots[0].split("/_history")[0].rsplit("/", 1)[1]


def _participants(
    appointment: dict[str, Any], given: dict[str, Any], patients: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The schedule's actors, the booker's participants and the patients, each actor once."""
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    extra = [{"actor": {"reference": _reference(p, "patient-reference")}} for p in patients]
    for participant in [*appointment["participant"], *(given.get("participant") or []), *extra]:
        ref = ((participant or {}).get("actor") or {}).get("reference")
        if not isinstance(ref, str) or ref in seen:
            continue
        seen.add(ref)
        out.append({"required": "required", **participant, "status": participant.get("status") or "accepted"})
    if not any(str((p.get("actor") or {}).get("reference")).startswith("Patient/") for p in out):
        raise FhirError(
            "invalid-param",
            "$book: a consultation appointment is for a patient: give patient-reference or a Patient participant",
            "patient-reference",
        )
    return out


# -- reading ---------------------------------------------------------------------------------------
def _institution(session: Session) -> str | None:
    access = session.access
    return None if access is None or access.platform else access.organization


def _schedule(session: Session, ref: Any, cache: dict[str, dict[str, Any] | None]) -> dict[str, Any] | None:
    if not isinstance(ref, str) or not ref.startswith("Schedule/"):
        return None
    if ref not in cache:
        version = session.read_current("Schedule", ref.split("/", 1)[1])
        cache[ref] = version.resource() if version is not None and not version.deleted else None
    return cache[ref]


def _patients_busy(
    session: Session, ctx: RequestContext, inputs: Inputs, start: int, end: int
) -> list[tuple[int, int]]:
    """The times the given patients already have an appointment (as the caller may see them)."""
    busy: list[tuple[int, int]] = []
    for value in inputs.all("patient-reference"):
        ref = _reference(value, "patient-reference")
        if not ref.startswith("Patient/"):
            raise FhirError("invalid-param", f"patient-reference must name a Patient, not {ref!r}", "patient-reference")
        patient = session.read_current("Patient", ref.split("/", 1)[1])
        if patient is None or patient.deleted:
            raise FhirError("not-found", f"{ref} is not known")
        params = [("patient", ref), ("status", ",".join(sorted(sched.OCCUPYING)))]
        params += [("date", f"ge{instant(start - _LONGEST_APPOINTMENT_US)}"), ("date", f"lt{instant(end)}")]
        cursor = None
        while True:
            page = ctx.search.search(session, "Appointment", params, ctx.settings.max_count, cursor)
            busy += [_period(v) for v in page.versions]
            if not page.has_next or not page.versions:
                break
            cursor = Cursor(page.keys[-1], page.versions[-1].rid)
    return [(s, e) for s, e in busy if e > start]


def _period(version: StoredVersion) -> tuple[int, int]:
    content = version.resource()
    try:
        return parse_range(content["start"])[0], parse_range(content.get("end") or content["start"])[0]
    except (KeyError, ValueError):
        return 0, 0


def _overlaps(slot: dict[str, Any], busy: list[tuple[int, int]]) -> bool:
    if not busy:
        return False
    start, end = parse_range(slot["start"])[0], parse_range(slot["end"])[0]
    return any(s < end and start < e for s, e in busy)


def _entry(ctx: RequestContext, appointment: dict[str, Any]) -> dict[str, Any]:
    return {
        "fullUrl": ctx.full_url(f"Appointment/{appointment['id']}"),
        "resource": appointment,
        "search": {"mode": "match"},
    }
