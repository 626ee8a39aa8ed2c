"""Subscriptions: what a ``Subscription`` resource asks for, and the events it is owed.

Two kinds, both R4 resources (http://hl7.org/fhir/R4/subscription.html):

* **criteria** — ``criteria`` is a search (``Task?owner=Organization/b``): every create or update
  of a resource that matches it afterwards is an event;
* **topic** (Subscriptions Backport IG) — ``criteria`` is a topic's canonical URL (notify/topics.py),
  narrowed by ``backport-filter-criteria`` searches on the topic's resource type; the topic's
  trigger decides which changes are events.

Channels: ``rest-hook`` (an HTTP POST), ``websocket`` (a socket bound to the subscription) and
``amqp`` (a message to the platform's RabbitMQ: ``channel.type`` carries the backport
``backport-channel-type`` extension with code ``amqp``; the endpoint is
``amqp:///<exchange>/<routing key>``). Email, SMS and ``message`` are refused (422).

Handshake and heartbeat (Subscriptions Backport, channels): a topic subscription on rest-hook or
amqp starts ``requested``; a ``handshake`` notification is queued with it, and the dispatcher turns
it ``active`` once the handshake is delivered, or ``error`` once the handshake's retries are spent
(notify/retry.py). Only the server activates it: a client's ``active`` on a subscription that is
not active yet, or whose channel it changes, is ``requested`` again. Until then no event is
matched for it. A websocket subscription is active at once, and its handshake goes out on each
socket that binds it; an R4 criteria subscription is active at once (R4 has no handshake). With
the ``backport-heartbeat-period`` extension on ``channel`` (seconds), a ``heartbeat``
notification goes out when nothing was sent to the subscription for that long
(notify/dispatcher.py).

Why matching happens in the writing transaction: the outbox row of each event is committed with
the change it announces (notify/outbox.py), so neither exists without the other, whichever door
the change came in by. A subscription sees what whoever wrote it may see: the server keeps their
access on it (``subscription-access``, :func:`record_access`) and matches are searched under it
(security/tenancy.py), so nothing they could not read is announced to them; one written before
that rule sees what its institution's system sees.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlparse

from sqlalchemy import select

from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.model import get_model
from fhir_server.notify import outbox
from fhir_server.notify.prefilter import may_match
from fhir_server.notify.topics import TOPICS, Topic
from fhir_server.security.tenancy import Access, access_of_basis, basis_json, institution_access
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.storage.schema import resources
from fhir_server.util.fhirdate import parse_range

log = logging.getLogger(__name__)

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/"
FILTER_URL = BACKPORT + "backport-filter-criteria"
PAYLOAD_URL = BACKPORT + "backport-payload-content"
CHANNEL_TYPE_URL = BACKPORT + "backport-channel-type"
HEARTBEAT_URL = BACKPORT + "backport-heartbeat-period"
#: the channels whose endpoint a handshake verifies before events flow (the server sends to it)
HANDSHAKE_CHANNELS = ("rest-hook", "amqp")
#: session.scratch key: the Subscription the dispatcher activates after its handshake
ACTIVATING = "subscription-handshake-done"
#: the access of whoever wrote the Subscription (security/tenancy.py ``basis_json``), kept on it by
#: the server: what it notifies is what they may see, within their roles and scopes
ACCESS_URL = "http://fhir.telefhir.cn/StructureDefinition/subscription-access"
CHANNEL_SYSTEM = "http://fhir.telefhir.cn/CodeSystem/subscription-channel-type"
CHANNELS = ("rest-hook", "websocket", "amqp")
PAYLOADS = ("empty", "id-only", "full-resource")


@dataclass(frozen=True)
class Subscription:
    id: str
    #: the institution whose view it has (the row's owner); None: the platform's
    owner: str | None
    status: str
    #: None: an R4 criteria subscription
    topic: Topic | None
    resource_type: str
    #: search parameters an event's resource must match (criteria, or the topic's filters)
    filters: tuple[tuple[str, str], ...]
    payload: str
    channel: str
    endpoint: str | None
    headers: tuple[str, ...]
    #: R4 ``channel.payload`` (a criteria subscription's rest-hook PUTs the resource when set)
    mime: str | None
    end_us: int | None
    #: seconds without any notification after which a heartbeat is sent (None: never)
    heartbeat_s: int | None = None
    #: the ``subscription-access`` extension's JSON (None: written by the platform or before it)
    access_basis: str | None = None

    def view(self) -> Access | None:
        """What it may notify: the access of whoever wrote it, else its institution's system's
        (None: the platform's, unrestricted)."""
        return _view(self.owner, self.access_basis)

    def live(self, now_us: int) -> bool:
        return self.status == "active" and (self.end_us is None or now_us < self.end_us)

    @property
    def needs_handshake(self) -> bool:
        return self.topic is not None and self.channel in HANDSHAKE_CHANNELS


# -- reading a Subscription resource ---------------------------------------------------------------
def parse(resource: dict[str, Any], res_id: str, owner: str | None) -> Subscription:
    """The subscription a resource asks for; 422 naming what this server cannot do."""
    criteria = resource.get("criteria")
    if not isinstance(criteria, str) or not criteria.strip():
        raise _invalid("criteria is required: a search (Type?params) or a topic's canonical URL", "criteria")
    topic = TOPICS.get(criteria)
    filters: list[tuple[str, str]] = []
    if topic is not None:
        res_type = topic.resource_type
        for ext in _extensions(resource.get("_criteria")):
            if ext.get("url") == FILTER_URL:
                filters += _search(str(ext.get("valueString", "")), res_type, "criteria.extension")
    elif "://" in criteria.split("?")[0]:
        known = ", ".join(sorted(TOPICS))
        raise _invalid(f"criteria {criteria!r} is not a topic of this server (topics: {known})", "criteria")
    else:
        res_type = criteria.split("?", 1)[0]
        filters = _search(criteria, None, "criteria")
    channel = resource.get("channel") if isinstance(resource.get("channel"), dict) else {}
    kind = _channel_type(channel)
    endpoint = channel.get("endpoint") if isinstance(channel.get("endpoint"), str) else None
    _check_endpoint(kind, endpoint)
    mime = channel.get("payload") if isinstance(channel.get("payload"), str) else None
    payload = next(
        (str(e.get("valueCode")) for e in _extensions(channel.get("_payload")) if e.get("url") == PAYLOAD_URL),
        "id-only" if mime else "empty",
    )
    if payload not in PAYLOADS:
        raise _invalid(
            f"payload content {payload!r} is not one of {', '.join(PAYLOADS)}", "Subscription.channel.payload"
        )
    end = resource.get("end")
    try:
        end_us = parse_range(end)[0] if isinstance(end, str) else None
    except ValueError:
        raise _invalid(f"end {end!r} is not an instant", "Subscription.end") from None
    return Subscription(
        id=res_id,
        owner=owner,
        status=str(resource.get("status")),
        topic=topic,
        resource_type=res_type,
        filters=tuple(filters),
        payload=payload,
        channel=kind,
        endpoint=endpoint,
        headers=tuple(h for h in channel.get("header") or () if isinstance(h, str)),
        mime=mime,
        end_us=end_us,
        heartbeat_s=_heartbeat(channel, topic is not None),
        access_basis=next(
            (str(e.get("valueString")) for e in _extensions(resource) if e.get("url") == ACCESS_URL), None
        ),
    )


@functools.lru_cache(maxsize=256)
def _view(owner: str | None, basis: str | None) -> Access | None:
    if basis is None:
        return institution_access(owner)
    try:
        return access_of_basis(fjson.loads(basis))
    except ValueError:
        log.error("a Subscription of %s has an unreadable %s: it notifies nothing", owner, ACCESS_URL)
        return NOTHING


#: sees no row: what a subscription whose recorded access cannot be read notifies
NOTHING = Access(organization="", readable=0, clearance=0, minors=False)


def subscribed_type(resource: Any) -> str | None:
    """The resource type a Subscription resource asks to be told of (None: it names none)."""
    criteria = resource.get("criteria") if isinstance(resource, dict) else None
    if not isinstance(criteria, str):
        return None
    topic = TOPICS.get(criteria)
    if topic is not None:
        return topic.resource_type
    res_type = criteria.split("?", 1)[0]
    return res_type if res_type and "://" not in res_type else None


def record_access(session: Session, resource: dict[str, Any], current: StoredVersion | None) -> None:
    """Put the writer's access on ``resource`` (what a client sent in its place is dropped). A
    write with unrestricted access (the platform's clients, the server's own status changes; an
    access built from no token) keeps what the stored version has: it never widens what an
    institution's subscription sees."""
    kept = [e for e in resource.get("extension") or () if not (isinstance(e, dict) and e.get("url") == ACCESS_URL)]
    basis = session.access.basis if session.access is not None else None
    if basis is not None:
        kept.append({"url": ACCESS_URL, "valueString": fjson.dumps(basis_json(basis)).decode()})
    else:
        stored = _content(current)
        kept += [e for e in _extensions(stored) if e.get("url") == ACCESS_URL] if stored else []
    if kept:
        resource["extension"] = kept
    else:
        resource.pop("extension", None)


def _heartbeat(channel: dict[str, Any], topic: bool) -> int | None:
    for ext in _extensions(channel):
        if ext.get("url") == HEARTBEAT_URL:
            value = ext.get("valueUnsignedInt")
            if not topic:
                raise _invalid("a heartbeat is sent to topic subscriptions only", "Subscription.channel.extension")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _invalid("backport-heartbeat-period is a number of seconds, at least 1", "Subscription.channel")
            return value
    return None


def _search(text: str, res_type: str | None, where: str) -> list[tuple[str, str]]:
    """``Type?a=b&c=d`` as parameters, its type checked against ``res_type`` (a topic's)."""
    base, _, query = text.partition("?")
    if not base or base not in get_model().resource_types:
        raise _invalid(f"{text!r} does not start with a resource type (Type?params)", where)
    if res_type is not None and base != res_type:
        raise _invalid(f"{text!r}: this topic's events are {res_type} resources", where)
    params = parse_qsl(query, keep_blank_values=True)
    for name, _ in params:
        if name.split(":")[0] in ("_sort", "_count", "_include", "_revinclude", "_summary", "_elements", "_total"):
            raise _invalid(f"{text!r}: {name} says how to return results, not which changes matter", where)
    return params


def _channel_type(channel: dict[str, Any]) -> str:
    code = channel.get("type")
    for ext in _extensions(channel.get("_type")):
        coding = ext.get("valueCoding") if ext.get("url") == CHANNEL_TYPE_URL else None
        if isinstance(coding, dict):
            if coding.get("system") == CHANNEL_SYSTEM and coding.get("code") == "amqp":
                return "amqp"
            raise _invalid(
                f"channel type {coding.get('system')}|{coding.get('code')} is not supported",
                "Subscription.channel.type",
            )
    if code not in ("rest-hook", "websocket"):
        raise _invalid(
            f"channel type {code!r} is not supported: rest-hook, websocket, or amqp "
            f"(the backport-channel-type extension with {CHANNEL_SYSTEM}|amqp)",
            "Subscription.channel.type",
        )
    return str(code)


def _check_endpoint(kind: str, endpoint: str | None) -> None:
    if kind == "rest-hook":
        parsed = urlparse(endpoint or "")
        if parsed.scheme not in ("http", "https") or not parsed.netloc:
            raise _invalid("a rest-hook channel needs an http(s) endpoint", "Subscription.channel.endpoint")
    elif kind == "amqp":
        if amqp_address(endpoint) is None:
            raise _invalid(
                "an amqp channel's endpoint is amqp:///<exchange>/<routing key> (on the platform's broker)",
                "Subscription.channel.endpoint",
            )


def amqp_address(endpoint: str | None) -> tuple[str, str] | None:
    """(exchange, routing key) of ``amqp:///exchange/key``."""
    parsed = urlparse(endpoint or "")
    parts = parsed.path.strip("/").split("/", 1)
    if parsed.scheme != "amqp" or parsed.netloc or len(parts) != 2 or not all(parts):
        return None
    return parts[0], parts[1]


def _extensions(element: Any) -> list[dict[str, Any]]:
    found = element.get("extension") if isinstance(element, dict) else None
    return [e for e in found if isinstance(e, dict)] if isinstance(found, list) else []


def _invalid(message: str, where: str) -> FhirError:
    return FhirError("processing", f"Subscription: {message}", where)


# -- the active subscriptions, and matching changes ------------------------------------------------
class Subscriptions:
    """The active subscriptions of this process (reloaded when another worker may have changed
    them) and the matching of each write transaction's changes against them."""

    def __init__(self, repo: Repository, search: Any, refresh_interval: float = 0.5) -> None:
        self.repo = repo
        self.search = search
        self.refresh_interval = refresh_interval
        self._by_type: dict[str, list[Subscription]] = {}
        self._next_load = 0.0
        self._lock = threading.Lock()
        #: called after a transaction that queued notifications commits (wakes the dispatcher)
        self.on_queued: Callable[[], None] | None = None

    def install(self) -> None:
        self.repo.write_hooks["Subscription"] = self.before_write
        self.repo.after_write.setdefault("Subscription", []).append(self._handshake)
        self.repo.after_any_write.append(self.after_write)

    # ---- the Subscription resources ---------------------------------------------------------
    def before_write(
        self, session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
    ) -> None:
        """Refuse what cannot be served (422); set the status the handshake rule gives."""
        self._next_load = 0.0  # this process sees the change at its next transaction
        if resource is None:
            return
        record_access(session, resource, current)
        sub = parse(resource, res_id, None)
        try:
            self.search.search(session, sub.resource_type, [*sub.filters, ("_id", "-")], 1)
        except FhirError as err:
            raise _invalid(f"its search cannot run here: {err.diagnostics}", "Subscription.criteria") from None
        status = resource.get("status")
        if status not in ("requested", "active") or session.scratch.get(ACTIVATING) == res_id:
            return
        if sub.needs_handshake:
            stored = _content(current) if current is not None and not current.deleted else None
            verified = stored is not None and stored.get("status") == "active"
            if status == "active" and verified and stored.get("channel") == resource.get("channel"):  # type: ignore[union-attr]
                return
            resource["status"] = "requested"  # the handshake activates it (notify/dispatcher.py)
        else:
            resource["status"] = "active"
        resource.pop("error", None)

    def _handshake(self, session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
        """Queue the handshake of a subscription that became ``requested``, with its write."""
        content = _content(written)
        if written.deleted or content is None or content.get("status") != "requested":
            return
        before = _content(previous) if previous is not None and not previous.deleted else None
        if (
            before is not None
            and before.get("status") == "requested"
            and before.get("channel") == content.get("channel")
        ):
            return  # its handshake is already on its way
        sub = parse(content, written.res_id, written.tenant)
        if sub.needs_handshake:
            outbox.enqueue(session, sub, "handshake", None, sub.owner)
            if self.on_queued is not None:
                session.after_commit.append(self.on_queued)

    def active(self, res_type: str) -> list[Subscription]:
        if time.monotonic() >= self._next_load:
            self._load()
        return self._by_type.get(res_type, [])

    def queue_handshake(self, sub_id: str) -> None:
        """A socket bound to a topic subscription: its handshake goes out on it (delivered by the
        dispatcher, like any notification)."""
        sub = self.get(sub_id)
        if sub is None or sub.topic is None:
            return
        with self.repo.session(write=True, side=True) as session:
            outbox.enqueue(session, sub, "handshake", None, sub.owner)

    def heartbeats(self) -> list[Subscription]:
        """The active subscriptions that asked for heartbeats."""
        self.active("")  # reloads when due
        return [s for subs in self._by_type.values() for s in subs if s.heartbeat_s]

    def get(self, sub_id: str) -> Subscription | None:
        """A subscription as stored now (any status), or None."""
        with self.repo.side_engine.connect() as conn:
            row = conn.execute(
                select(resources.c.content, resources.c.tenant).where(
                    resources.c.res_type == "Subscription", resources.c.res_id == sub_id, resources.c.deleted.is_(False)
                )
            ).first()
        if row is None:
            return None
        try:
            return parse(fjson.loads(row.content), sub_id, row.tenant)
        except FhirError:
            return None

    def _load(self) -> None:
        with self._lock:
            if time.monotonic() < self._next_load:
                return
            found: dict[str, list[Subscription]] = {}
            with self.repo.side_engine.connect() as conn:
                rows = conn.execute(
                    select(resources.c.res_id, resources.c.content, resources.c.tenant).where(
                        resources.c.res_type == "Subscription", resources.c.deleted.is_(False)
                    )
                )
                for row in rows:
                    try:
                        sub = parse(fjson.loads(row.content), row.res_id, row.tenant)
                    except FhirError:
                        continue  # stored before a rule of ours existed: not served
                    if sub.status == "active":
                        found.setdefault(sub.resource_type, []).append(sub)
            self._by_type = found
            self._next_load = time.monotonic() + self.refresh_interval

    # ---- the changes of a write transaction -------------------------------------------------
    def after_write(self, session: Session, written: StoredVersion, previous: StoredVersion | None) -> None:
        if written.deleted or not session.notify or not self.active(written.res_type):
            return
        changes = session.scratch.setdefault("notify", [])
        origin = session.access.organization if session.access is not None else None
        changes.append((written, previous, origin))
        if len(changes) == 1:
            session.before_commit["notify"] = lambda: self._match_last(session)

    def _match_last(self, session: Session) -> None:
        while session.before_commit:  # the others first: grants rebuilt, numbers assigned
            _key, task = session.before_commit.popitem()
            task()
        changes = session.scratch.pop("notify", [])
        queued = 0
        now = outbox.now()
        contents = {id(w): fjson.loads(w.content or b"{}") for w, _, _ in changes}  # each parsed once
        before = {id(w): _content(p) for w, p, _ in changes}
        matches = _SharedMatches(self, session)
        for sub in [s for t in {w.res_type for w, _, _ in changes} for s in self.active(t) if s.live(now)]:
            candidates = [
                (w, p, o)
                for w, p, o in changes
                if w.res_type == sub.resource_type
                and may_match(self.search.registry, w.res_type, sub.filters, contents[id(w)])
            ]
            if sub.topic is not None:
                candidates = [(w, p, o) for w, p, o in candidates if sub.topic.trigger(before[id(w)], contents[id(w)])]
            if not candidates:
                continue
            matched = matches.of(sub, [w.res_id for w, _, _ in candidates])
            for written, _previous, origin in candidates:
                if written.res_id in matched:
                    outbox.enqueue(session, sub, "event-notification", written.location, origin)
                    queued += 1
        if queued and self.on_queued is not None:
            session.after_commit.append(self.on_queued)

    def _matching(self, session: Session, sub: Subscription, ids: list[str]) -> set[str]:
        with session.acting(sub.view()):
            return self._search_ids(session, sub.resource_type, list(sub.filters), ids)

    def _search_ids(self, session: Session, res_type: str, filters: list[tuple[str, str]], ids: list[str]) -> set[str]:
        page = self.search.search(session, res_type, [*filters, ("_id", ",".join(ids))], len(ids))
        return {v.res_id for v in page.versions}


class _SharedMatches:
    """One transaction's matching, sharing the search among subscriptions with the same filters.

    Why: each institution subscribing to the same topic with the same filter (every institution's
    ``Observation?status=final`` on the opinion topic) made every opinion one search per
    institution. Filters without chains, ``_has`` or ``_list`` depend on the resource alone, so they are
    searched once, unrestricted, and each subscriber keeps the matches its institution can see —
    the same answer as searching under its access, for the price of one indexed lookup each.
    Filters that reach other resources are searched per subscriber, under its access.
    """

    def __init__(self, subscriptions: Subscriptions, session: Session) -> None:
        self.subscriptions = subscriptions
        self.session = session
        self.found: dict[tuple[str, tuple[tuple[str, str], ...]], dict[str, bool]] = {}

    def of(self, sub: Subscription, ids: list[str]) -> set[str]:
        if any(_reaches_beyond(name) for name, _ in sub.filters):
            return self.subscriptions._matching(self.session, sub, ids)
        known = self.found.setdefault((sub.resource_type, sub.filters), {})
        unknown = [i for i in ids if i not in known]
        if unknown:
            with self.session.unrestricted():
                hits = self.subscriptions._search_ids(self.session, sub.resource_type, list(sub.filters), unknown)
            known.update({i: i in hits for i in unknown})
        hits = [i for i in ids if known[i]]
        return _visible_to(self.session, sub, hits) if hits else set()


#: parameters about the resource itself, whatever their prefix
_OWN_SPECIALS = frozenset({"_id", "_tag", "_profile", "_security", "_lastUpdated", "_source"})


def _reaches_beyond(name: str) -> bool:
    """A filter whose answer depends on other resources (chains, ``_has``, ``_list`` …)."""
    base = name.split(":", 1)[0]
    return "." in name or (base.startswith("_") and base not in _OWN_SPECIALS)


def _visible_to(session: Session, sub: Subscription, ids: list[str]) -> set[str]:
    """Of ``ids``, those the subscription may tell of (:meth:`Subscription.view`)."""
    access = sub.view()
    query = select(resources.c.res_id).where(
        resources.c.res_type == sub.resource_type, resources.c.res_id.in_(ids), resources.c.deleted.is_(False)
    )
    predicate = access.visible(resources) if access is not None else None
    if predicate is not None:
        query = query.where(predicate)
    return set(session.conn.execute(query).scalars())


def _content(version: StoredVersion | None) -> dict[str, Any] | None:
    if version is None or version.deleted or version.content is None:
        return None
    return dict(fjson.loads(version.content))
