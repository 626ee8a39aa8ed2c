"""Typed settings for the server, filled from the command line and ``FHIR_SERVER_*`` variables.

Why one object: every entrance (REST, loader, later DICOM and MLLP) needs the same database URL,
data directory and limits; passing one frozen ``Settings`` keeps them from drifting apart.
"""

from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field, replace

#: every process's log lines (the server, its workers, the audit writer)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


@dataclass(frozen=True)
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    database_url: str = "sqlite:///var/fhir.db"
    data_dir: pathlib.Path = field(default_factory=lambda: pathlib.Path("var"))
    dicom_port: int = 11112
    dicom_aet: str = "TELEFHIR"
    mllp_port: int = 2575
    workers: int = 1
    #: Public base URL of the FHIR endpoint; derived from the request when not set.
    base_url: str | None = None
    default_count: int = 50
    max_count: int = 1000
    #: Largest request body accepted, in bytes.
    max_body: int = 64 * 1024 * 1024
    #: Most resources a conditional delete may remove in one request.
    max_conditional_delete: int = 1000
    access_log: bool = True
    #: gzip responses larger than this when the client accepts gzip.
    gzip_min_size: int = 1400
    #: PostgreSQL connections each worker keeps open (no overflow: a request beyond waits for one)
    pool_size: int = 20
    #: batch/transaction Bundles processed at once per worker (memory bound; see rest/adapter.py)
    bundle_slots: int = 1
    #: seconds between a worker's checks for SearchParameters changed by another worker
    search_param_refresh: float = 1.0
    #: resources per transaction of a ``$reindex`` job (a job may ask for another size)
    reindex_batch_size: int = 500
    #: seconds after its last batch before a job whose worker stopped answering may be taken over
    job_lease: float = 60.0
    #: seconds between a server worker's checks for jobs that nobody runs
    job_poll_interval: float = 5.0
    #: OAuth2/SMART access control; off only as an explicit development flag (docs/security.md)
    auth: bool = True
    #: ``id:secret`` of a confidential client allowed ``system/*.*``, made at start (ARCHITECTURE.md)
    bootstrap_client: str | None = None
    #: seconds an access token lives
    token_lifetime: int = 3600
    #: days before the token signing key is rotated
    signing_key_days: float = 30.0
    #: HTTPS: the server's certificate chain and key (PEM); None serves plain HTTP
    tls_cert: str | None = None
    tls_key: str | None = None
    #: CA whose client certificates are asked for (mutual TLS, ITI-19); required with the flag
    tls_client_ca: str | None = None
    tls_require_client_cert: bool = False
    #: the institution that runs the platform and pre-reviews consultations ("Organization/<id>")
    platform_organization: str | None = None
    #: BALP audit records of every interaction (audit/); off only as a development flag
    audit: bool = True
    #: seconds between the audit writer's passes over the workers' spools
    audit_interval: float = 0.5
    #: ITI-20 export: ``tls://host:port`` (RFC 5425) or ``udp://host:port`` (RFC 5426); None: off
    audit_repository: str | None = None
    #: CA of the repository's certificate; our client certificate and key for it (ITI-19)
    audit_repository_ca: str | None = None
    audit_client_cert: str | None = None
    audit_client_key: str | None = None
    #: the RabbitMQ of amqp subscription channels (notify/channels/amqp.py)
    amqp_url: str = "amqp://guest:guest@127.0.0.1:5672/%2F"
    #: seconds before each retry of a failed notification (three retries: R19)
    notify_retry_delays: tuple[float, ...] = (1.0, 4.0, 16.0)
    #: seconds between a worker's looks at the outbox for notifications it was not woken for
    notify_poll: float = 0.2
    #: hours a participating institution has to answer a multi-centre invitation (001 §7.2 c)
    invitation_hours: float = 24.0
    #: seconds between a worker's looks for what fell due: overdue invitations (workflow/overdue.py),
    #: follow-ups to remind (workflow/follow_up.py); 0: never
    sweep_interval: float = 60.0
    #: hours before a follow-up is due that its reminder is sent (workflow/follow_up.py)
    follow_up_reminder_hours: float = 24.0
    #: days a consultation's archive and a signed report are kept at least (001 §7.4 c: ≥ 3 years)
    archive_retention_days: int = 1096
    #: store the demo network (fhir_server/demo.py) at start, once
    demo: bool = False
    #: the platform's conferencing service: a booked consultation's meeting room address, ``{room}``
    #: replaced by an unguessable name (workflow/encounters.py); None: Encounters without a room
    meeting_url_template: str | None = None

    def with_overrides(self, **values: object) -> Settings:
        return replace(self, **{k: v for k, v in values.items() if v is not None})

    @property
    def resolved_database_url(self) -> str:
        """The database URL with the SQLite file's path made absolute and its folder created."""
        url = self.database_url
        if url.startswith("sqlite:///"):
            path = pathlib.Path(url[len("sqlite:///") :])
            if str(path) not in ("", ":memory:"):
                path = path.resolve()
                path.parent.mkdir(parents=True, exist_ok=True)
                return f"sqlite:///{path}"
        return url


def env(name: str) -> str | None:
    return os.environ.get(f"FHIR_SERVER_{name.upper()}")
