"""IHE Basic Audit Log Patterns (BALP 1.1.4): the FHIR R4 AuditEvents one interaction yields.

Pure functions: :func:`build_events` takes what happened (:class:`Interaction`), who asked
(:class:`Requester`) and who answered (:class:`Server`) and returns AuditEvent dicts (no ``id``;
the audit store assigns it). Nothing here stores, sends or reads the clock.

What BALP asks for and how it is met (IHE ITI BALP 3:5.7.3 "RESTful activities", profiles
``IHE.BasicAudit.{Create,Read,Update,Delete,Query}`` and their ``Patient*`` variants):

* ``type`` audit-event-type#rest, ``subtype`` the restful-interaction code, ``action`` C/R/U/D/E.
* Agents: ``client`` and ``server``, each with ``who`` and ``network``, and ``user`` when known.
  The client/server role codes follow DICOM/XDS: the initiator is 110153 Source and the
  responder 110152 Destination, **swapped for read and vread** (the client receives the data);
  delete uses 110150 Application for the client and provenance ``custodian`` for the server
  (BALP 3:5.7.3).
* One AuditEvent **per patient** (the ``Patient*`` profiles: "one AuditEvent is created for every
  Patient identified"), each with ``entity[patient]`` (type 1 Person, role 1 Patient).
* ``entity[data]`` (type 2 System Object, role 4 Domain Resource) names the resource;
  ``entity[query]`` (type 2, role 24 Query) carries the raw query string base64-encoded, "enabling
  preserving exactly what was requested, including possibly malicious patterns" (Query profile);
  ``entity[transaction]`` carries X-Request-Id (BALP 3:5.7.3.1, code system BasicAuditEntityType).
* Tokens are never recorded whole: the OAuth Opaque pattern (BALP 3:5.7.5.1, profile
  ``IHE.BasicAudit.OAUTHaccessTokenUse.Opaque``) keeps "not more than 32 characters ... from the
  end of the token" in ``agent[user].policy``, the user agent also coded ``UserOauthAgent``.

``meta.profile`` claims a BALP profile only for an event that meets it: the REST profiles fix
``outcome`` to 0, so failures claim none ("a failure AuditEvent may follow this pattern, but would
not be a successful outcome"), and an event missing a required part (no client network address,
no resource id, an empty query string) claims none either. Interactions BALP does not profile
(history, capabilities, operations, batch, transaction, login, logout) follow the same agent and
entity patterns without a profile claim; login and logout are DICOM "User Authentication" events
(PS3.15 A.5.3, EventID 110114 with EventTypeCode 110122 Login / 110123 Logout, action E).
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from http import HTTPStatus
from typing import Any

__all__ = [
    "Interaction",
    "Requester",
    "Server",
    "build_events",
    "opaque_token",
    "outcome_code",
    "KINDS",
    "PROFILE_BASE",
]

# --------------------------------------------------------------------------- code systems

AUDIT_EVENT_TYPE = "http://terminology.hl7.org/CodeSystem/audit-event-type"
RESTFUL_INTERACTION = "http://hl7.org/fhir/restful-interaction"
DCM = "http://dicom.nema.org/resources/ontology/DCM"
PROVENANCE_PARTICIPANT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"
PARTICIPATION_TYPE = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CLASS = "http://terminology.hl7.org/CodeSystem/v3-RoleClass"
SECURITY_ROLE_TYPE = "http://terminology.hl7.org/CodeSystem/extra-security-role-type"
ACT_REASON = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
AUDIT_ENTITY_TYPE = "http://terminology.hl7.org/CodeSystem/audit-entity-type"
OBJECT_ROLE = "http://terminology.hl7.org/CodeSystem/object-role"
SECURITY_SOURCE_TYPE = "http://terminology.hl7.org/CodeSystem/security-source-type"
BALP_ENTITY_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/BasicAuditEntityType"
BALP_USER_AGENT_TYPE = "https://profiles.ihe.net/ITI/BALP/CodeSystem/UserAgentTypes"
PROFILE_BASE = "https://profiles.ihe.net/ITI/BALP/StructureDefinition/IHE.BasicAudit."

#: ``agent[client].who.identifier.system``: the OAuth client id.
CLIENT_ID_SYSTEM = "urn:telefhir:client"
#: ``agent[user].who.identifier.system`` for a user known by account name (not a FHIR reference).
USER_ACCOUNT_SYSTEM = "urn:telefhir:user"
#: ``agent[user].role`` coding system of the platform roles (MISSION R23).
ROLE_SYSTEM = "http://fhir.telefhir.cn/CodeSystem/security-role"
#: ``subtype`` coding system naming an operation (code = ``OperationDefinition.code``, no ``$``).
OPERATION_SYSTEM = "urn:telefhir:operation"

#: Most characters of a token an AuditEvent keeps (BALP 3:5.7.5.1).
TOKEN_KEPT_CHARS = 32

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Requester:
    """Who asked: the OAuth client, the user behind it and what their token says."""

    client_id: str | None = None
    #: the user's FHIR reference ("Practitioner/12") or account name
    user: str | None = None
    user_display: str | None = None
    #: platform role codes (e.g. "expert", "operator") → ``agent[user].role``
    roles: tuple[str, ...] = ()
    #: "Organization/5": the user's institution (tenant) → ``agent[userorg]``
    organization: str | None = None
    #: v3 ActReason codes from the token → ``agent[user].purposeOfUse``
    purpose_of_use: tuple[str, ...] = ()
    #: client IP → ``agent[client].network``
    network_address: str | None = None
    #: the bearer token: only :func:`opaque_token` of it is kept
    token: str | None = None


@dataclass(frozen=True)
class Server:
    """Who answered: this server, as ``agent[server]`` and ``source``."""

    name: str
    base_url: str
    #: host name or IP the server answered on
    address: str
    #: enterprise site (institution), if configured → ``source.site``
    site: str | None = None


@dataclass(frozen=True)
class Interaction:
    """What happened. ``kind`` is one of :data:`KINDS`; ``status`` the HTTP status answered."""

    kind: str
    status: int
    #: when the interaction finished (timezone-aware; recorded in UTC)
    recorded: datetime
    resource_type: str | None = None
    resource_id: str | None = None
    version: str | None = None
    #: the operation name ("$everything")
    operation: str | None = None
    #: the raw query string; recorded (base64) for searches, history and operations only
    query: str | None = None
    #: "Patient/1", ...: the patients the interaction touched (one event each)
    patients: tuple[str, ...] = ()
    #: diagnostics for a failure → ``outcomeDesc``
    detail: str | None = None
    #: X-Request-Id → ``entity[transaction]``
    request_id: str | None = None
    http_method: str | None = None


# --------------------------------------------------------------------------- the rules per kind

_Coding = tuple[str, str, str]  # system, code, display

_SOURCE: _Coding = (DCM, "110153", "Source Role ID")
_DESTINATION: _Coding = (DCM, "110152", "Destination Role ID")
_APPLICATION: _Coding = (DCM, "110150", "Application")
_CUSTODIAN: _Coding = (PROVENANCE_PARTICIPANT_TYPE, "custodian", "Custodian")
_RECIPIENT: _Coding = (PARTICIPATION_TYPE, "IRCP", "information recipient")
_AUTHOR: _Coding = (PARTICIPATION_TYPE, "AUT", "author (originator)")
_CUSTODIAN_USER: _Coding = (PARTICIPATION_TYPE, "CST", "custodian")
_AGENT: _Coding = (ROLE_CLASS, "AGNT", "agent")
_HUMAN_USER: _Coding = (SECURITY_ROLE_TYPE, "humanuser", "human user")
_OAUTH_USER: _Coding = (BALP_USER_AGENT_TYPE, "UserOauthAgent", "User OAuth Agent participant")
_USER_ORG: _Coding = (ROLE_CLASS, "PROV", "healthcare provider")


@dataclass(frozen=True)
class _Rule:
    """How one kind of interaction is recorded (BALP 3:5.7.3; DICOM PS3.15 A.5.3 for login/logout)."""

    type: _Coding
    subtype: _Coding
    action: str
    client: _Coding
    server: _Coding
    #: the transaction-specific type of ``agent[user]`` (UserAgentTypesVS)
    user: _Coding
    #: the BALP profile name (``Patient`` + name for the per-patient variant), if BALP has one
    profile: str | None = None
    #: resource type required / resource id required / version required
    needs_type: bool = False
    needs_id: bool = False
    needs_version: bool = False
    #: carries ``entity[query]``
    query: bool = False
    #: the REST path after the base, for ``entity[query].description``
    path: str = ""


_REST = (AUDIT_EVENT_TYPE, "rest", "Restful Operation")
_USER_AUTH = (DCM, "110114", "User Authentication")


def _rest(code: str, action: str, user: _Coding, **kw: Any) -> _Rule:
    client, server = kw.pop("agents", (_SOURCE, _DESTINATION))
    return _Rule(_REST, (RESTFUL_INTERACTION, code, code), action, client, server, user, **kw)


_RULES: dict[str, _Rule] = {
    "create": _rest("create", "C", _AUTHOR, profile="Create", needs_type=True, path="{type}"),
    "read": _rest(
        "read",
        "R",
        _RECIPIENT,
        agents=(_DESTINATION, _SOURCE),
        profile="Read",
        needs_type=True,
        needs_id=True,
        path="{type}/{id}",
    ),
    "vread": _rest(
        "vread",
        "R",
        _RECIPIENT,
        agents=(_DESTINATION, _SOURCE),
        profile="Read",
        needs_type=True,
        needs_id=True,
        needs_version=True,
        path="{type}/{id}/_history/{version}",
    ),
    "update": _rest("update", "U", _AUTHOR, profile="Update", needs_type=True, path="{type}/{id}"),
    "patch": _rest("patch", "U", _AUTHOR, profile="Update", needs_type=True, path="{type}/{id}"),
    "delete": _rest(
        "delete",
        "D",
        _CUSTODIAN_USER,
        agents=(_APPLICATION, _CUSTODIAN),
        profile="Delete",
        needs_type=True,
        path="{type}/{id}",
    ),
    "search-type": _rest("search-type", "E", _RECIPIENT, profile="Query", needs_type=True, query=True, path="{type}"),
    "search-system": _rest("search-system", "E", _RECIPIENT, profile="Query", query=True),
    "search": _rest("search", "E", _RECIPIENT, profile="Query", query=True, path="{type}"),
    "history-instance": _rest(
        "history-instance", "E", _RECIPIENT, needs_type=True, needs_id=True, query=True, path="{type}/{id}/_history"
    ),
    "history-type": _rest("history-type", "E", _RECIPIENT, needs_type=True, query=True, path="{type}/_history"),
    "history-system": _rest("history-system", "E", _RECIPIENT, query=True, path="_history"),
    "capabilities": _rest("capabilities", "E", _RECIPIENT, path="metadata"),
    "operation": _rest("operation", "E", _RECIPIENT, query=True, path="{type}/{id}/{operation}"),
    "batch": _rest("batch", "E", _AGENT),
    "transaction": _rest("transaction", "E", _AGENT),
    # a Subscription's notification leaving the server (notify/): we are the source, the
    # subscriber the destination; recorded once per notification, delivered or given up
    "notification": _Rule(
        (DCM, "110106", "Export"),
        (OPERATION_SYSTEM, "notify", "Subscription notification"),
        "R",
        _DESTINATION,
        _SOURCE,
        _RECIPIENT,
        needs_type=True,
        needs_id=True,
        path="{type}/{id}",
    ),
    "login": _Rule(_USER_AUTH, (DCM, "110122", "Login"), "E", _SOURCE, _DESTINATION, _HUMAN_USER),
    "logout": _Rule(_USER_AUTH, (DCM, "110123", "Logout"), "E", _SOURCE, _DESTINATION, _HUMAN_USER),
}

#: Every interaction kind :func:`build_events` records.
KINDS: frozenset[str] = frozenset(_RULES)

# --------------------------------------------------------------------------- input checks

_WHITESPACE = re.compile(r"\s")
_TYPE_RE = re.compile(r"[A-Z][A-Za-z]{1,63}", re.ASCII)
_ID_RE = re.compile(r"[A-Za-z0-9\-.]{1,64}", re.ASCII)
PATIENT_RE = re.compile(r"Patient/[A-Za-z0-9\-.]{1,64}", re.ASCII)
_ORGANIZATION_RE = re.compile(r"Organization/[A-Za-z0-9\-.]{1,64}", re.ASCII)
_REFERENCE_RE = re.compile(r"([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})", re.ASCII)
_OPERATION_RE = re.compile(r"\$?([A-Za-z][A-Za-z0-9_\-]*)", re.ASCII)
_CODE_RE = re.compile(r"[^\s]+(?:\s[^\s]+)*")
_METHOD_RE = re.compile(r"[A-Z]{3,7}", re.ASCII)
#: AuditEvent.agent.who may reference only these (R4 AuditEvent.agent.who)
_AGENT_TARGETS = frozenset({"Practitioner", "PractitionerRole", "Patient", "RelatedPerson", "Device", "Organization"})


def _text(value: str | None, what: str) -> str | None:
    """A FHIR string: not empty and not only whitespace (datatypes.html#string)."""
    if value is None:
        return None
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{what} must be a non-empty string, got {value!r}")
    return value


def _match(regex: re.Pattern[str], value: str | None, what: str, shape: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not regex.fullmatch(value):
        raise ValueError(f"{what} must be {shape}, got {value!r}")
    return value


def _codes(values: tuple[str, ...], what: str) -> tuple[str, ...]:
    if not isinstance(values, tuple):
        raise ValueError(f"{what} must be a tuple of codes, got {type(values).__name__}")
    for v in values:
        _match(_CODE_RE, v, what, "a code (no leading, trailing or repeated whitespace)")
    return tuple(dict.fromkeys(values))


def _check(interaction: Interaction, requester: Requester, server: Server) -> _Rule:
    """Everything an event is built from, checked first so that a bad input fails whole."""
    rule = _RULES.get(interaction.kind)
    if rule is None:
        raise ValueError(f"unknown interaction kind {interaction.kind!r}; expected one of {sorted(KINDS)}")
    outcome_code(interaction.status)
    if not isinstance(interaction.recorded, datetime) or interaction.recorded.utcoffset() is None:
        raise ValueError(f"recorded must be a timezone-aware datetime, got {interaction.recorded!r}")
    _match(_TYPE_RE, interaction.resource_type, "resource_type", "a resource type name")
    _match(_ID_RE, interaction.resource_id, "resource_id", "a FHIR id ([A-Za-z0-9-.]{1,64})")
    _match(_ID_RE, interaction.version, "version", "a FHIR id ([A-Za-z0-9-.]{1,64})")
    _match(_OPERATION_RE, interaction.operation, "operation", "an operation name such as '$everything'")
    _match(_METHOD_RE, interaction.http_method, "http_method", "an upper-case HTTP method")
    if interaction.query is not None and not isinstance(interaction.query, str):
        raise ValueError(f"query must be a string, got {type(interaction.query).__name__}")
    _text(interaction.detail, "detail")
    _text(interaction.request_id, "request_id")
    if not isinstance(interaction.patients, tuple):
        raise ValueError(f"patients must be a tuple of 'Patient/<id>', got {type(interaction.patients).__name__}")
    for p in interaction.patients:
        _match(PATIENT_RE, p, "patients", "'Patient/<id>'")
    if rule.needs_type and interaction.resource_type is None:
        raise ValueError(f"a {interaction.kind} interaction needs resource_type")
    if rule.needs_id and interaction.resource_id is None:
        raise ValueError(f"a {interaction.kind} interaction needs resource_id")
    if rule.needs_version and interaction.version is None:
        raise ValueError(f"a {interaction.kind} interaction needs version")
    if interaction.kind == "operation" and interaction.operation is None:
        raise ValueError("an operation interaction needs operation (e.g. '$everything')")
    if interaction.resource_id is not None and interaction.resource_type is None:
        raise ValueError("resource_id given without resource_type")

    try:
        _check_parties(requester, server)
    except TypeError:  # unhashable: a list where a tuple belongs; checked uncached, it says so
        _check_parties.__wrapped__(requester, server)
        raise
    return rule


@functools.lru_cache(maxsize=1024)
def _check_parties(requester: Requester, server: Server) -> None:
    """The requester and server checks, once per pair: a request's events share them, and a
    client's requests repeat them (both are frozen; a failed check is not cached)."""
    _text(requester.client_id, "client_id")
    _text(requester.user, "user")
    _text(requester.user_display, "user_display")
    _codes(requester.roles, "roles")
    _codes(requester.purpose_of_use, "purpose_of_use")
    _match(_ORGANIZATION_RE, requester.organization, "organization", "'Organization/<id>'")
    _text(requester.network_address, "network_address")
    if requester.token is not None:
        opaque_token(requester.token)

    _text(server.name, "server name")
    _text(server.base_url, "server base_url")
    _text(server.address, "server address")
    _text(server.site, "server site")


# --------------------------------------------------------------------------- public helpers


def opaque_token(token: str) -> str:
    """The part of a bearer token an AuditEvent may keep (BALP 3:5.7.5.1, Opaque pattern).

    BALP: "shortened to not more than 32 characters, and those characters should be from the end
    of the token to assure the most entropy" (for a JWT, the signature). Kept: the last 32
    characters, but never more than half the token, so that a short token (an API key, a test
    token) is not recorded whole either.
    """
    if not isinstance(token, str) or not token or _WHITESPACE.search(token):
        raise ValueError("a token must be a non-empty string without whitespace")
    kept = min(TOKEN_KEPT_CHARS, len(token) // 2)
    if kept == 0:
        raise ValueError("a one-character token cannot be shortened")
    return token[-kept:]


def outcome_code(status: int) -> str:
    """AuditEvent.outcome for an HTTP status (R4 audit-event-outcome, required binding).

    2xx and 3xx → ``0`` Success (the request was carried out; a redirect or 304 answered it);
    4xx → ``4`` Minor failure ("often equivalent to an HTTP 400 response": the request was refused
    and nothing changed); 5xx → ``8`` Serious failure ("often equivalent to an HTTP 500
    response"). ``12`` Major failure ("the system is no longer available") is never inferred from
    a status: a server that answered is still available. 1xx is not a final answer.
    """
    if isinstance(status, bool) or not isinstance(status, int) or not 200 <= status <= 599:
        raise ValueError(f"status must be a final HTTP status (200-599), got {status!r}")
    if status < 400:
        return "0"
    return "4" if status < 500 else "8"


# --------------------------------------------------------------------------- building


def build_events(interaction: Interaction, requester: Requester, server: Server) -> list[dict[str, Any]]:
    """The AuditEvents of one interaction: one per patient in ``interaction.patients`` (in order,
    duplicates once), or one without a patient entity when there is none (BALP Patient* profiles).
    """
    rule = _check(interaction, requester, server)
    patients = tuple(dict.fromkeys(interaction.patients)) or (None,)
    return [_event(rule, interaction, requester, server, patient) for patient in patients]


def _coding(c: _Coding) -> dict[str, str]:
    return {"system": c[0], "code": c[1], "display": c[2]}


def _network(address: str) -> dict[str, str]:
    """AuditEvent.agent.network: type 2 IP Address for an IP, else 1 Machine Name (R4 network-type)."""
    return {"address": address, "type": _network_type(address)}


@functools.lru_cache(maxsize=4096)
def _network_type(address: str) -> str:
    try:
        ipaddress.ip_address(address.strip("[]"))
    except ValueError:
        return "1"
    return "2"


def _recorded(when: datetime) -> str:
    """An R4 ``instant`` in UTC with microseconds: events of one request stay ordered. (What
    ``isoformat`` gives, with the date and time to the second formatted once per second: every
    request's audit record writes one.)"""
    global _second
    seconds, fraction = divmod((when - _EPOCH) // _MICROSECOND, 1_000_000)
    cached = _second
    if cached[0] != seconds:
        t = time.gmtime(seconds)
        cached = _second = (
            seconds,
            f"{t.tm_year:04d}-{t.tm_mon:02d}-{t.tm_mday:02d}T{t.tm_hour:02d}:{t.tm_min:02d}:{t.tm_sec:02d}",
        )
    return f"{cached[1]}.{fraction:06d}Z"


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)
#: (a second since the epoch, its date and time): the last one formatted
_second: tuple[int, str] = (-1, "")


def _event(
    rule: _Rule, interaction: Interaction, requester: Requester, server: Server, patient: str | None
) -> dict[str, Any]:
    outcome = outcome_code(interaction.status)
    subtypes = [_coding(rule.subtype)]
    if interaction.kind == "operation":
        name = _OPERATION_RE.fullmatch(interaction.operation or "")
        assert name is not None  # checked in _check
        subtypes.append({"system": OPERATION_SYSTEM, "code": name.group(1), "display": f"${name.group(1)}"})

    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "type": _coding(rule.type),
        "subtype": subtypes,
        "action": rule.action,
        "recorded": _recorded(interaction.recorded),
        "outcome": outcome,
    }
    description = _outcome_description(interaction, outcome)
    if description:
        event["outcomeDesc"] = description
    event["agent"] = _agents(rule, requester, server)
    event["source"] = _source(server)
    entities = _entities(rule, interaction, server, patient)
    if entities:
        event["entity"] = entities
    profiles = _profiles(rule, event, requester, patient)
    if profiles:
        return {"resourceType": "AuditEvent", "meta": {"profile": profiles}, **event}
    return event


@functools.lru_cache(maxsize=64)
def _source(server: Server) -> dict[str, Any]:
    """AuditEvent.source of every event this server records (shared, never changed)."""
    source: dict[str, Any] = {}
    if server.site:
        source["site"] = server.site
    source["observer"] = {"display": server.name}
    source["type"] = [{"system": SECURITY_SOURCE_TYPE, "code": "4", "display": "Application Server"}]
    return source


def _outcome_description(interaction: Interaction, outcome: str) -> str | None:
    """The diagnostics when given; for a failure without them, the HTTP status and its phrase."""
    if interaction.detail:
        return interaction.detail
    if outcome == "0":
        return None
    try:
        phrase = HTTPStatus(interaction.status).phrase
    except ValueError:
        return f"HTTP {interaction.status}"
    return f"HTTP {interaction.status} {phrase}"


@functools.lru_cache(maxsize=1024)
def _agents(rule: _Rule, requester: Requester, server: Server) -> list[dict[str, Any]]:
    """The agents of an event; the same for every event of one kind by one requester at one
    server, so built once (a keep-alive client repeats them on every request) and shared by the
    events: they are read and serialised, never changed."""
    client: dict[str, Any] = {"type": {"coding": [_coding(rule.client)]}}
    if requester.client_id:
        client["who"] = {"identifier": {"system": CLIENT_ID_SYSTEM, "value": requester.client_id}}
    else:
        # An unauthenticated caller: BALP wants who 1..1, so the caller is named by its address.
        client["who"] = {"display": requester.network_address or "unidentified client"}
    client["requestor"] = False
    if requester.network_address:
        client["network"] = _network(requester.network_address)

    agents = [
        client,
        {
            "type": {"coding": [_coding(rule.server)]},
            "who": {"display": server.name},
            "requestor": False,
            "network": _network(server.address),
        },
    ]
    user = _user_agent(rule, requester)
    if user is not None:
        agents.append(user)
    if requester.organization:
        # BALP SAML/OAuth Comprehensive agent[userorg]: the user's organisation, not a requestor;
        # also for an institution's own system acting without a user (whose audit trail it is).
        agents.append(
            {
                "type": {"coding": [_coding(_USER_ORG)]},
                "who": {"reference": requester.organization},
                "requestor": False,
            }
        )
    return agents


def _user_who(user: str, display: str | None) -> dict[str, Any]:
    ref = _REFERENCE_RE.fullmatch(user)
    if ref is not None:
        if ref.group(1) not in _AGENT_TARGETS:
            raise ValueError(f"user {user!r}: AuditEvent.agent.who can reference only {sorted(_AGENT_TARGETS)}")
        who: dict[str, Any] = {"reference": user}
    else:
        who = {"identifier": {"system": USER_ACCOUNT_SYSTEM, "value": user}}
    if display:
        who["display"] = display
    return who


def _user_agent(rule: _Rule, requester: Requester) -> dict[str, Any] | None:
    """``agent[user]``: the person (or, for a Backend Services token, the client) responsible.

    Without a user but with a token, the token's subject is the client itself (SMART Backend
    Services: ``sub`` = ``client_id``; BALP 3:5.7.5.4 maps ``sub`` to ``agent[user].who``), so the
    client is recorded as the user agent and the token fragment still has its place (``policy``).
    """
    if requester.user:
        who = _user_who(requester.user, requester.user_display)
    elif requester.token and requester.client_id:
        who = {"identifier": {"system": CLIENT_ID_SYSTEM, "value": requester.client_id}}
    elif requester.token:
        who = {"display": "bearer of an access token"}
    else:
        return None
    codings = [_coding(rule.user)]
    if requester.token:
        codings.append({"system": _OAUTH_USER[0], "code": _OAUTH_USER[1], "display": _OAUTH_USER[2]})
    agent: dict[str, Any] = {"type": {"coding": codings}}
    if requester.roles:
        agent["role"] = [{"coding": [{"system": ROLE_SYSTEM, "code": r}]} for r in dict.fromkeys(requester.roles)]
    agent["who"] = who
    if requester.user and requester.user_display:
        agent["name"] = requester.user_display
    agent["requestor"] = True
    if requester.token:
        agent["policy"] = [opaque_token(requester.token)]
    if requester.purpose_of_use:
        agent["purposeOfUse"] = [
            {"coding": [{"system": ACT_REASON, "code": p}]} for p in dict.fromkeys(requester.purpose_of_use)
        ]
    return agent


def _request_path(rule: _Rule, interaction: Interaction) -> str:
    """The REST path of the interaction after the base, from the parts that are known."""
    parts = {
        "{type}": interaction.resource_type,
        "{id}": interaction.resource_id,
        "{version}": interaction.version,
        "{operation}": "$" + interaction.operation.lstrip("$") if interaction.operation else None,
    }
    segments = []
    for segment in rule.path.split("/") if rule.path else ():
        value = parts.get(segment, segment)
        if value:
            segments.append(value)
    if interaction.kind == "search":
        segments.append("_search")
    return "/".join(segments)


def _entities(rule: _Rule, interaction: Interaction, server: Server, patient: str | None) -> list[dict[str, Any]]:
    entities: list[dict[str, Any]] = []
    if interaction.resource_type and interaction.resource_id:
        reference = f"{interaction.resource_type}/{interaction.resource_id}"
        if interaction.version:
            reference += f"/_history/{interaction.version}"
        entities.append(
            {
                "what": {"reference": reference},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
                "role": {"system": OBJECT_ROLE, "code": "4", "display": "Domain Resource"},
            }
        )
    if rule.query and (rule.profile == "Query" or interaction.query):
        method = interaction.http_method or "GET"
        path = _request_path(rule, interaction)
        query: dict[str, Any] = {
            "type": {"system": AUDIT_ENTITY_TYPE, "code": "2", "display": "System Object"},
            "role": {"system": OBJECT_ROLE, "code": "24", "display": "Query"},
            # What was asked of which endpoint, without the parameters (they may name a patient).
            "description": f"{method} {server.base_url.rstrip('/')}/{path}".rstrip("/"),
        }
        if interaction.query:
            query["query"] = base64.b64encode(interaction.query.encode("utf-8")).decode("ascii")
        entities.append(query)
    if patient is not None:
        entities.append(
            {
                "what": {"reference": patient},
                "type": {"system": AUDIT_ENTITY_TYPE, "code": "1", "display": "Person"},
                "role": {"system": OBJECT_ROLE, "code": "1", "display": "Patient"},
            }
        )
    if interaction.request_id:
        entities.append(
            {
                "what": {"identifier": {"value": interaction.request_id}},
                "type": {"system": BALP_ENTITY_TYPE, "code": "XrequestId"},
            }
        )
    return entities


def _profiles(rule: _Rule, event: dict[str, Any], requester: Requester, patient: str | None) -> list[str]:
    """The BALP profiles ``event`` meets (see the module docstring)."""
    profiles: list[str] = []
    if rule.profile and event["outcome"] == "0" and "network" in event["agent"][0]:
        roles = {e["role"]["code"] for e in event.get("entity", ()) if "role" in e}
        has_data = "4" in roles
        has_query = any("query" in e for e in event.get("entity", ()))
        if has_query if rule.profile == "Query" else has_data:
            profiles.append(PROFILE_BASE + ("Patient" if patient else "") + rule.profile)
    if requester.token:
        profiles.append(PROFILE_BASE + "OAUTHaccessTokenUse.Opaque")
    return profiles
