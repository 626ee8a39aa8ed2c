"""Application factory: ``create_app(settings)`` wires storage, search and the REST adapter.

Why a factory: tests, the pre-forked workers and the loader each build their own app or
repository from one ``Settings`` without global state.
"""

from __future__ import annotations

import functools
import pathlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from flask import Flask, Response, g, request

from fhir_server import packaged
from fhir_server.audit import balp
from fhir_server.audit.interactions import RequestAuditor
from fhir_server.audit.recorder import AuditRecorder
from fhir_server.audit.store import AuditStore
from fhir_server.config import Settings
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.notify.channels.amqp import AmqpPublisher
from fhir_server.notify.channels.websocket import WebsocketHub
from fhir_server.notify.dispatcher import Dispatcher, endpoint_host
from fhir_server.notify.outbox import Notification
from fhir_server.notify.retry import RetryPolicy
from fhir_server.notify.subscriptions import Subscription, Subscriptions
from fhir_server.rest.messages import FhirRequest
from fhir_server.search.custom import CustomSearchParameters
from fhir_server.search.engine import SearchEngine
from fhir_server.search.index import index_rows
from fhir_server.search.registry import get_registry
from fhir_server.search.reindex import JobRunner
from fhir_server.security import grants, granular, picker
from fhir_server.security.access import PUBLIC
from fhir_server.security.deid_key import deidentify_key
from fhir_server.security.egress import Egress
from fhir_server.security.fields import FieldCrypto
from fhir_server.security.keys import SigningKeys
from fhir_server.security.service import Security, build_security
from fhir_server.security.signing import key_ring
from fhir_server.security.tenancy import RowAccessRules, access_for
from fhir_server.security.tokens import Principal
from fhir_server.storage.engine import make_engine
from fhir_server.storage.migrate import ensure_schema
from fhir_server.storage.repository import Repository
from fhir_server.terminology import table as terminology_rows
from fhir_server.validation.conformance import ProfileStore, complete_snapshot, enforce_profiles
from fhir_server.validation.rules import ProfileRules, guide_write_hook
from fhir_server.workflow import appointment_responses, follow_up, numbers, scheduling
from fhir_server.workflow.encounters import VirtualEncounters
from fhir_server.workflow.follow_up import FollowUpReminders
from fhir_server.workflow.overdue import OverdueTasks
from fhir_server.workflow.retention import Retention
from fhir_server.workflow.sweeps import Sweeps
from fhir_server.workflow.tasks import TaskRules


@dataclass
class Services:
    settings: Settings
    repo: Repository
    search: SearchEngine
    #: custom SearchParameter resources, kept registered in this process (search/custom.py)
    search_params: CustomSearchParameters
    #: background jobs: ``$reindex`` (search/reindex.py)
    jobs: JobRunner
    #: StructureDefinitions by url and compiled profiles, shared by this worker's requests
    profiles: ProfileStore
    #: OAuth2 clients, signing keys and tokens; None when auth is off (security/service.py)
    security: Security | None = None
    #: the append-only audit store; None when audit is off (audit/store.py)
    audit: AuditStore | None = None
    #: the keys that sign published documents, published at /document-keys (workflow/documents.py)
    document_keys: SigningKeys | None = None
    #: Subscriptions and the delivery of their notifications (notify/); the dispatcher runs in a
    #: server worker (server.py), tests call ``deliver_due`` themselves
    subscriptions: Subscriptions | None = None
    dispatcher: Dispatcher | None = None
    #: what falls due without a request: overdue invitations, follow-up reminders (workflow/sweeps.py);
    #: runs in a server worker (server.py)
    sweeps: Sweeps | None = None


def build_services(settings: Settings, migrate: bool = True) -> Services:
    engine = make_engine(settings.resolved_database_url, pool_size=settings.pool_size)
    if migrate:
        ensure_schema(engine)
    registry = get_registry()
    ring = key_ring(settings.data_dir)
    fields = FieldCrypto(ring)  # people's identifiers, contacts, streets encrypted at rest (R24)

    def indexer(resource: dict[str, Any], rid: int) -> Any:
        return index_rows(fields.index_view(resource), rid, registry=registry)  # blind indexes, no clear values

    repo = Repository(engine, indexer)
    repo.fields = fields
    repo.egress = Egress(deidentify_key(settings.data_dir))  # another institution's data, de-identified
    repo.row_access = RowAccessRules(registry)  # owner, patient, category, labels (security/tenancy.py)
    grants.install(repo)  # who else may see a patient's data (security/grants.py)
    granular.install(repo)  # writes under SMART scopes with a query match them (security/granular.py)
    TaskRules(settings.platform_organization, settings.invitation_hours).install(repo)  # workflow/tasks.py
    Retention(settings.archive_retention_days).install(repo)  # archives and signed reports kept (workflow/retention.py)
    numbers.install(repo)  # consultation numbers (workflow/numbers.py)
    scheduling.install(repo)  # appointments take and free slots (workflow/scheduling.py)
    appointment_responses.install(repo)  # an expert accepts, declines or proposes a time
    VirtualEncounters(settings.meeting_url_template).install(repo)  # a booked session's Encounter
    follow_up.install(repo)  # follow-up plans checked, their next date kept (workflow/follow_up.py)
    search_params = CustomSearchParameters(engine, registry, settings.search_param_refresh)
    search_params.refresh(force=True)  # the stored active SearchParameters, before any write is indexed
    repo.write_hooks["SearchParameter"] = search_params.on_write
    search = SearchEngine(registry)
    profiles = ProfileStore(search, repo, ttl=settings.search_param_refresh)
    repo.write_hooks["StructureDefinition"] = complete_snapshot(profiles)
    terminology_rows.install(repo)  # CodeSystem concept rows, in each write's transaction (terminology/table.py)
    rules = ProfileRules(search, repo, ttl=settings.search_param_refresh)
    repo.write_hooks["ImplementationGuide"] = guide_write_hook(rules)
    repo.write_checks.append(enforce_profiles(profiles, rules))
    if migrate:
        packaged.install(repo)  # our profiles and terminology, stored (packaged.py)
    jobs = JobRunner(
        repo,
        search_params.maybe_refresh,
        batch_size=settings.reindex_batch_size,
        lease=settings.job_lease,
        settle=settings.search_param_refresh,
        poll_interval=settings.job_poll_interval,
    )
    security = build_security(engine, settings, prepare=migrate, ring=ring) if settings.auth else None
    audit = AuditStore(engine) if settings.audit else None
    # documents stay verifiable as long as they are kept: keys rotate yearly and stay published
    document_keys = SigningKeys(engine, rotate_after_days=365, publish_for_s=None, purpose="document")
    if migrate:
        document_keys.ensure_current()  # before workers fork: one key, not one per worker
    subscriptions = Subscriptions(repo, search)
    subscriptions.install()  # every write is matched against them (notify/subscriptions.py)
    dispatcher = Dispatcher(
        repo,
        subscriptions,
        configured_base(settings),
        AmqpPublisher(settings.amqp_url),
        WebsocketHub(),
        RetryPolicy(settings.notify_retry_delays),
        poll=settings.notify_poll,
    )
    subscriptions.on_queued = dispatcher.wake
    sweeps = Sweeps(
        settings.sweep_interval,
        [OverdueTasks(repo, search), FollowUpReminders(repo, search, settings.follow_up_reminder_hours)],
    )
    return Services(
        settings, repo, search, search_params, jobs, profiles, security, audit, document_keys, subscriptions,
        dispatcher, sweeps,
    )  # fmt: skip


@functools.lru_cache(maxsize=16)
def _server(fhir_base: str, host: str) -> balp.Server:
    return balp.Server(name="telefhir", base_url=fhir_base, address=host)


def _auditor(
    recorder: AuditRecorder,
    req: FhirRequest,
    server: balp.Server,
    principal: Principal | None,
    authorization: str | None,
) -> RequestAuditor:
    """Who asked (the token's client, user and institution, the client's address), for the
    request's audit records."""
    token = (authorization or "").partition(" ")[2].strip() or None
    if principal is None:
        requester = _requester(None, None, None, req.client_address, token)
    else:
        requester = _requester(principal.client_id, principal.user, principal.organization, req.client_address, token)
    return RequestAuditor(recorder, requester, server, req.headers.get("x-request-id"))


@functools.lru_cache(maxsize=4096)
def _requester(
    client_id: str | None, user: str | None, organization: str | None, address: str | None, token: str | None
) -> balp.Requester:
    """One ``Requester`` per client, user, address and token: a keep-alive client's requests
    share it, and the audit's caches keyed on it (balp, audit/templates.py) find it by identity
    instead of comparing its fields."""
    return balp.Requester(
        client_id=client_id, user=user, organization=organization, network_address=address, token=token
    )


def _restriction(principal: Principal | None, settings: Settings) -> Any:
    """The request's access limits (security/tenancy.py); None when it may see everything (a
    platform client's scopes with a query still limit it)."""
    access = access_for(principal, settings.platform_organization)
    return None if access.platform and access.scopes is None else access


def audit_spool(settings: Settings) -> pathlib.Path:
    return pathlib.Path(settings.data_dir) / "audit" / "spool"


def configured_base(settings: Settings) -> str:
    """The FHIR base outside any request (notifications): ``--base-url``, else where we listen."""
    if settings.base_url:
        return settings.base_url.rstrip("/")
    scheme = "https" if settings.tls_cert else "http"
    return f"{scheme}://{settings.host}:{settings.port}/fhir"


def base_url(settings: Settings) -> str:
    if settings.base_url:
        return settings.base_url.rstrip("/")
    environ = request.environ
    return _base_from_host(environ.get("wsgi.url_scheme", "http"), environ.get("HTTP_HOST", ""), request.script_root)


@functools.lru_cache(maxsize=64)
def _base_from_host(scheme: str, host: str, script_root: str) -> str:
    """The FHIR base a request's Host names (werkzeug rebuilds ``host_url`` on every call)."""
    return f"{request.host_url.rstrip('/')}/fhir" if not host else f"{scheme}://{host}{script_root}/fhir"


def create_app(settings: Settings, services: Services | None = None) -> Flask:
    from fhir_server.rest import adapter
    from fhir_server.rest.metrics import Metrics
    from fhir_server.rest.routes import Route

    services = services or build_services(settings)
    app = Flask("fhir_server")
    app.config["SERVICES"] = services
    metrics = Metrics()

    security = services.security
    recorder = AuditRecorder(audit_spool(settings)) if services.audit is not None else None
    app.config["AUDIT_RECORDER"] = recorder
    if recorder is not None and services.dispatcher is not None:
        notified = balp.Server(name="telefhir", base_url=configured_base(settings), address=settings.host)

        def audit_notification(sub: Subscription, row: Notification, delivered: bool, error: str | None) -> None:
            """A notification delivered, or given up after its retries (BALP-style Export record)."""
            requester = balp.Requester(
                organization=f"Organization/{sub.owner}" if sub.owner else None, network_address=endpoint_host(sub)
            )
            interaction = balp.Interaction(
                "notification", 200 if delivered else 502, datetime.now(UTC), "Subscription", sub.id, detail=error
            )
            recorder.record(interaction, requester, notified)

        services.dispatcher.audit = audit_notification

    def make_context(req: FhirRequest, route: Route) -> RequestContext:
        """The request's context, once its token is checked (401 without a valid one)."""
        principal = None
        auditor = None
        authorization = req.headers.get("authorization")
        fhir_base = base_url(settings)
        if security is not None and route.interaction not in PUBLIC:
            try:
                principal = security.authenticate(authorization)
                security.check_binding(principal, req)
                security.check_signature(principal, req)
            except FhirError as err:
                if recorder is not None:
                    auditor = _auditor(recorder, req, _server(fhir_base, settings.host), None, authorization)
                    auditor.interaction(route.interaction, req, err.status, err.diagnostics, None)
                raise
        if recorder is not None:
            auditor = _auditor(recorder, req, _server(fhir_base, settings.host), principal, authorization)
        services.search_params.maybe_refresh()  # a time check; a query at most once per interval
        return RequestContext(
            services.repo,
            settings,
            services.search,
            base_url(settings),
            jobs=services.jobs,
            profiles=services.profiles,
            principal=principal,
            auditor=auditor,
            access=_restriction(principal, settings) if security is not None else None,
            document_keys=services.document_keys,
        )

    adapter.register(app, make_context, settings.bundle_slots)
    if services.dispatcher is not None:  # websocket subscriptions (notify/channels/websocket.py)
        from fhir_server.rest import websocket_http

        websocket_http.register(
            app, services.repo.engine, services.dispatcher.hub, services.dispatcher.wake,
            services.subscriptions.queue_handshake,
        )  # fmt: skip
    if security is not None:
        from fhir_server.rest import auth_http

        def audit_auth(
            kind: str, status: int, detail: str | None, client_id: str | None, user: str | None, address: str | None
        ) -> None:
            """A token request, login, login failure or logout, as a User Authentication record."""
            if recorder is None:
                return
            requester = balp.Requester(client_id=client_id, user=user, network_address=address)
            auditor = RequestAuditor(recorder, requester, _server(base_url(settings), settings.host), None)
            auditor.authentication(kind, status, detail)

        def can_see(principal: Principal, res_type: str, res_id: str) -> bool:
            with services.repo.session(access=_restriction(principal, settings)) as session:
                found = session.read_current(res_type, res_id)
            return found is not None and not found.deleted

        def find_patients(principal: Principal, name: str, after: int | None) -> picker.PatientPage:
            """The standalone launch's patient picker: Patients the person's own search would find."""
            with services.repo.session(access=_restriction(principal, settings)) as session:
                return picker.find_patients(session, services.search, name, after)

        auth_http.register(app, security, lambda: base_url(settings), audit_auth, can_see, find_patients)

    @app.before_request
    def _start() -> None:
        g.started = time.perf_counter()

    @app.after_request
    def _observe(resp: Any) -> Any:
        metrics.observe(request.method, resp.status_code, time.perf_counter() - g.get("started", time.perf_counter()))
        return resp

    @app.get("/healthz")
    def healthz() -> Response:
        return Response("ok\n", mimetype="text/plain")

    @app.get("/readyz")
    def readyz() -> Response:
        try:
            services.repo.ping()
        except Exception as exc:  # noqa: BLE001 - any database failure means not ready
            return Response(f"database unreachable: {exc.__class__.__name__}\n", status=503, mimetype="text/plain")
        return Response("ready\n", mimetype="text/plain")

    @app.get("/document-keys")
    def document_keys() -> Response:
        """The public keys that verify published documents' signatures (a JWKS)."""
        assert services.document_keys is not None
        body = orjson.dumps(services.document_keys.jwks())
        return Response(body, mimetype="application/jwk-set+json", headers={"Cache-Control": "max-age=300"})

    @app.get("/metrics")
    def metrics_endpoint() -> Response:
        return Response(metrics.render(), mimetype="text/plain; version=0.0.4")

    return app
