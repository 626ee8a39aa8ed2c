"""Grants: when another institution may see an institution's data about a patient, and which.

Why grants are derived, not written by clients: the standard lets data cross institutions only
through a consultation, a referral or a share, and only with the patient's consent (001 §8.1.2,
§8.3.2). Those are FHIR resources any EHR writes — a ``ServiceRequest`` to another institution,
a ``Consent`` naming it — so ``access_grants`` is rebuilt from them, for one patient at a time,
in the same transaction as the write that changes them (before it commits, once per patient).
The SQL filter (security/tenancy.py) reads the table; nothing else does.

From a ServiceRequest owned by institution A about patient P, whose performers (an Organization,
or a PractitionerRole's organization) include institutions B…:

* while it is ``active`` or ``on-hold``, B sees A's data about P in the categories it shares (the
  ``shared-data-category`` extension; all six when absent) that P's consents permit disclosing
  to B. Writing such a request when the consents do not permit all of it is refused (403,
  ``consent``): sharing without consent does not happen quietly;
* from when it was authored, for good (the consultation's record, also once it is completed or
  revoked; not when it was ``entered-in-error``), A sees what B records about P
  in the consultation, examination and imaging categories — opinions, reports, results — and the
  performers see each other's consultation data (a multi-centre consultation's opinions) and A's,
  as far as P's consents permit disclosing it to them (the report A publishes, also once the
  request is closed).
* a referral (R9) also returns its results to the patient's community clinic — an institution
  ``Patient.generalPractitioner`` names (an Organization, or a PractitionerRole's) that is neither
  the sender nor the receiver: from when it was authored, for good, it sees what the receiver
  records about P in the results categories (the discharge summary above all), as far as P's
  consents permit the receiver disclosing it to the clinic. Without that consent the clinic sees
  nothing, and the referral is not refused: the sender is the one it reports to.

From a data request (a Task of A, ``owner`` B, workflow/data_requests.py) that B has accepted:
A and the other performers of its consultation see B's data about P in the requested categories,
all of it (it was asked for), as P's consents permit B disclosing it to them; B taking it up when
the consents do not permit all of it to A is refused (403).

From an active Consent stored by institution A about P, each institution B it names as actor of a
permit provision for ``access`` sees A's data about P that the consents permit B to access, in the
provision's period: a share. A permit to ``disclose`` to B is not a share by itself: it is what a
request from A to B needs (the request is the act of sharing).

Sensitive data (minors, infectious disease, restricted; security/labels.py) crosses only where the
consent names its label.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import delete, select

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.security import categories as cat
from fhir_server.security import consent as consents
from fhir_server.security import labels as lab
from fhir_server.security.tenancy import FOREVER_US, organization_id, patient_facts
from fhir_server.storage.bulk import insert_many
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.storage.schema import access_grants, idx_reference, resources
from fhir_server.util.clock import now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow import machine as m

SHARED_CATEGORY_URL = "http://fhir.telefhir.cn/StructureDefinition/shared-data-category"
#: what the requester sees back from the performers, and the performers from each other
RESULTS = cat.CONSULTATION | cat.EXAMINATION | cat.IMAGING
_OPEN = frozenset({"active", "on-hold"})
#: how a data request's content is told from other Tasks' before it is parsed
DATA_REQUEST_CODE = b'"data-request"'
#: the request happened: what the performers recorded stays the requester's to see
_RECORDED = _OPEN | {"completed", "revoked"}


@dataclass(frozen=True)
class Grant:
    grantee: str
    patient: str
    grantor: str
    categories: int
    labels: int
    start_us: int
    end_us: int
    since_us: int
    source: str

    def row(self) -> tuple[Any, ...]:
        return (
            self.grantee, self.patient, self.grantor, self.categories, self.labels,
            self.start_us, self.end_us, self.since_us, self.source,
        )  # fmt: skip


def install(repo: Repository) -> None:
    for res_type in ("ServiceRequest", "Consent"):
        repo.after_write.setdefault(res_type, []).append(_on_source)
    repo.after_write.setdefault("Task", []).append(_on_data_request)
    repo.after_write.setdefault("Patient", []).append(_on_patient)


@dataclass
class _Rebuild:
    """Rebuilds one patient's grants before the transaction commits; ``strict`` are the
    requests written in it, which must be fully permitted by consent."""

    session: Session
    patient: str
    strict: set[str] = field(default_factory=set)

    def __call__(self) -> None:
        rebuild(self.session, self.patient, self.strict)


def _schedule(session: Session, patient: str, strict: str | None = None) -> None:
    task = session.before_commit.get(("grants", patient))
    if task is None:
        task = session.before_commit[("grants", patient)] = _Rebuild(session, patient)
    if strict is not None:
        task.strict.add(strict)  # type: ignore[attr-defined]


def _on_source(session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
    source = f"{written.res_type}/{written.res_id}"
    if written.patient is not None:
        strict = source if written.res_type in ("ServiceRequest", "Task") and not written.deleted else None
        _schedule(session, written.patient, strict)
    if previous is not None and previous.patient not in (None, written.patient):
        _schedule(session, previous.patient)  # type: ignore[arg-type]


def _on_data_request(session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
    """A data request's progress changes who sees the participant's data."""
    if any(v is not None and v.content is not None and DATA_REQUEST_CODE in v.content for v in (written, previous)):
        _on_source(session, written, previous)


def _on_patient(session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
    """A Patient's labels or age changed: its rows inherit the new ones, its grants follow; its
    community clinic changed: its referrals' results go to the new one."""
    if previous is None or written.deleted:
        return
    if (written.labels, written.minor_until_us) != (previous.labels, previous.minor_until_us):
        propagate_labels(session, written.res_id, written.labels, written.minor_until_us)
        _schedule(session, written.res_id)
    elif _general_practitioner(written) != _general_practitioner(previous):
        _schedule(session, written.res_id)


def _general_practitioner(version: StoredVersion) -> Any:
    return fjson.loads(version.content).get("generalPractitioner") if version.content else None


def propagate_labels(session: Session, patient: str, labels: int, minor_until_us: int | None) -> None:
    """Give every row about ``patient`` its own labels plus the Patient's (``labels``)."""
    session.flush()
    r = resources
    rows = session.conn.execute(
        select(r.c.rid, r.c.content).where(
            r.c.patient == patient,
            r.c.res_type != "Patient",
            r.c.deleted.is_(False),
            r.c.rid.in_(_referring(patient)),
        )
    ).all()
    changes = [(lab.of_resource(fjson.loads(row.content)) | labels, minor_until_us, row.rid) for row in rows]
    if changes:
        placeholder = "%s" if session.repo.postgres else "?"
        sql = f"UPDATE resources SET labels = {placeholder}, minor_until_us = {placeholder} WHERE rid = {placeholder}"
        session.conn.exec_driver_sql(sql, changes)


def _referring(patient: str) -> Any:
    ref = idx_reference
    return select(ref.c.rid).where(ref.c.target_id == patient, ref.c.target_type == "Patient")


# -- rebuilding ------------------------------------------------------------------------------
def rebuild(session: Session, patient: str, strict: set[str] = frozenset()) -> list[Grant]:  # type: ignore[assignment]
    """Recompute ``patient``'s grants from their current requests and consents."""
    session.flush()
    r = resources
    rows = session.conn.execute(
        select(r.c.res_type, r.c.res_id, r.c.tenant, r.c.updated_us, r.c.content).where(
            r.c.res_type.in_(("ServiceRequest", "Consent", "Task")),
            r.c.patient == patient,
            r.c.deleted.is_(False),
            r.c.rid.in_(_referring(patient)),
        )
    ).all()
    # of the Tasks, only data requests share anything (their code is in their content)
    documents = [
        (row, fjson.loads(row.content))
        for row in rows
        if row.res_type != "Task" or DATA_REQUEST_CODE in bytes(row.content)
    ]
    found = [doc for row, doc in documents if row.res_type == "Consent"]
    requests = {row.res_id: doc for row, doc in documents if row.res_type == "ServiceRequest"}
    facts = patient_facts(session, patient)
    now = now_us()
    sensitive = 0
    if facts is not None:
        sensitive = facts.labels | (lab.MINOR if facts.minor_until_us and facts.minor_until_us > now else 0)
    grants: list[Grant] = []
    for row, doc in documents:
        source = f"{row.res_type}/{row.res_id}"
        if row.res_type == "ServiceRequest":
            grants += _request_grants(session, row, doc, patient, found, sensitive, source in strict, now)
        elif row.res_type == "Task":
            grants += _data_request_grants(
                session, row, doc, patient, found, requests, sensitive, source in strict, now
            )
        else:
            grants += _consent_grants(row, doc, patient, found, now)
    session.conn.execute(delete(access_grants).where(access_grants.c.patient == patient))
    insert_many(session.conn, [(access_grants, [g.row() for g in grants])])
    return grants


def _request_grants(
    session: Session,
    row: Any,
    request: dict[str, Any],
    patient: str,
    found: list[dict[str, Any]],
    sensitive: int,
    strict: bool,
    now: int,
) -> list[Grant]:
    status = request.get("status")
    grantor = row.tenant
    if status not in _RECORDED or grantor is None:
        return []
    source = f"ServiceRequest/{row.res_id}"
    grantees = sorted(set(performer_organizations(session, request)) - {grantor})
    if not grantees:
        return []
    grants = []
    if status in _OPEN:
        wanted = shared_categories(request)
        for grantee in grantees:
            actor = f"Organization/{grantee}"
            allowed = consents.permitted_categories(found, "disclose", actor, now) & wanted
            labels = consents.permitted_labels(found, "disclose", actor, wanted, now)
            if strict:
                _require(patient, actor, wanted & ~allowed, sensitive & ~labels)
            if allowed:
                grants.append(Grant(grantee, patient, grantor, allowed, labels, 0, FOREVER_US, 0, source))
    since = _authored(request, row.updated_us)
    for grantee in grantees:
        grants.append(Grant(grantor, patient, grantee, RESULTS, lab.ALL, 0, FOREVER_US, since, source))
        # the requester's consultation record (its report above all) stays the performers' to see
        actor = f"Organization/{grantee}"
        if consents.permitted_categories(found, "disclose", actor, now) & cat.CONSULTATION:
            labels = consents.permitted_labels(found, "disclose", actor, cat.CONSULTATION, now)
            grants.append(Grant(grantee, patient, grantor, cat.CONSULTATION, labels, 0, FOREVER_US, since, source))
        for peer in grantees:
            if peer != grantee:
                grants.append(Grant(peer, patient, grantee, cat.CONSULTATION, lab.ALL, 0, FOREVER_US, since, source))
    if m.kind_of(request) == "referral":
        for clinic in sorted(set(community_clinics(session, patient)) - {grantor, *grantees}):
            actor = f"Organization/{clinic}"
            allowed = consents.permitted_categories(found, "disclose", actor, now) & RESULTS
            if allowed:
                labels = consents.permitted_labels(found, "disclose", actor, allowed, now)
                grants += [Grant(clinic, patient, g, allowed, labels, 0, FOREVER_US, since, source) for g in grantees]
    return grants


def community_clinics(session: Session, patient: str) -> list[str]:
    """The institutions ``Patient.generalPractitioner`` names: the patient's community clinic."""
    content = session.conn.execute(
        select(resources.c.content).where(
            resources.c.res_type == "Patient", resources.c.res_id == patient, resources.c.deleted.is_(False)
        )
    ).scalar()
    return institutions(session, fjson.loads(content).get("generalPractitioner") or []) if content else []


def _data_request_grants(
    session: Session,
    row: Any,
    task: dict[str, Any],
    patient: str,
    found: list[dict[str, Any]],
    requests: dict[str, dict[str, Any]],
    sensitive: int,
    strict: bool,
    now: int,
) -> list[Grant]:
    """While a participant provides what a data request asks (workflow/data_requests.py), the
    leader who asked — and the consultation's other participants: the case data package is
    everyone's (001 §7.3 a) — see the participant's data in the requested categories, all of it,
    as far as the patient's consent permits the participant disclosing it to them; the leader's
    share must be fully permitted when the participant takes it up."""
    from fhir_server.workflow import data_requests

    if data_requests.task_type(task) != data_requests.DATA_REQUEST or task.get("status") not in data_requests.PROVIDING:
        return []
    leader = row.tenant
    owners = institutions(session, [task.get("owner")])
    provider = owners[0] if owners else None
    if leader is None or provider is None or provider == leader:
        return []
    wanted = data_requests.requested_categories(task)
    peers: list[str] = []
    for based_on in task.get("basedOn") or ():
        ref = based_on.get("reference") if isinstance(based_on, dict) else None
        request = (
            requests.get(ref.split("/", 1)[1]) if isinstance(ref, str) and ref.startswith("ServiceRequest/") else None
        )
        if request is not None:
            peers += performer_organizations(session, request)
    grants = []
    for grantee in dict.fromkeys([leader, *peers]):
        if grantee == provider:
            continue
        actor = f"Organization/{grantee}"
        allowed = consents.permitted_categories(found, "disclose", actor, now) & wanted
        labels = consents.permitted_labels(found, "disclose", actor, wanted, now)
        if strict and grantee == leader:
            _require(patient, actor, wanted & ~allowed, sensitive & ~labels)
        if allowed:
            grants.append(Grant(grantee, patient, provider, allowed, labels, 0, FOREVER_US, 0, f"Task/{row.res_id}"))
    return grants


def _require(patient: str, actor: str, missing: int, missing_labels: int) -> None:
    if missing:
        raise FhirError(
            "consent",
            f"Patient/{patient}'s consent does not permit disclosing their {cat.describe(missing)} data to {actor}: "
            "record a Consent (scope patient-privacy) with a permit provision for action disclose and that "
            "actor, or share fewer categories (extension shared-data-category)",
        )
    if missing_labels:
        raise FhirError(
            "consent",
            f"Patient/{patient}'s data is labelled {lab.describe(missing_labels)}: disclosing it to {actor} needs "
            "a consent provision that names that security label",
        )


def _consent_grants(
    row: Any, consent: dict[str, Any], patient: str, found: list[dict[str, Any]], now: int
) -> list[Grant]:
    grantor = row.tenant or organization_id(_first_reference(consent.get("organization")))
    if grantor is None:
        return []
    grants = []
    for actor, period in consents.shares(consent):
        grantee = organization_id(actor)
        if grantee is None or grantee == grantor:
            continue
        allowed = consents.permitted_categories(found, "access", actor, now) & cat.PATIENT_DATA
        if not allowed:
            continue
        labels = consents.permitted_labels(found, "access", actor, allowed, now)
        start, end = _period(period)
        grants.append(Grant(grantee, patient, grantor, allowed, labels, start, end, 0, f"Consent/{row.res_id}"))
    return grants


def performer_organizations(session: Session, request: dict[str, Any]) -> list[str]:
    """The institutions a request asks to perform it."""
    return institutions(session, request.get("performer") or [])


def institutions(session: Session, references: list[Any]) -> list[str]:
    """The Organization ids that References name: an Organization, or a PractitionerRole's
    organization (read without the requester's access filter: the server decides)."""
    found = []
    for item in references:
        ref = item.get("reference") if isinstance(item, dict) else None
        if not isinstance(ref, str):
            continue
        ref = ref.split("/_history")[0]
        if ref.startswith("Organization/"):
            found.append(ref.split("/", 1)[1])
        elif ref.startswith("PractitionerRole/"):
            content = session.conn.execute(
                select(resources.c.content).where(
                    resources.c.res_type == "PractitionerRole",
                    resources.c.res_id == ref.split("/", 1)[1],
                    resources.c.deleted.is_(False),
                )
            ).scalar()
            org = _first_reference(fjson.loads(content).get("organization")) if content else None
            if org and org.startswith("Organization/"):
                found.append(organization_id(org))  # type: ignore[arg-type]
    return found


def shared_categories(request: dict[str, Any]) -> int:
    """The categories a request shares (extension ``shared-data-category``; all six if absent)."""
    mask = 0
    for ext in request.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == SHARED_CATEGORY_URL:
            coding = ext.get("valueCoding") or {}
            if coding.get("system") == cat.SYSTEM:
                mask |= cat.CODES.get(coding.get("code"), 0) & cat.PATIENT_DATA
    return mask or cat.PATIENT_DATA


def _authored(request: dict[str, Any], fallback_us: int) -> int:
    authored = request.get("authoredOn")
    if isinstance(authored, str):
        try:
            return parse_range(authored)[0]
        except ValueError:
            pass
    return fallback_us


def _period(period: dict[str, Any] | None) -> tuple[int, int]:
    start, end = 0, FOREVER_US
    if period:
        try:
            if isinstance(period.get("start"), str):
                start = parse_range(period["start"])[0]
            if isinstance(period.get("end"), str):
                end = parse_range(period["end"])[1] + 1
        except ValueError:
            return 0, 0  # unreadable: grants nothing
    return start, end


def _first_reference(value: Any) -> str | None:
    if isinstance(value, list):
        value = value[0] if value else None
    ref = value.get("reference") if isinstance(value, dict) else None
    return ref if isinstance(ref, str) else None
