"""Database tables (SQLAlchemy Core), identical on SQLite and PostgreSQL.

Why this shape (see docs/architecture.md):
- ``resources`` holds the current version of each resource, ``resource_history`` the versions
  it replaced, so reads and searches touch only current rows and history never grows them.
- Index tables are typed (string, token, date, number, quantity, reference, uri), keyed by the
  surrogate ``rid`` and by ``sp``, a 64-bit hash of ``"<ResourceType>.<code>"``; tokens also
  carry hashes of system/code so a token predicate is one integer comparison (as in HAPI).
- Times are integer microseconds since the epoch (UTC): same ordering and precision on both
  databases, and no timezone conversions in SQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Sequence,
    String,
    Table,
    Text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
RowId = BigInteger().with_variant(Integer(), "sqlite")

resources = Table(
    "resources",
    metadata,
    Column("rid", RowId, Sequence("resources_rid_seq"), primary_key=True),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),
    #: bit i set = the resource has rows in the i-th index table (skip needless deletes)
    Column("idx_mask", Integer, nullable=False, default=0),
    Column("content", LargeBinary, nullable=True),
    # -- who may see it (security/tenancy.py); kept on a deletion marker, so history stays guarded
    #: the owning institution's Organization id; None: the platform's own (or shared catalogue)
    Column("tenant", String(64), nullable=True),
    #: the Patient id the resource is about (its own id for a Patient), for grants and compartments
    Column("patient", String(64), nullable=True),
    #: one bit of security/categories.py: which of the standard's data categories it is
    Column("category", Integer, nullable=False, default=0),
    #: bits of security/labels.py (minor, infectious disease, restricted), its patient's included
    Column("labels", Integer, nullable=False, default=0),
    #: when its patient turns 18 (µs); until then it is a minor's data
    Column("minor_until_us", BigInteger, nullable=True),
    Index("ux_resources_type_id", "res_type", "res_id", unique=True),
    Index("ix_resources_type_updated", "res_type", "updated_us"),
    Index("ix_resources_updated", "updated_us"),
    # PostgreSQL: checking type and liveness of a rid found in an index table without visiting the
    # heap, whose pages hold the content (a chain probes one per referring resource). SQLite's
    # rowid table already is that index.
    Index("ix_resources_live", "rid", postgresql_include=["res_type", "deleted"]).ddl_if(dialect="postgresql"),
)

resource_history = Table(
    "resource_history",
    metadata,
    Column("rid", BigInteger, primary_key=True, autoincrement=False),
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("res_type", String(64), nullable=False),
    Column("res_id", String(64), nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted", Boolean, nullable=False, default=False),
    Column("method", String(8), nullable=False),
    Column("content", LargeBinary, nullable=True),
    Index("ix_history_type_updated", "res_type", "updated_us"),
    Index("ix_history_updated", "updated_us"),
)

idx_string = Table(
    "idx_string",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("value", String(255), nullable=False),  # normalised: case- and accent-folded
    Column("exact", Text, nullable=False),
    # pattern ops: prefix LIKE uses the index whatever the database's collation (PostgreSQL)
    Index("ix_string_sp_value", "sp", "value", postgresql_ops={"value": "varchar_pattern_ops"}),
    Index("ix_string_rid", "rid"),
)

idx_token = Table(
    "idx_token",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("text", String(255), nullable=True),  # normalised display/text for :text
    Column("h_code", BigInteger, nullable=False),  # hash(sp, code)
    Column("h_sys_code", BigInteger, nullable=False),  # hash(sp, system, code)
    Column("h_sys", BigInteger, nullable=False),  # hash(sp, system)
    # with rid: a token's resources come from the index alone (chains, counts, intersections)
    Index("ix_token_h_code", "h_code", "rid"),
    Index("ix_token_h_sys_code", "h_sys_code", "rid"),
    Index("ix_token_h_sys", "h_sys"),
    Index("ix_token_rid", "rid"),
)

idx_date = Table(
    "idx_date",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("lo", BigInteger, nullable=False),  # inclusive, µs since epoch
    Column("hi", BigInteger, nullable=False),  # inclusive
    Index("ix_date_sp_lo_hi", "sp", "lo", "hi"),
    Index("ix_date_rid", "rid"),
)

idx_number = Table(
    "idx_number",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("value", Float, nullable=False),
    Column("lo", Float, nullable=False),  # implied-precision range
    Column("hi", Float, nullable=False),
    Index("ix_number_sp_lo", "sp", "lo", "hi"),
    Index("ix_number_rid", "rid"),
)

idx_quantity = Table(
    "idx_quantity",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("system", Text, nullable=True),
    Column("code", Text, nullable=True),
    Column("unit", Text, nullable=True),
    Column("value", Float, nullable=False),
    Column("lo", Float, nullable=False),
    Column("hi", Float, nullable=False),
    Index("ix_quantity_sp_lo", "sp", "lo", "hi"),
    Index("ix_quantity_rid", "rid"),
)

idx_reference = Table(
    "idx_reference",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("target_type", String(64), nullable=True),
    Column("target_id", String(64), nullable=True),
    Column("target_version", String(64), nullable=True),
    Column("url", Text, nullable=True),  # absolute or canonical reference as written
    Index("ix_reference_target", "target_id", "target_type", "sp"),
    Index("ix_reference_rid", "rid", "sp"),
    Index("ix_reference_url", "url"),
)

idx_uri = Table(
    "idx_uri",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("uri", Text, nullable=False),
    Index("ix_uri_sp_uri", "sp", "uri"),
    Index("ix_uri_rid", "rid"),
)

#: Background jobs (``$reindex``): claimed by one worker at a time under a lease that the
#: worker renews after every batch; ``last_rid`` is the resume point (see search/reindex.py).
jobs = Table(
    "jobs",
    metadata,
    Column("id", String(64), primary_key=True),
    Column("kind", String(32), nullable=False),  # reindex
    Column("res_type", String(64), nullable=True),  # None: every resource type
    Column("state", String(16), nullable=False),  # queued | running | completed | failed | cancelled
    Column("batch_size", Integer, nullable=False),
    Column("last_rid", BigInteger, nullable=False),  # resources up to this rid are done
    Column("total", BigInteger, nullable=True),  # resources to process, counted before the first batch
    Column("processed", BigInteger, nullable=False),
    Column("errors", BigInteger, nullable=False),  # resources whose index could not be computed
    Column("owner", String(128), nullable=True),  # host:pid:nonce of the process running it
    Column("heartbeat_us", BigInteger, nullable=True),  # lease: renewed after every batch
    Column("created_us", BigInteger, nullable=False),
    Column("started_us", BigInteger, nullable=True),
    Column("finished_us", BigInteger, nullable=True),
    Column("error", Text, nullable=True),  # why it failed, or the first resource that could not be indexed
    Index("ix_jobs_state_created", "state", "created_us"),
)

#: Small named counters shared by all workers; ``search_parameters`` is bumped by every write
#: of a SearchParameter resource so that workers know to reload their custom parameters.
counters = Table(
    "counters",
    metadata,
    Column("name", String(64), primary_key=True),
    Column("value", BigInteger, nullable=False),
)

idx_position = Table(
    "idx_position",
    metadata,
    Column("rid", BigInteger, nullable=False),
    Column("sp", BigInteger, nullable=False),
    Column("lat", Float, nullable=False),  # degrees, WGS84 (Location.position)
    Column("lng", Float, nullable=False),
    Index("ix_position_sp_lat_lng", "sp", "lat", "lng"),
    Index("ix_position_rid", "rid"),
)

INDEX_TABLES: dict[str, Table] = {
    t.name: t for t in (idx_string, idx_token, idx_date, idx_number, idx_quantity, idx_reference, idx_uri, idx_position)
}
#: bit of each index table in ``resources.idx_mask``
INDEX_BITS: dict[str, int] = {name: 1 << i for i, name in enumerate(INDEX_TABLES)}

# -- terminology: the concepts of stored CodeSystems, one set of rows per stored version ---------
# Filled in the same transaction as the CodeSystem itself (terminology/table.py), so that
# $lookup, $validate-code, $subsumes and $expand with a filter on a large CodeSystem (LOINC,
# ICD-10) read a few indexed rows instead of parsing the whole resource in every worker.

#: one row per stored CodeSystem version: what the operations need without reading its content
terminology_systems = Table(
    "terminology_systems",
    metadata,
    Column("cs_id", String(64), primary_key=True),  # the CodeSystem's resource id
    Column("cs_version", Integer, primary_key=True, autoincrement=False),  # its meta.versionId
    Column("url", Text, nullable=False),
    Column("business_version", Text, nullable=True),  # CodeSystem.version
    Column("header", Text, nullable=False),  # JSON: the resource without concept and text
    Column("concepts", Integer, nullable=False),
    Index("ix_terminology_systems_url", "url"),
)

terminology_concepts = Table(
    "terminology_concepts",
    metadata,
    Column("cs_id", String(64), primary_key=True),
    Column("cs_version", Integer, primary_key=True, autoincrement=False),
    Column("code", Text, primary_key=True),
    Column("seq", Integer, nullable=False),  # document order: expansions page in a stable order
    Column("display", Text, nullable=True),
    Column("norm", Text, nullable=False),  # code, display and designations, case- and accent-folded
    Column("inactive", Boolean, nullable=False),
    Column("detail", Text, nullable=False),  # JSON: the concept without its nested concepts
    Index("ix_terminology_concepts_seq", "cs_id", "cs_version", "seq"),
)

#: the hierarchy (nested concepts and parent/child properties), one row per parent-child link
terminology_edges = Table(
    "terminology_edges",
    metadata,
    Column("cs_id", String(64), primary_key=True),
    Column("cs_version", Integer, primary_key=True, autoincrement=False),
    Column("parent", Text, primary_key=True),
    Column("child", Text, primary_key=True),
    Index("ix_terminology_edges_child", "cs_id", "cs_version", "child"),
)

# -- security (issue 5; fhir_server/security/) -----------------------------------------------
#: OAuth2 clients (SMART apps, backend services, integrations)
auth_clients = Table(
    "auth_clients",
    metadata,
    Column("client_id", String(128), primary_key=True),
    Column("name", Text, nullable=False),
    Column("secret_hash", Text, nullable=True),  # argon2id; None for public clients and private_key_jwt
    Column("jwks", Text, nullable=True),  # JSON Web Key Set of a private_key_jwt client
    Column("auth_method", String(32), nullable=False),  # client_secret_basic, client_secret_post, private_key_jwt, none
    Column("grant_types", Text, nullable=False),  # space separated
    Column("redirect_uris", Text, nullable=False),  # space separated
    Column("scope", Text, nullable=False),  # the scopes it may be granted, space separated
    Column("organization", String(128), nullable=True),  # its institution (tenant), "Organization/<id>"
    Column("created_us", BigInteger, nullable=False),
    Column("disabled", Boolean, nullable=False),
    Column("signing_secret", Text, nullable=True),  # encrypted (crypto.py); set: its requests must be signed
    Column("tls_subject", Text, nullable=True),  # tls_client_auth (RFC 8705): its certificate's subject DN
)

#: signing keys of access and id tokens; the newest active one signs, all published keys verify
auth_signing_keys = Table(
    "auth_signing_keys",
    metadata,
    Column("kid", String(64), primary_key=True),
    Column("alg", String(16), nullable=False),
    Column("private_jwk", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("retired_us", BigInteger, nullable=True),  # stops signing; published until tokens it signed expire
    #: "token" (access and ID tokens) or "document" (published reports: published for good)
    Column("purpose", String(16), nullable=False, server_default="token"),
)

#: access tokens revoked before they expire (RFC 7009), by their ``jti``
auth_revoked = Table(
    "auth_revoked",
    metadata,
    Column("jti", String(64), primary_key=True),
    Column("expires_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=False),
    Index("ix_auth_revoked_revoked", "revoked_us"),
)

#: people who log in (browser, SMART apps acting for a user): password + TOTP, lockout, binding
auth_users = Table(
    "auth_users",
    metadata,
    Column("username", String(128), primary_key=True),
    Column("password_hash", Text, nullable=False),  # argon2id
    Column("password_changed_us", BigInteger, nullable=False),
    Column("totp_secret", Text, nullable=True),  # base32; None until enrolled
    Column("totp_last_step", BigInteger, nullable=True),  # the step of the last accepted code (replay)
    Column("fhir_user", String(256), nullable=True),  # "Practitioner/12": the SMART fhirUser
    Column("organization", String(128), nullable=True),  # the tenant: "Organization/5"
    Column("roles", Text, nullable=False),  # space separated role codes (security/roles.py)
    Column("failed_logins", Integer, nullable=False),
    Column("locked_until_us", BigInteger, nullable=True),
    Column("allowed_networks", Text, nullable=False),  # space separated CIDRs; empty: anywhere
    Column("created_us", BigInteger, nullable=False),
    Column("last_login_us", BigInteger, nullable=True),
    Column("disabled", Boolean, nullable=False),
)

#: authorization codes (RFC 6749 §4.1) by the hash of the code; used once
auth_codes = Table(
    "auth_codes",
    metadata,
    Column("code_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("username", String(128), nullable=False),
    Column("scope", Text, nullable=False),
    Column("redirect_uri", Text, nullable=False),
    Column("code_challenge", Text, nullable=True),
    Column("code_challenge_method", String(16), nullable=True),
    Column("nonce", Text, nullable=True),
    Column("context", Text, nullable=False),  # JSON: launch context (patient, encounter, fhirContext)
    Column("expires_us", BigInteger, nullable=False),
    Column("used", Boolean, nullable=False),
)

#: refresh tokens by their hash; a used one is replaced by a new one (rotation)
auth_refresh_tokens = Table(
    "auth_refresh_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),
    Column("client_id", String(128), nullable=False),
    Column("username", String(128), nullable=True),
    Column("scope", Text, nullable=False),
    Column("context", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("revoked", Boolean, nullable=False),
)

#: SMART EHR launch contexts (``POST /auth/launch``), by the hash of the opaque launch id
auth_launches = Table(
    "auth_launches",
    metadata,
    Column("launch_hash", String(64), primary_key=True),
    Column("username", String(128), nullable=False),  # who launched: only they may use it
    Column("context", Text, nullable=False),  # JSON: patient, encounter
    Column("expires_us", BigInteger, nullable=False),
)

#: browser login sessions (the login page's cookie), by the hash of the session id
auth_sessions = Table(
    "auth_sessions",
    metadata,
    Column("session_hash", String(64), primary_key=True),
    Column("username", String(128), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("expires_us", BigInteger, nullable=False),
    Column("address", String(64), nullable=True),  # the IP it was opened from
)

# -- audit (issue 5; fhir_server/audit/) -------------------------------------------------------
#: the append-only audit store: one row per AuditEvent, chained by hashes (audit/store.py)
audit_events = Table(
    "audit_events",
    metadata,
    Column("seq", RowId, primary_key=True, autoincrement=False),  # 1, 2, ...: the chain order
    Column("recorded_us", BigInteger, nullable=False),
    Column("type_code", String(64), nullable=False),
    Column("subtype_code", String(64), nullable=True),
    Column("action", String(1), nullable=True),
    Column("outcome", String(2), nullable=False),
    Column("patient", String(128), nullable=True),  # "Patient/<id>" of entity[patient]
    Column("agent", String(256), nullable=True),  # the requester: user, else client id
    Column("address", String(64), nullable=True),  # the client's network address
    Column("entity", String(256), nullable=True),  # entity[data].what reference
    #: the requester's institution ("Organization/<id>"): whose audit trail the record is part of
    Column("organization", String(128), nullable=True),
    Column("content", Text, nullable=False),  # the AuditEvent JSON, with its id
    Column("hash", String(64), nullable=False),  # sha256(prev hash + content), hex
    Index("ix_audit_events_recorded", "recorded_us"),
    Index("ix_audit_events_patient", "patient", "recorded_us"),
    Index("ix_audit_events_agent", "agent", "recorded_us"),
    Index("ix_audit_events_organization", "organization", "recorded_us"),
)

#: where verification of the chain starts once older records were purged by policy
audit_anchor = Table(
    "audit_anchor",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),  # always 1
    Column("seq", BigInteger, nullable=False),  # the last purged seq (0: nothing purged)
    Column("hash", String(64), nullable=False),  # its hash: the next record's "previous"
    Column("purged_us", BigInteger, nullable=True),
)

#: how far the audit writer has read each worker's spool file (committed with the records)
audit_spool_offsets = Table(
    "audit_spool_offsets",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("offset", BigInteger, nullable=False),
)


# -- tenancy (issue 5; fhir_server/security/grants.py) -----------------------------------------
#: who may see another institution's data about a patient, derived from the requests
#: (ServiceRequest) and consents (Consent) that share it; rebuilt for a patient whenever one of
#: those changes, and read by the SQL visibility filter (security/tenancy.py)
access_grants = Table(
    "access_grants",
    metadata,
    Column("grantee", String(64), nullable=False),  # the Organization id that may see
    Column("patient", String(64), nullable=False),  # whose data
    Column("grantor", String(64), nullable=False),  # the Organization id whose data (resources.tenant)
    Column("categories", Integer, nullable=False),  # security/categories.py bits
    Column("labels", Integer, nullable=False),  # security/labels.py bits it may include
    Column("start_us", BigInteger, nullable=False),
    Column("end_us", BigInteger, nullable=False),  # exclusive; 2**62: open
    Column("since_us", BigInteger, nullable=False),  # only rows written since (0: all)
    Column("source", String(200), nullable=False),  # "ServiceRequest/<id>" or "Consent/<id>"
    Index("ix_access_grants_lookup", "grantee", "patient", "grantor"),
    Index("ix_access_grants_patient", "patient"),
)


#: the ledger of data sent abroad (R28, 001 §8.5 数据出境台账): what, to whom, where, why, under
#: which measures and security assessment; appended by ``$export-abroad``, never changed
export_ledger = Table(
    "export_ledger",
    metadata,
    Column("export_id", String(64), primary_key=True),
    Column("recorded_us", BigInteger, nullable=False),
    Column("organization", String(128), nullable=True),  # the exporting institution; None: the platform
    Column("requester", String(256), nullable=False),  # the client (and user) that asked
    Column("recipient", Text, nullable=False),
    Column("country", String(8), nullable=False),  # ISO 3166-1 alpha-2
    Column("purpose", Text, nullable=False),
    Column("assessment", Text, nullable=False),  # the security assessment that allowed it
    Column("measures", Text, nullable=False),
    Column("content", Text, nullable=False),  # what was sent: resource counts by type
    Column("patients", Integer, nullable=False),
    Column("resources", Integer, nullable=False),
    Column("digest", String(64), nullable=False),  # SHA-256 of the Bundle sent
    Index("ix_export_ledger_organization", "organization", "recorded_us"),
    Index("ix_export_ledger_recorded", "recorded_us"),
)


#: notifications to deliver (notify/): written in the transaction of the change they announce, so
#: none is lost across a restart; delivered at least once, each with its idempotency key
subscription_outbox = Table(
    "subscription_outbox",
    metadata,
    Column("id", RowId, primary_key=True, autoincrement=True),
    Column("notification_id", String(64), nullable=False, unique=True),  # the idempotency key
    Column("subscription", String(64), nullable=False),
    Column("event_number", BigInteger, nullable=False),  # per subscription, from 1; 0: a handshake
    Column("kind", String(24), nullable=False),  # event-notification | handshake
    Column("focus", String(200), nullable=True),  # "Task/1/_history/3"
    Column("origin", String(64), nullable=True),  # the institution whose change it announces
    Column("channel", String(16), nullable=False),  # rest-hook | websocket | amqp
    Column("status", String(16), nullable=False),  # pending | delivered | failed
    Column("attempts", Integer, nullable=False),
    Column("next_attempt_us", BigInteger, nullable=False),
    Column("lease_until_us", BigInteger, nullable=True),  # a worker is delivering it until then
    Column("created_us", BigInteger, nullable=False),
    Column("delivered_us", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Index("ix_subscription_outbox_due", "status", "next_attempt_us"),
    Index("ix_subscription_outbox_subscription", "subscription", "event_number"),
)

#: one-time tokens binding a websocket to a subscription (``$get-ws-binding-token``)
subscription_ws_tokens = Table(
    "subscription_ws_tokens",
    metadata,
    Column("token_hash", String(64), primary_key=True),  # SHA-256 of the token: the token is not stored
    Column("subscription", String(64), nullable=False),
    Column("expires_us", BigInteger, nullable=False),
)
