"""Tenants: which rows a request may see and change, as one SQL predicate, and whose rows it writes.

Why in SQL, in the repository: an institution's data must be invisible to another, including its
existence (a 404, never a 403), and must stay so through every way of reaching a row — search,
``_include``/``_revinclude``, chains, ``_has``, ``_list``, compartments, history, conditional
interactions, Bundles and paging (``_total`` counts only what can be seen). Filtering results
after fetching them would get counts and paging wrong and leave every new query path to
remember the check; a predicate that every query of ``resources`` gets from the session
(``Session.visible``) cannot be forgotten. It reads only columns of the row itself
(security/categories.py, security/labels.py) and, for shared data, ``access_grants``
(security/grants.py).

What a request sees, by its token (docs/security.md has the table):

* the platform (a system client registered without an institution; ``--auth off``): everything;
* an institution (a user or client with an ``organization``): its own rows in the categories
  its roles read and the labels they are cleared for; the shared catalogue (conformance,
  terminology, the directory); another institution's rows about a patient while a grant for
  them is in force; a supervisor also the consultations of every institution;
* a patient (a resident's account, or ``patient/`` scopes with a patient in context): that
  patient's own rows (those of other institutions included), and the catalogue;
* and, whoever it is, within the rows its SMART scopes with a query allow (security/granular.py),
  in the same predicate.

Writes: a row belongs to the institution that created it (``tenant``), for good; only it may
update or delete it. A platform client's rows belong to the institution they name (the patient's,
``managingOrganization``, ``organization``, …) or to the platform. Whether the category may be
written is the roles' business, and an institution collecting a patient's data needs that
patient's consent (security/consent.py).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from sqlalchemy import BigInteger, ColumnElement, and_, bindparam, exists, false, or_, select, text, true

from fhir_server.errors import FhirError
from fhir_server.security import categories as cat
from fhir_server.security import consent as consents
from fhir_server.security import labels as lab
from fhir_server.security.granular import ScopeFilter
from fhir_server.security.roles import Permissions, permissions
from fhir_server.storage.schema import access_grants, resources
from fhir_server.util.clock import now_us

if TYPE_CHECKING:
    from fhir_server.security.scopes import ScopeSet
    from fhir_server.security.tokens import Principal
    from fhir_server.storage.repository import IndexRows, Session, StoredVersion

FOREVER_US = 2**62
_G = access_grants
#: the time of the request, as a bind parameter computed when a statement runs
NOW = bindparam("access_now", callable_=now_us, type_=BigInteger)


@dataclass(frozen=True)
class RowAccess:
    """The access columns of one row (``resources.tenant`` … ``minor_until_us``)."""

    tenant: str | None
    patient: str | None
    category: int
    labels: int
    minor_until_us: int | None

    def is_minor(self, at_us: int) -> bool:
        return bool(self.labels & lab.MINOR) or (self.minor_until_us is not None and self.minor_until_us > at_us)


@dataclass(frozen=True)
class Access:
    """What one request may see and change (built from its token by :func:`access_for`)."""

    #: the institution's Organization id; None for the platform and for a patient on their own
    organization: str | None = None
    #: unrestricted: the platform's own clients and ``--auth off``
    platform: bool = False
    #: only this patient's rows (and the catalogue)
    patient: str | None = None
    #: the patient is the one signed in (a resident): their rows in every institution
    own_records: bool = False
    #: categories read in its own institution and through grants
    readable: int = cat.ALL
    #: categories read in every institution (supervisor)
    cross_tenant: int = 0
    #: label bits it may see in its own institution
    clearance: int = lab.ALL
    minors: bool = True
    #: role limits on writes (None: the token's scopes alone decide)
    roles: Permissions | None = None
    #: writes of patient data need the patient's consent to collection by the institution
    collects: bool = False
    #: may write conformance and terminology resources (the catalogue beyond the directory)
    curates: bool = False
    #: the person's FHIR resource ("Practitioner/12"), for the records the server writes for them
    user: str | None = None
    #: SMART scopes with a query: the rows they allow (security/granular.py); None: the types alone
    scopes: ScopeFilter | None = None
    #: what it was built from (a token's shape, and its scopes when they have a query), to build
    #: it again for work done later on the token's behalf: a Subscription notifies what whoever
    #: wrote it may see (notify/subscriptions.py); None: built otherwise
    basis: Basis | None = field(default=None, compare=False, repr=False)
    #: statements built from this access, kept with it (an Access lives as long as its token's
    #: shape is in use: :func:`access_for` caches them)
    cache: dict[Any, Any] = field(default_factory=dict, compare=False, repr=False)

    # -- reading -------------------------------------------------------------------------
    def visible(self, res: Any, at_us: int | None = None) -> ColumnElement[bool] | None:
        """The predicate on a ``resources`` row (or alias) ``res``; None: no restriction.

        The time it compares grants and birthdays with is the statement's execution time (a
        bind parameter computed then), unless ``at_us`` fixes it; the predicate on ``resources``
        itself is built once and reused."""
        if self.platform and self.scopes is None:
            return None
        if res is resources and at_us is None:
            pred = self.cache.get("resources")
            if pred is None:
                pred = self.cache["resources"] = self._visible(res, NOW)
            return pred  # type: ignore[no-any-return]
        return self._visible(res, NOW if at_us is None else at_us)

    def _visible(self, res: Any, at: Any) -> ColumnElement[bool]:
        """The rows below (:meth:`_rows`; all for the platform), within those its scopes' queries allow."""
        rows = None if self.platform else self._rows(res, at)
        granted = None if self.scopes is None else self.scopes.readable(res)
        if granted is None:
            return true() if rows is None else rows
        return granted if rows is None else and_(rows, granted)

    def owns_readable(self, row: Any, at_us: int) -> bool:
        """Whether ``row`` (its access columns: a ``StoredVersion`` or ``RowAccess``) is visible
        for the plainest reason: one of its own institution's rows, in a category its roles read,
        with labels they are cleared for. The own-institution branch of :meth:`_rows`, in Python,
        so that a read by id of such a row needs no predicate, which PostgreSQL plans anew for
        every read (``Session.read_current``). False means "ask the predicate", never "hidden";
        an access with more to it (a patient in context, scopes with a query) always asks.
        ``tests/unit/test_tenancy_shortcut.py`` checks that it accepts no row the predicate hides."""
        if self.platform or self.own_records or self.organization is None:
            return self.platform and self.scopes is None
        if self.patient is not None or self.scopes is not None or row.tenant != self.organization:
            return False
        if not row.category & self.readable & ~cat.CATALOGUE:
            return False
        if row.labels & lab.ALL & ~self.clearance:
            return False
        return self.minors or not RowAccess.is_minor(row, at_us)

    def tenancy(self, res: Any) -> ColumnElement[bool] | None:
        """The rows it may see whatever its scopes' queries (None: every row), to tell a row the
        queries refuse (403) from one it may not know of (404)."""
        return None if self.platform else self._rows(res, NOW)

    def _rows(self, res: Any, at: Any) -> ColumnElement[bool]:
        """The rows of its institution, patient, roles and grants."""
        c = res.c
        catalogue = c.category == cat.CATALOGUE if self.readable & cat.CATALOGUE else false()
        if self.own_records:  # a resident: their own rows in every institution
            return or_(and_(c.patient == self.patient, *_in(c.category, self.readable)), catalogue)
        branches: list[ColumnElement[bool]] = [catalogue]
        if self.organization is not None:
            limits = self._clearance(c, at)  # the roles' limits, in its own data and in shared data
            branches.append(
                and_(c.tenant == self.organization, *_in(c.category, self.readable & ~cat.CATALOGUE), *limits)
            )
            branches.append(and_(self._granted(res, at), *limits))
        if self.cross_tenant:
            branches.append(and_(_bits(c.category, self.cross_tenant) != 0, c.labels == 0, _not_minor(c, at)))
        scope = or_(*branches)
        if self.patient is not None:  # patient/ scopes with a patient in context
            return and_(or_(c.patient == self.patient, catalogue), scope)
        return scope

    def _clearance(self, c: Any, at: Any) -> list[ColumnElement[bool]]:
        """The labelled rows the roles are not cleared for, left out."""
        limits = []
        if self.clearance != lab.ALL:
            limits.append(_bits(c.labels, lab.ALL & ~self.clearance) == 0)
        if not self.minors:
            limits.append(_not_minor(c, at))
        return limits

    def _granted(self, res: Any, at: Any) -> ColumnElement[bool]:
        """Another institution's row about a patient, while a grant for it is in force."""
        c = res.c
        conds = [
            _G.c.grantee == self.organization,
            _G.c.patient == c.patient,
            _G.c.grantor == c.tenant,
            _bits(_G.c.categories, c.category) != 0,
            _G.c.start_us <= at,
            _G.c.end_us > at,
            _G.c.since_us <= c.updated_us,
            _bits(c.labels, _G.c.labels) == c.labels,
            or_(_not_minor(c, at), _bits(_G.c.labels, lab.MINOR) != 0),
        ]
        if self.readable != cat.ALL:
            conds.append(_bits(c.category, self.readable) != 0)
        return and_(c.patient.is_not(None), exists(select(text("1")).select_from(_G).where(*conds).correlate(res)))

    def receiver(self, res_tenant: str | None, category: int) -> str | None:
        """The institution a row reaches when it is another institution's (shared with this one
        or overseen): it is de-identified for it (security/egress.py); None when the row is the
        request's own, the catalogue, or the request is the platform's or a patient's own."""
        if self.platform or self.own_records or category == cat.CATALOGUE or self.organization is None:
            return None
        return None if res_tenant == self.organization else self.organization

    # -- writing -------------------------------------------------------------------------
    def check_write(self, session: Session, res_type: str, row: RowAccess, current: StoredVersion | None) -> None:
        """403 unless this request may write ``row`` over ``current`` (None: a create)."""
        if self.platform:
            return
        if current is not None:
            self._check_owner(res_type, current, session)
        letter = "c" if current is None or current.deleted else "u"
        if self.roles is not None and not self.roles.allows(res_type, row.category, letter):
            raise FhirError(
                "forbidden",
                f"Your roles ({', '.join(self.roles.roles) or 'none'}) may not {_VERB[letter]} {res_type} "
                f"({cat.describe(row.category)} data)",
            )
        if row.category == cat.CATALOGUE and res_type not in cat.DIRECTORY and not self.curates:
            raise FhirError(
                "forbidden", f"{res_type} is part of the platform's shared catalogue: only operations staff change it"
            )
        if self.patient is not None and row.patient != self.patient and row.category != cat.CATALOGUE:
            raise FhirError("forbidden", f"This token may only write records of Patient/{self.patient}")
        if self.collects and row.patient and res_type not in ("Patient", "Consent"):
            moved = current is None or current.deleted or current.patient != row.patient
            if moved:
                require_collection_consent(session, row.patient, self.organization)  # type: ignore[arg-type]

    def check_delete(self, res_type: str, current: StoredVersion) -> None:
        if self.platform:
            return
        self._check_owner(res_type, current)
        category = current.category
        if self.roles is not None and not self.roles.allows(res_type, category, "d"):
            raise FhirError(
                "forbidden",
                f"Your roles ({', '.join(self.roles.roles) or 'none'}) may not delete {res_type} "
                f"({cat.describe(category)} data)",
            )

    def _check_owner(self, res_type: str, current: StoredVersion, session: Session | None = None) -> None:
        if self.own_records:
            if current.patient != self.patient:
                raise FhirError("forbidden", f"{res_type}/{current.res_id} is not one of your own records")
            return
        co_owners = session.repo.co_owners.get(res_type) if session is not None and not current.deleted else None
        if self.organization is not None and co_owners is not None and self.organization in co_owners(session, current):
            return  # e.g. a Task's performer (workflow/tasks.py), for updates
        if self.organization is None or current.tenant != self.organization:
            raise FhirError(
                "forbidden",
                f"{res_type}/{current.res_id} belongs to another institution (or to the platform): "
                "only its owner may change it",
            )

    def write_tenant(self) -> str | None:
        """The owner of rows this request creates, when it is an institution's."""
        return None if self.platform or self.own_records else self.organization


_VERB = {"c": "create", "u": "update", "d": "delete"}
UNRESTRICTED = Access(platform=True)


def _bits(column: Any, mask: Any) -> Any:
    return column.op("&")(mask)


def _in(column: Any, mask: int) -> list[ColumnElement[bool]]:
    """``column`` has a bit of ``mask`` (no condition when ``mask`` is every category)."""
    if mask & cat.ALL == cat.ALL:
        return []
    return [_bits(column, mask) != 0]


def _not_minor(c: Any, at: Any) -> ColumnElement[bool]:
    return and_(
        _bits(c.labels, lab.MINOR) == 0,
        or_(c.minor_until_us.is_(None), c.minor_until_us <= at),
    )


# -- from a token ----------------------------------------------------------------------------
#: roles of the platform's own institution that pre-review and schedule every institution's requests
PLATFORM_DESK = frozenset({"scheduler", "operator"})


def access_for(principal: Principal | None, platform_organization: str | None = None) -> Access:
    """The access of a request acting for ``principal`` (None: auth is off). People of the
    institution that runs the platform (``platform_organization``) with a desk role (scheduler,
    operator) read every institution's consultation data: they pre-review and schedule it."""
    if principal is None:
        return UNRESTRICTED
    desk = (
        platform_organization is not None
        and organization_id(principal.organization) == organization_id(platform_organization)
        and bool(PLATFORM_DESK & set(principal.roles))
    )
    shape = (
        principal.organization,
        principal.roles,
        principal.patient,
        principal.scopes.contexts(),
        principal.user,
        principal.person,
        desk,
    )
    if principal.scopes.queried:
        return _within_scopes(shape, principal.scopes)
    return _access(*shape)


def organization_id(reference: str | None) -> str | None:
    """``Organization/5`` (or a bare id) → ``5``."""
    if not reference:
        return None
    ref = reference.split("/_history")[0]
    return ref.rsplit("/", 1)[-1] if "/" in ref else ref


def institution_access(organization: str | None) -> Access | None:
    """What an institution's own system sees (None: the platform, unrestricted): the view of
    the server's work for it, e.g. matching changes against its subscriptions (notify/)."""
    if organization is None:
        return None
    return _access(f"Organization/{organization}", (), None, frozenset({"system"}), None, False)


@functools.lru_cache(maxsize=1024)
def _access(
    organization: str | None,
    roles: tuple[str, ...],
    patient: str | None,
    contexts: frozenset[str],
    user: str | None,
    person: bool,
    desk: bool = False,
) -> Access:
    shape = (organization, roles, patient, contexts, user, person, desk)
    access = _access_of(shape)
    return access if access is UNRESTRICTED else replace(access, basis=(shape, None))


def _access_of(shape: tuple[Any, ...]) -> Access:
    organization, roles, patient, contexts, user, person, desk = shape
    org = organization_id(organization)
    resident = user is not None and user.startswith("Patient/")
    if resident:
        patient = user.split("/", 1)[1]
    patient_only = patient is not None and (resident or contexts <= {"patient"})
    if not person:  # a client: the institution's own system, or the platform's
        if org is None:
            if patient_only:
                return Access(patient=patient, own_records=True, readable=cat.ALL)
            return UNRESTRICTED
        return Access(organization=org, patient=patient if patient_only else None, collects=True, curates=False)
    perms = permissions(roles)
    readable = perms.categories("r") | perms.categories("s") | cat.CATALOGUE
    if resident:
        return Access(patient=patient, own_records=True, readable=readable, roles=perms, user=user)
    return Access(
        organization=org,
        patient=patient if patient_only else None,
        readable=readable,
        cross_tenant=perms.cross_tenant | (cat.CONSULTATION if desk else 0),
        clearance=perms.clearance | (lab.MINOR if perms.minors else 0),
        minors=perms.minors,
        roles=perms,
        collects=True,
        curates="$reindex" in perms.operations,
        user=user,
    )


@functools.lru_cache(maxsize=1024)
def _within_scopes(shape: tuple[Any, ...], scopes: ScopeSet) -> Access:
    """:func:`_access` of ``shape``, limited to the rows the token's scopes with a query allow (a
    person's token counts its ``user/`` and ``patient/`` scopes, a client's its ``system/`` ones,
    as security/access.py does)."""
    access = _access(*shape)
    person = shape[5]
    limits = ScopeFilter.of(scopes, ("user", "patient") if person else ("system",))
    return access if limits is None else replace(access, scopes=limits, cache={}, basis=(shape, str(scopes)))


#: (the shape :func:`access_for` reads from a token, the token's scopes when they have a query)
Basis = tuple[tuple[Any, ...], str | None]


def basis_json(basis: Basis) -> dict[str, Any]:
    """An access's basis as JSON (kept on a Subscription)."""
    (organization, roles, patient, contexts, user, person, desk), scope = basis
    return {
        "organization": organization, "roles": list(roles), "patient": patient, "contexts": sorted(contexts),
        "user": user, "person": person, "desk": desk, "scope": scope,
    }  # fmt: skip


def access_of_basis(data: dict[str, Any]) -> Access:
    """The access :func:`basis_json` describes, as it is built for a token of that shape now
    (the roles' permissions as they are today); ``ValueError`` for what is not such a basis."""
    try:
        shape = (
            _text(data["organization"]), tuple(str(r) for r in data["roles"]), _text(data["patient"]),
            frozenset(str(c) for c in data["contexts"]), _text(data["user"]), bool(data["person"]),
            bool(data["desk"]),
        )  # fmt: skip
        scope = _text(data.get("scope"))
        if scope is None:
            return _access(*shape)
        from fhir_server.security.scopes import ScopeError, ScopeSet

        try:
            return _within_scopes(shape, ScopeSet.parse(scope))
        except ScopeError as exc:
            raise ValueError(str(exc)) from None
    except (KeyError, TypeError) as exc:
        raise ValueError(f"not an access basis: {exc}") from None


def _text(value: Any) -> str | None:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"{value!r} is not a string")
    return value


# -- the access columns of a row being written -----------------------------------------------
@dataclass
class PatientFacts:
    """What rows about a patient inherit from the Patient row."""

    tenant: str | None
    labels: int
    minor_until_us: int | None


_OWNER_REFERENCES = ("managingOrganization", "organization", "providedBy", "serviceProvider", "custodian", "owner")


@dataclass
class RowAccessRules:
    """Computes the access columns of each row written (``Repository.row_access``)."""

    registry: Any
    #: resource type -> stored ``sp`` hashes of its patient parameters, in priority order
    _patient_sps: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _in_compartment: dict[str, bool] = field(default_factory=dict)

    def patient_sps(self, res_type: str) -> tuple[int, ...]:
        sps = self._patient_sps.get(res_type)
        if sps is None:
            found: list[int] = []
            for code in ("patient", "subject", "beneficiary"):
                param = self.registry.get(res_type, code)
                if param is not None and param.type == "reference":
                    found.extend(s for s in self.registry.stored_sps(param) if s not in found)
            sps = self._patient_sps[res_type] = tuple(found)
        return sps

    def in_compartment(self, res_type: str) -> bool:
        known = self._in_compartment.get(res_type)
        if known is None:
            known = res_type in self.registry.compartment_types("Patient") or bool(self.patient_sps(res_type))
            self._in_compartment[res_type] = known
        return known

    def patient_of(self, res_type: str, res_id: str, index: IndexRows) -> str | None:
        if res_type == "Patient":
            return res_id
        sps = self.patient_sps(res_type)
        if not sps:
            return None
        best: tuple[int, str] | None = None
        for row in index.get("idx_reference", ()):
            # (rid, sp, target_type, target_id, target_version, url)
            if row[2] == "Patient" and row[3] and row[1] in sps:
                rank = sps.index(row[1])
                if best is None or rank < best[0]:
                    best = (rank, row[3])
        return best[1] if best else None

    def __call__(
        self, session: Session, resource: dict[str, Any], index: IndexRows, current: StoredVersion | None
    ) -> RowAccess:
        res_type, res_id = resource["resourceType"], resource["id"]
        patient = self.patient_of(res_type, res_id, index)
        if patient is None and res_type in _ABOUT_A_ROW:
            patient = _referenced_patient(session, _ABOUT_A_ROW[res_type](resource))
        elif patient is None and res_type == "Bundle" and resource.get("type") in ("document", "collection"):
            patient = _document_patient(resource)  # a document (an archive) is about its head's subject
        category = cat.of_resource(resource, self.in_compartment(res_type))
        labels = lab.of_resource(resource)
        minor_until = None
        facts = None
        if res_type == "Patient":
            minor_until = lab.minor_until_us(resource)
        elif patient is not None:
            facts = patient_facts(session, patient)
            if facts is not None:
                labels |= facts.labels
                minor_until = facts.minor_until_us
        access = session.access
        if current is not None and current.tenant is not None:
            tenant: str | None = current.tenant  # the owner never changes
        elif current is None and access is not None and access.write_tenant() is not None:
            tenant = access.write_tenant()
        else:  # the platform's write, or a row the platform owned so far
            tenant = _inferred_tenant(resource, facts)
        row = RowAccess(tenant, patient, category, labels, minor_until)
        if res_type == "Patient":
            session.patient_facts[res_id] = PatientFacts(tenant, labels, minor_until)
        return row


def _inferred_tenant(resource: dict[str, Any], facts: PatientFacts | None) -> str | None:
    """The institution a platform client's resource belongs to: its patient's, itself for an
    Organization, else the first institution it names as its owner."""
    if facts is not None:
        return facts.tenant
    if resource["resourceType"] == "Organization":
        return str(resource["id"])
    for key in _OWNER_REFERENCES:
        ref = resource.get(key)
        refs = ref if isinstance(ref, list) else [ref]
        for one in refs:
            target = one.get("reference") if isinstance(one, dict) else None
            if isinstance(target, str) and target.startswith("Organization/"):
                return organization_id(target)
    return None


def _document_patient(bundle: dict[str, Any]) -> str | None:
    entries = bundle.get("entry")
    head = entries[0] if isinstance(entries, list) and entries else None
    first = head.get("resource") if isinstance(head, dict) else None
    heads = ("Composition", "ServiceRequest")  # a document's Composition, a consultation archive's request
    subject = first.get("subject") if isinstance(first, dict) and first.get("resourceType") in heads else None
    ref = subject.get("reference") if isinstance(subject, dict) else None
    if isinstance(ref, str) and ref.startswith("Patient/") and ref.count("/") == 1:
        return ref.split("/", 1)[1]
    return None


def _first_reference(value: Any) -> Any:
    first = value[0] if isinstance(value, list) and value else value
    return first.get("reference") if isinstance(first, dict) else None


#: resources about another row, and so about its patient: a Provenance its target's, an expert's
#: AppointmentResponse its appointment's (the booker then reads the answer through the grant)
_ABOUT_A_ROW = {
    "Provenance": lambda r: _first_reference(r.get("target")),
    "AppointmentResponse": lambda r: _first_reference(r.get("appointment")),
}


def _referenced_patient(session: Session, ref: Any) -> str | None:
    if not isinstance(ref, str) or ref.count("/") < 1:
        return None
    res_type, res_id = ref.split("/")[:2]
    if res_type == "Patient":
        return res_id
    session.flush()
    r = resources
    found = session.conn.execute(
        select(r.c.patient).where(r.c.res_type == res_type, r.c.res_id == res_id, r.c.deleted.is_(False))
    ).scalar()
    return str(found) if found else None


def patient_facts(session: Session, patient: str) -> PatientFacts | None:
    """The tenant and labels of a Patient (from this transaction's writes, else the database)."""
    if patient in session.patient_facts:
        return session.patient_facts[patient]
    r = resources
    row = session.conn.execute(
        select(r.c.tenant, r.c.labels, r.c.minor_until_us).where(
            r.c.res_type == "Patient", r.c.res_id == patient, r.c.deleted.is_(False)
        )
    ).first()
    facts = PatientFacts(row.tenant, row.labels, row.minor_until_us) if row is not None else None
    session.patient_facts[patient] = facts
    return facts


def require_collection_consent(session: Session, patient: str, organization: str) -> None:
    """403 unless the patient's consent permits ``organization`` to collect their data."""
    key = (patient, organization)
    if key in session.consent_checked:
        return
    found = patient_consents(session, patient)
    permitted = consents.decision(found, "collect", f"Organization/{organization}", cat.CLINICAL, 0, now_us())
    if not permitted and not _shared_with(session, patient, organization):
        raise FhirError(
            "consent",
            f"No active Consent of Patient/{patient} permits your institution (Organization/{organization}) "
            "to collect their data: record the patient's consent (Consent, scope patient-privacy or treatment, "
            "a permit provision for action collect) first",
        )
    session.consent_checked.add(key)


def _shared_with(session: Session, patient: str, organization: str) -> bool:
    """Whether a consented share or request gives ``organization`` the patient's data now: an
    institution asked to take part in their care may record what it does (opinions, reports)."""
    at = now_us()
    g = access_grants
    return (
        session.conn.execute(
            select(g.c.grantee)
            .where(g.c.grantee == organization, g.c.patient == patient, g.c.start_us <= at, g.c.end_us > at)
            .limit(1)
        ).first()
        is not None
    )


def patient_consents(session: Session, patient: str) -> list[dict[str, Any]]:
    """The current Consents about ``patient`` (whoever stored them), unfiltered: the decision is the
    server's, not the requester's to see."""
    session.flush()
    r = resources
    rows = session.conn.execute(
        select(r.c.content).where(
            r.c.res_type == "Consent",
            r.c.patient == patient,
            r.c.deleted.is_(False),
            r.c.rid.in_(_referring(patient)),
        )
    ).scalars()
    from fhir_server.formats import json as fjson

    return [fjson.loads(content) for content in rows]


def _referring(patient: str) -> Any:
    """The rids of rows that reference ``Patient/<patient>`` (an indexed lookup)."""
    from fhir_server.storage.schema import idx_reference as ref

    return select(ref.c.rid).where(ref.c.target_id == patient, ref.c.target_type == "Patient")
