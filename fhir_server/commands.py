"""Sub-commands of ``fhir-server`` (click), kept apart from ``cli.py`` so gevent patches first."""

from __future__ import annotations

import functools
import logging
import pathlib
import sys

import click

from fhir_server.config import Settings

_DEFAULTS = Settings()
#: every option reads FHIR_SERVER_<OPTION> (ARCHITECTURE.md), not click's FHIR_SERVER_<COMMAND>_<OPTION>
_ENV = {"auto_envvar_prefix": "FHIR_SERVER"}


def _database_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--database-url",
        default=_DEFAULTS.database_url,
        show_default=True,
        help="sqlite:///path or postgresql+psycopg://user@host/db",
    )(f)


def _data_dir_option(f):  # type: ignore[no-untyped-def]
    return click.option(
        "--data-dir",
        default=str(_DEFAULTS.data_dir),
        show_default=True,
        help="Folder for the SQLite file and stored files",
    )(f)


def _settings(database_url: str, data_dir: str, **extra: object) -> Settings:
    data = pathlib.Path(data_dir)
    if database_url == _DEFAULTS.database_url:
        database_url = f"sqlite:///{data / 'fhir.db'}"
    return Settings(database_url=database_url, data_dir=data).with_overrides(**extra)


@click.group()
@click.option("--log-level", default="INFO", show_default=True)
def cli(log_level: str) -> None:
    """FHIR R4 server for teleconsultation."""
    from fhir_server.config import LOG_FORMAT

    logging.basicConfig(level=log_level.upper(), stream=sys.stderr, format=LOG_FORMAT)


@cli.command(context_settings=_ENV)
@click.option("--host", default=_DEFAULTS.host, show_default=True)
@click.option("--port", default=_DEFAULTS.port, show_default=True, type=int)
@_database_option
@_data_dir_option
@click.option("--workers", default=_DEFAULTS.workers, show_default=True, type=int, help="Pre-forked worker processes")
@click.option("--base-url", default=None, help="Public FHIR base URL (default: from the request)")
@click.option("--access-log/--no-access-log", default=True, show_default=True)
@click.option(
    "--pool-size",
    default=_DEFAULTS.pool_size,
    show_default=True,
    type=click.IntRange(min=1),
    help="PostgreSQL connections per worker (workers x pool size must fit max_connections)",
)
@click.option(
    "--bundle-slots",
    default=_DEFAULTS.bundle_slots,
    show_default=True,
    type=click.IntRange(min=1),
    help="Batch/transaction Bundles run at once per worker (others wait); bounds memory",
)
@click.option(
    "--auth",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="OAuth2/SMART access control; 'off' is a development flag only (logged as a warning)",
)
@click.option("--bootstrap-client", default=None, help="id:secret of a client allowed system/*.* (made at start)")
@click.option("--token-lifetime", default=_DEFAULTS.token_lifetime, show_default=True, type=click.IntRange(min=60))
@click.option("--tls-cert", default=None, help="serve HTTPS with this certificate chain (PEM)")
@click.option("--tls-key", default=None, help="the private key of --tls-cert (PEM)")
@click.option("--tls-client-ca", default=None, help="ask clients for certificates signed by this CA (mutual TLS)")
@click.option("--tls-require-client-cert", is_flag=True, help="refuse connections without a client certificate")
@click.option("--audit-repository", default=None, help="ITI-20 export: tls://host:port or udp://host:port")
@click.option("--audit-repository-ca", default=None, help="CA of the audit repository's certificate")
@click.option("--audit-client-cert", default=None, help="our certificate for the audit repository (mutual TLS)")
@click.option("--audit-client-key", default=None, help="the key of --audit-client-cert")
@click.option(
    "--platform-organization",
    default=None,
    help="the institution that runs the platform and pre-reviews consultations (Organization/<id>)",
)
@click.option(
    "--audit-interval",
    default=_DEFAULTS.audit_interval,
    show_default=True,
    type=click.FloatRange(min=0.01, max=60),
    help="seconds between the audit writer's passes: how soon a record can be searched (each pass has a cost)",
)
@click.option(
    "--amqp-url",
    default=_DEFAULTS.amqp_url,
    show_default=True,
    help="the RabbitMQ broker of amqp subscription channels",
)
@click.option(
    "--notify-retry-delays",
    default=",".join(f"{d:g}" for d in _DEFAULTS.notify_retry_delays),
    show_default=True,
    help="seconds before each retry of a failed notification, comma-separated (then a failure notice)",
)
@click.option(
    "--invitation-hours",
    default=_DEFAULTS.invitation_hours,
    show_default=True,
    type=click.FloatRange(min=0.01),
    help="hours a participating institution has to answer a multi-centre invitation",
)
@click.option(
    "--sweep-interval",
    "--overdue-sweep-interval",
    "sweep_interval",
    default=_DEFAULTS.sweep_interval,
    show_default=True,
    type=click.FloatRange(min=0),
    help="seconds between looks for what fell due: overdue invitations (flagged and reminded), "
    "follow-ups to remind; 0: never",
)
@click.option(
    "--follow-up-reminder-hours",
    default=_DEFAULTS.follow_up_reminder_hours,
    show_default=True,
    type=click.FloatRange(min=0),
    help="hours before a planned follow-up (CarePlan) is due that its reminder is sent",
)
@click.option(
    "--archive-retention-days",
    default=_DEFAULTS.archive_retention_days,
    show_default=True,
    type=click.IntRange(min=1096),
    help="days a consultation's archive and a signed report are kept at least (three years or more)",
)
@click.option(
    "--meeting-url-template",
    default=None,
    help="the conferencing service's room address for booked consultations, e.g. https://meet.example.cn/{room}",
)
@click.option(
    "--demo",
    is_flag=True,
    help="store a bilingual demo network once (institutions, experts, patients, consultations in every "
    "state) and demo accounts with a public password: never on a production database",
)
@click.option(
    "--audit",
    type=click.Choice(["on", "off"]),
    default="on",
    show_default=True,
    help="BALP audit records of every interaction; 'off' is a development flag only (logged as a warning)",
)
def serve(
    host: str,
    port: int,
    database_url: str,
    data_dir: str,
    workers: int,
    base_url: str | None,
    access_log: bool,
    pool_size: int,
    bundle_slots: int,
    auth: str,
    bootstrap_client: str | None,
    token_lifetime: int,
    tls_cert: str | None,
    tls_key: str | None,
    tls_client_ca: str | None,
    tls_require_client_cert: bool,
    audit_repository: str | None,
    audit_repository_ca: str | None,
    audit_client_cert: str | None,
    audit_client_key: str | None,
    platform_organization: str | None,
    audit_interval: float,
    amqp_url: str,
    notify_retry_delays: str,
    invitation_hours: float,
    sweep_interval: float,
    follow_up_reminder_hours: float,
    archive_retention_days: int,
    meeting_url_template: str | None,
    demo: bool,
    audit: str,
) -> None:
    """Serve FHIR over HTTP."""
    from fhir_server.server import serve as run

    settings = _settings(
        database_url,
        data_dir,
        host=host,
        port=port,
        workers=workers,
        base_url=base_url,
        access_log=access_log,
        pool_size=pool_size,
        bundle_slots=bundle_slots,
        auth=auth == "on",
        bootstrap_client=bootstrap_client,
        token_lifetime=token_lifetime,
        audit=audit == "on",
        tls_cert=tls_cert,
        tls_key=tls_key,
        tls_client_ca=tls_client_ca,
        tls_require_client_cert=tls_require_client_cert,
        audit_repository=audit_repository,
        audit_repository_ca=audit_repository_ca,
        audit_client_cert=audit_client_cert,
        audit_client_key=audit_client_key,
        audit_interval=audit_interval,
        platform_organization=platform_organization,
        amqp_url=amqp_url,
        notify_retry_delays=_delays(notify_retry_delays),
        invitation_hours=invitation_hours,
        sweep_interval=sweep_interval,
        follow_up_reminder_hours=follow_up_reminder_hours,
        archive_retention_days=archive_retention_days,
        demo=demo,
        meeting_url_template=meeting_url_template,
    )
    if meeting_url_template is not None and "{room}" not in meeting_url_template:
        raise click.UsageError("--meeting-url-template: the address needs {room}, where the room's name goes")
    if demo and settings.platform_organization is None:
        from fhir_server.demo import CENTRE

        settings = settings.with_overrides(platform_organization=f"Organization/{CENTRE}")
    if audit_repository:
        from fhir_server.audit.export import repository_target

        try:
            repository_target(settings)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
    if bool(tls_cert) != bool(tls_key):
        raise click.UsageError("--tls-cert and --tls-key go together")
    if tls_require_client_cert and not tls_client_ca:
        raise click.UsageError("--tls-require-client-cert needs --tls-client-ca")
    if not settings.audit:
        logging.getLogger("fhir_server").warning("audit is OFF: interactions are not recorded (a development flag)")
    if not settings.auth:
        logging.getLogger("fhir_server").warning(
            "auth is OFF: every request is served without a token (a development flag; never in production)"
        )
    run(settings)


def _delays(text: str) -> tuple[float, ...]:
    try:
        delays = tuple(float(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise click.UsageError(f"--notify-retry-delays: {text!r} is not a list of seconds") from None
    if not delays or any(d < 0 for d in delays):
        raise click.UsageError("--notify-retry-delays: give one or more non-negative delays")
    return delays


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command(context_settings=_ENV)
@_database_option
@_data_dir_option
def upgrade(database_url: str, data_dir: str) -> None:
    """Apply schema migrations up to the newest."""
    from fhir_server.storage.engine import make_engine
    from fhir_server.storage.migrate import current_revision
    from fhir_server.storage.migrate import upgrade as run

    settings = _settings(database_url, data_dir)
    engine = make_engine(settings.resolved_database_url)
    run(engine)
    click.echo(f"database at revision {current_revision(engine)}")
    from fhir_server.app import build_services
    from fhir_server.security.backfill import backfill

    services = build_services(settings, migrate=False)
    done = backfill(services.repo)
    if done:
        click.echo(f"access columns computed for {done} stored resources")


@db.command(context_settings=_ENV)
@_database_option
@_data_dir_option
@click.option("--type", "res_type", default=None, help="Reindex only this resource type (default: all)")
@click.option(
    "--batch-size",
    default=_DEFAULTS.reindex_batch_size,
    show_default=True,
    type=click.IntRange(min=1, max=10_000),
    help="Resources per transaction",
)
@click.option("--progress/--no-progress", default=True, show_default=True)
def reindex(database_url: str, data_dir: str, res_type: str | None, batch_size: int, progress: bool) -> None:
    """Recompute the search index (after adding custom SearchParameters), resumably.

    Runs a job of the `jobs` table in this process, like `POST [base]/$reindex` does in the
    server. An interrupted run (Ctrl-C) gives its job back; running the command again for the
    same type resumes it after the last resource done.
    """
    from tqdm import tqdm

    from fhir_server.app import build_services
    from fhir_server.model import get_model

    if res_type is not None and res_type not in get_model().resource_types - {"Resource", "DomainResource"}:
        raise click.BadParameter(f"{res_type!r} is not a resource type", param_hint="--type")
    services = build_services(_settings(database_url, data_dir))
    runner = services.jobs
    job = runner.resumable(res_type)
    if job is not None:
        click.echo(f"resuming reindex job {job.id} after rid {job.last_rid} ({job.processed} resources done)")
    else:
        job = runner.submit(res_type, batch_size, background=False)
        click.echo(f"reindex job {job.id} ({res_type or 'all types'})")
    bar = tqdm(total=job.total, initial=job.processed, unit="res", disable=not progress)
    seen = job.processed

    def advance(j) -> None:  # type: ignore[no-untyped-def]
        nonlocal seen
        if bar.total is None and j.total is not None:  # counted when the job starts
            bar.total = j.total
        bar.update(j.processed - seen)
        seen = j.processed

    try:
        job = runner.run(job, progress=advance)
    except KeyboardInterrupt:
        bar.close()
        runner.release(job)
        click.echo(f"interrupted after rid {job.last_rid}; run the command again to resume")
        sys.exit(130)
    finally:
        services.repo.dispose()
    bar.close()
    click.echo(f"reindex job {job.id} {job.state}: {job.processed} resources, {job.errors} errors")
    if job.error:
        click.echo(f"  {job.error}")
    if job.state != "completed":
        sys.exit(1)


@cli.command(context_settings=_ENV)
@_database_option
@_data_dir_option
@click.option("--batch-size", default=500, show_default=True, help="Resources per commit for NDJSON and collections")
@click.option("--progress/--no-progress", default=True, show_default=True)
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
def load(database_url: str, data_dir: str, batch_size: int, progress: bool, files: tuple[str, ...]) -> None:
    """Load Bundles (transaction, batch, collection), NDJSON or single resources (.gz/.bz2 too)."""
    from fhir_server.loader import Loader

    settings = _settings(database_url, data_dir)
    report = Loader(settings, batch_size=batch_size, progress=progress).load_files([pathlib.Path(f) for f in files])
    click.echo(report.summary())
    if report.rejected and not report.loaded:
        sys.exit(1)


@cli.group()
def terminology() -> None:
    """Terminology: external code systems."""


@terminology.command("import", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.option(
    "--format",
    "fmt",
    required=True,
    type=click.Choice(["loinc", "icd10-claml", "csv"]),
    help="loinc: Loinc.csv; icd10-claml: WHO ICD-10 ClaML XML; csv: code,display,parent[,definition]",
)
@click.option("--url", default=None, help="Canonical url of the code system (required for csv)")
@click.option("--version", "cs_version", default=None, help="Version of the code system (e.g. the LOINC release)")
@click.option("--id", "res_id", default=None, help="Resource id (default: loinc, icd-10, or the url's last segment)")
@click.option("--name", default=None, help="CodeSystem.name")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
def terminology_import(
    database_url: str,
    data_dir: str,
    fmt: str,
    url: str | None,
    cs_version: str | None,
    res_id: str | None,
    name: str | None,
    file: str,
) -> None:
    """Store FILE as a CodeSystem (one transaction; importing again makes a new version)."""
    import time

    from fhir_server.app import build_services
    from fhir_server.errors import FhirError
    from fhir_server.terminology.importers import ImportOptions, build, store

    services = build_services(_settings(database_url, data_dir))
    started = time.perf_counter()
    try:
        resource = build(fmt, pathlib.Path(file), ImportOptions(url, cs_version, res_id, name))
        stored = store(services.repo, resource)
    except FhirError as err:
        raise click.ClickException(err.diagnostics) from None
    finally:
        services.repo.dispose()
    label = f"{resource['url']}|{resource['version']}" if resource.get("version") else resource["url"]
    click.echo(
        f"CodeSystem/{stored.res_id} (version {stored.version}): {resource['count']} concepts of {label} "
        f"stored in {time.perf_counter() - started:.1f} s"
    )


@cli.group()
def clients() -> None:
    """OAuth2 clients (SMART apps, backend services, integrations)."""


def _migrated_engine(database_url: str, data_dir: str):  # type: ignore[no-untyped-def]
    from fhir_server.storage.engine import make_engine
    from fhir_server.storage.migrate import ensure_schema

    engine = make_engine(_settings(database_url, data_dir).resolved_database_url)
    ensure_schema(engine)
    return engine


def _client_store(database_url: str, data_dir: str):  # type: ignore[no-untyped-def]
    from fhir_server.security.clients import ClientStore

    return ClientStore(_migrated_engine(database_url, data_dir))


@clients.command("add", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.argument("client_id")
@click.option("--name", default=None)
@click.option("--secret", default=None, help="shared secret (client_secret_basic/post); stored as an argon2id hash")
@click.option("--jwks", "jwks_file", default=None, type=click.Path(exists=True, dir_okay=False),
              help="the client's public JWKS (JSON file), for private_key_jwt")  # fmt: skip
@click.option(
    "--auth-method",
    default=None,
    type=click.Choice(["client_secret_basic", "client_secret_post", "private_key_jwt", "tls_client_auth", "none"]),
    help="default: private_key_jwt with --jwks, tls_client_auth with --tls-subject, else client_secret_basic",
)
@click.option("--tls-subject", default=None, help="tls_client_auth (RFC 8705): its certificate's subject, e.g. CN=lab")
@click.option("--scope", default="system/*.read", show_default=True, help="scopes it may be granted")
@click.option("--grant-type", "grant_types", multiple=True, default=("client_credentials",), show_default=True)
@click.option("--redirect-uri", "redirect_uris", multiple=True)
@click.option("--organization", default=None, help="its institution, Organization/<id>")
def clients_add(
    database_url: str,
    data_dir: str,
    client_id: str,
    name: str | None,
    secret: str | None,
    jwks_file: str | None,
    auth_method: str | None,
    scope: str,
    grant_types: tuple[str, ...],
    redirect_uris: tuple[str, ...],
    organization: str | None,
    tls_subject: str | None,
) -> None:
    """Register (or replace) CLIENT_ID."""
    import json

    jwks = json.loads(pathlib.Path(jwks_file).read_text("utf-8")) if jwks_file else None
    method = auth_method or ("private_key_jwt" if jwks else "tls_client_auth" if tls_subject else "client_secret_basic")
    try:
        client = _client_store(database_url, data_dir).save(
            client_id,
            name=name,
            secret=secret,
            jwks=jwks,
            auth_method=method,
            grant_types=grant_types,
            redirect_uris=redirect_uris,
            scope=scope,
            organization=organization,
            tls_subject=tls_subject,
        )
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"client {client.client_id}: {client.auth_method}, scope {client.scope}")


@clients.command("list", context_settings=_ENV)
@_database_option
@_data_dir_option
def clients_list(database_url: str, data_dir: str) -> None:
    """Registered clients (secrets are never shown: only their hashes are kept)."""
    for c in _client_store(database_url, data_dir).list():
        state = " (disabled)" if c.disabled else ""
        click.echo(f"{c.client_id}\t{c.auth_method}\t{' '.join(c.grant_types)}\t{c.scope}{state}")


@clients.command("remove", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.argument("client_id")
def clients_remove(database_url: str, data_dir: str, client_id: str) -> None:
    """Delete CLIENT_ID (its tokens stop working when they expire; revoke them to stop them now)."""
    if not _client_store(database_url, data_dir).remove(client_id):
        raise click.ClickException(f"no client {client_id!r}")
    click.echo(f"removed {client_id}")


@cli.group()
def audit() -> None:
    """The audit store: integrity and retention."""


def _audit_store(database_url: str, data_dir: str):  # type: ignore[no-untyped-def]
    from fhir_server.audit.store import AuditStore

    return AuditStore(_migrated_engine(database_url, data_dir))


@audit.command("verify", context_settings=_ENV)
@_database_option
@_data_dir_option
def audit_verify(database_url: str, data_dir: str) -> None:
    """Recompute the hash chain of every audit record; exit 1 naming the first broken one."""
    result = _audit_store(database_url, data_dir).verify()
    if result.ok:
        click.echo(f"audit chain intact: {result.checked} records")
        return
    click.echo(
        f"audit chain BROKEN at record {result.broken_at}: {result.reason} ({result.checked} verified before it)"
    )
    sys.exit(1)


@audit.command("purge", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.option("--before", required=True, help="remove records older than this date (YYYY-MM-DD)")
@click.option("--retention-days", default=365, show_default=True, type=click.IntRange(min=365))
def audit_purge(database_url: str, data_dir: str, before: str, retention_days: int) -> None:
    """Remove audit records older than --before, only beyond the retention policy (≥ 1 year)."""
    from fhir_server.util.fhirdate import date_range

    bounds = date_range(before)
    if bounds is None:
        raise click.ClickException(f"--before {before!r} is not a date")
    try:
        removed = _audit_store(database_url, data_dir).purge(bounds[0], retention_us=retention_days * 86_400_000_000)
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"removed {removed} audit records older than {before}")


@cli.group()
def users() -> None:
    """User accounts: password + TOTP, roles, institution, network binding (docs/security.md)."""


def _user_store(database_url: str, data_dir: str):  # type: ignore[no-untyped-def]
    from fhir_server.security.users import UserStore

    return UserStore(_migrated_engine(database_url, data_dir), ring=_ring(data_dir))


def _password(from_stdin: bool) -> str:
    if from_stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(click.prompt("Password", hide_input=True, confirmation_prompt=True))


def _user_command(name: str):  # type: ignore[no-untyped-def]
    """A ``users`` sub-command on USERNAME that reports a policy or lookup error as a CLI error."""

    def wrap(f):  # type: ignore[no-untyped-def]
        @users.command(name, context_settings=_ENV)
        @_database_option
        @_data_dir_option
        @click.argument("username")
        @functools.wraps(f)
        def command(database_url: str, data_dir: str, username: str, **options: object) -> None:
            try:
                f(_user_store(database_url, data_dir), username, **options)
            except (ValueError, LookupError) as exc:
                raise click.ClickException(str(exc)) from None

        return command

    return wrap


@click.option("--password-stdin", is_flag=True, help="read the password from the first line of standard input")
@click.option("--fhir-user", default=None, help="the person's resource, e.g. Practitioner/12 (SMART fhirUser)")
@click.option("--organization", default=None, help="their institution, Organization/<id>")
@click.option("--role", "roles", multiple=True, help="a role code (repeatable)")
@click.option("--network", "networks", multiple=True, help="an allowed network, CIDR (repeatable; none: anywhere)")
@_user_command("add")
def users_add(store, username, password_stdin, fhir_user, organization, roles, networks) -> None:  # type: ignore[no-untyped-def]
    """Create USERNAME (the password must meet the policy)."""
    user = store.create(username, _password(password_stdin), fhir_user=fhir_user, organization=organization,
                        roles=roles, allowed_networks=networks)  # fmt: skip
    click.echo(f"user {user.username} created")


@users.command("list", context_settings=_ENV)
@_database_option
@_data_dir_option
def users_list(database_url: str, data_dir: str) -> None:
    """Accounts (never their passwords or TOTP secrets)."""
    for u in _user_store(database_url, data_dir).list():
        flags = [f for f, on in (("totp", u.totp_enrolled), ("locked", u.locked_until), ("disabled", u.disabled)) if on]
        click.echo(f"{u.username}\t{u.fhir_user or '-'}\t{u.organization or '-'}\t{' '.join(u.roles) or '-'}\t"
                   f"{','.join(flags) or 'active'}")  # fmt: skip


@click.option("--password-stdin", is_flag=True, help="read the password from the first line of standard input")
@_user_command("passwd")
def users_passwd(store, username, password_stdin) -> None:  # type: ignore[no-untyped-def]
    """Set USERNAME's password (the policy applies; the expiry clock restarts)."""
    store.set_password(username, _password(password_stdin))
    click.echo(f"password of {username} set")


@_user_command("totp")
def users_totp(store, username) -> None:  # type: ignore[no-untyped-def]
    """Enrol USERNAME in TOTP; prints the otpauth:// URI for their authenticator app."""
    click.echo(store.enrol_totp(username))


@_user_command("unlock")
def users_unlock(store, username) -> None:  # type: ignore[no-untyped-def]
    """Lift a lockout after failed logins."""
    store.unlock(username)
    click.echo(f"{username} unlocked")


@_user_command("disable")
def users_disable(store, username) -> None:  # type: ignore[no-untyped-def]
    """Refuse USERNAME's logins from now on (the account is kept)."""
    store.disable(username)
    click.echo(f"{username} disabled")


@_user_command("enable")
def users_enable(store, username) -> None:  # type: ignore[no-untyped-def]
    """Allow a disabled USERNAME again."""
    store.enable(username)
    click.echo(f"{username} enabled")


@_user_command("remove")
def users_remove(store, username) -> None:  # type: ignore[no-untyped-def]
    """Delete USERNAME."""
    if not store.remove(username):
        raise click.ClickException(f"no user {username!r}")
    click.echo(f"removed {username}")


@clients.command("signing-secret", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.argument("client_id")
def clients_signing_secret(database_url: str, data_dir: str, client_id: str) -> None:
    """Make CLIENT_ID sign every request (API key + HMAC signature); prints its new secret once."""
    from fhir_server.security.signing import RequestSigning

    signing = RequestSigning(_migrated_engine(database_url, data_dir), _ring(data_dir))
    try:
        secret = signing.new_secret(client_id)
    except LookupError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(secret)
    click.echo(f"(shown once; tokens issued to {client_id} from now on need signed requests)", err=True)


@cli.group()
def keys() -> None:
    """Field encryption keys: status, rotation, re-encryption, retirement (docs/security.md)."""


def _ring(data_dir: str):  # type: ignore[no-untyped-def]
    from fhir_server.security.signing import key_ring

    return key_ring(pathlib.Path(data_dir))


@keys.command("status", context_settings=_ENV)
@_database_option
@_data_dir_option
def keys_status(database_url: str, data_dir: str) -> None:
    """Each data key: created, current or retired, and how many stored values it encrypts."""
    from fhir_server.security.reencrypt import values_by_key

    ring = _ring(data_dir)
    counts = values_by_key(_migrated_engine(database_url, data_dir))
    for key in ring.data_keys:
        state = "current" if key.kid == ring.current.kid else ("retired" if key.retired else "old")
        click.echo(f"{key.kid}\t{key.created.isoformat()}\t{state}\t{counts.get(key.kid, 0)} values")
    unknown = sorted(set(counts) - {k.kid for k in ring.data_keys})
    for kid in unknown:
        click.echo(f"{kid}\t-\tNOT IN THE KEY RING\t{counts[kid]} values")
    if ring.rotation_due():
        click.echo("rotation due: the current key is 90 days old (fhir-server keys rotate)")
    if unknown:
        sys.exit(1)


@keys.command("rotate", context_settings=_ENV)
@_data_dir_option
def keys_rotate(data_dir: str) -> None:
    """Add a data key that encrypts from now on (R24: at least every 90 days); then reencrypt."""
    from fhir_server.security.keyring import KeyRingError

    try:
        kid = _ring(data_dir).rotate()
    except KeyRingError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"current data key: {kid} (servers pick it up within 5 s; then run `fhir-server keys reencrypt`)")


@keys.command("reencrypt", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.option("--progress/--no-progress", default=True, show_default=True)
def keys_reencrypt(database_url: str, data_dir: str, progress: bool) -> None:
    """Move every stored encrypted value to the current key (resumable: run it again)."""
    from tqdm import tqdm

    from fhir_server.security.reencrypt import reencrypt_all

    bar = tqdm(unit=" rows", disable=not progress)
    done = reencrypt_all(_migrated_engine(database_url, data_dir), _ring(data_dir), progress=bar.update)
    bar.close()
    click.echo(f"re-encrypted {done.changed} of {done.rows} rows")


@keys.command("retire", context_settings=_ENV)
@_database_option
@_data_dir_option
@click.argument("kid")
def keys_retire(database_url: str, data_dir: str, kid: str) -> None:
    """Mark a data key retired once no stored value uses it."""
    from fhir_server.security.keyring import KeyRingError
    from fhir_server.security.reencrypt import retire

    try:
        retire(_migrated_engine(database_url, data_dir), _ring(data_dir), kid)
    except (KeyRingError, LookupError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"retired {kid}")
