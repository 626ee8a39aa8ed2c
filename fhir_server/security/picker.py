"""SMART standalone launch with ``launch/patient``: the patient the app's user chooses at sign-in.

http://hl7.org/fhir/smart-app-launch/app-launch.html (standalone launch) and
scopes-and-launch-context.html (``launch/patient``: "need patient context at launch time"). When
an app asks ``/auth/authorize`` for ``launch/patient`` without an EHR's ``launch``, the server
asks the signed-in person which patient (the picker page, rest/auth_http.py); the code, its
access token and refresh tokens then carry ``patient`` exactly as an EHR launch's context does
(security/launch.py, security/authcode.py), and ``patient/`` scopes are limited to that patient
(security/tenancy.py). A resident (an account whose ``fhirUser`` is a Patient) is never asked:
their own patient is the context.

Why the picker lists patients through the search engine with the access of a token of that
person (:func:`person_principal`, security/tenancy.py ``access_for``): the list must be exactly
the patients a FHIR search by that person would find, never one more, and stay so as the access
rules change. The choice posted back is checked again the same way (a read of that Patient with
that access), since a form can be forged.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from fhir_server.search.engine import Cursor
from fhir_server.security.scopes import ScopeSet
from fhir_server.security.tokens import Principal

if TYPE_CHECKING:
    from fhir_server.search.engine import SearchEngine
    from fhir_server.security.users import User
    from fhir_server.storage.repository import Session

#: the scope that asks for a patient chosen at launch (SMART App Launch 2)
STANDALONE_PATIENT = "launch/patient"
#: patients shown per page of the picker: a person narrows a longer list by name
PAGE_SIZE = 20
#: what a person's picker search may read: the Patients their institution and roles let them see
_PICKER_SCOPES = ScopeSet.parse("user/Patient.rs")


def is_resident(user: User) -> bool:
    """A resident's account: its FHIR user is a Patient, who is the context of every launch."""
    return bool(user.fhir_user and user.fhir_user.startswith("Patient/"))


def needs_patient(granted_scope: str, launch: str | None, user: User) -> bool:
    """Whether ``user`` must choose a patient: the client may have ``launch/patient`` and asked
    for it (``granted_scope``), no EHR ``launch`` names one, and the user is not a resident."""
    return STANDALONE_PATIENT in granted_scope.split() and not launch and not is_resident(user)


def person_principal(user: User, client_id: str) -> Principal:
    """The principal of a ``user/Patient.rs`` token of ``user`` for ``client_id``: what the
    picker searches and checks a choice with, so it sees exactly what that person's FHIR search
    of Patient would see (their institution, roles, grants). Never issued as a token."""
    return Principal(
        client_id=client_id,
        scopes=_PICKER_SCOPES,
        jti="patient-picker",
        expires=int(time.time()) + 60,
        subject=user.username,
        user=user.fhir_user,
        organization=user.organization,
        person=True,
        roles=user.roles,
    )


@dataclass(frozen=True)
class PatientChoice:
    """One row of the picker: enough to tell patients apart, nothing more."""

    id: str
    name: str
    gender: str
    birth_date: str


@dataclass(frozen=True)
class PatientPage:
    patients: list[PatientChoice]
    #: where the next page starts (the last row's ``rid``); None on the last page
    next_after: int | None


def find_patients(session: Session, engine: SearchEngine, name: str, after: int | None) -> PatientPage:
    """A page of the Patients ``session``'s access may see, by ``name`` (the FHIR ``name``
    parameter: any part of a name — text, family, given — starting with it), in the order they
    were stored, after the row ``after``."""
    params = [("name", name)] if name else []
    cursor = Cursor([], after) if after is not None else None
    page = engine.search(session, "Patient", params, PAGE_SIZE, cursor=cursor)
    choices = [summary(v.resource()) for v in page.versions if v.content is not None]
    last = page.versions[-1].rid if page.versions and page.has_next else None
    return PatientPage(choices, last)


def summary(patient: dict[str, Any]) -> PatientChoice:
    """The picker's row of a Patient resource."""
    return PatientChoice(
        id=str(patient.get("id", "")),
        name=display_name(patient.get("name")),
        gender=str(patient.get("gender", "")),
        birth_date=str(patient.get("birthDate", "")),
    )


def display_name(names: Any) -> str:
    """The first usable HumanName as people write it: its ``text``, else family then given
    (Chinese order, no space, when the name is written in Han characters; else given family)."""
    for name in names if isinstance(names, list) else []:
        if not isinstance(name, dict):
            continue
        if isinstance(name.get("text"), str) and name["text"].strip():
            return str(name["text"]).strip()
        family = name.get("family") if isinstance(name.get("family"), str) else ""
        given = [g for g in name.get("given") or [] if isinstance(g, str)]
        if family or given:
            if _han(family + "".join(given)):
                return family + "".join(given)
            return " ".join([*given, family]).strip()
    return ""


def _han(text: str) -> bool:
    return any("\u3400" <= ch <= "\u9fff" for ch in text)
