"""Database engines for SQLite and PostgreSQL with the settings each needs.

Why: the same repository code runs on both, but SQLite needs WAL, a busy timeout and
``BEGIN IMMEDIATE`` for writers (otherwise two writers that both read first deadlock on lock
upgrade), while PostgreSQL needs a pool sized for the worker's concurrency.
"""

from __future__ import annotations

import contextlib
import math
import sqlite3
from collections.abc import Iterator

import psycopg
from psycopg.pq import Format
from sqlalchemy import Connection, Engine, create_engine, event

WRITE_FLAG = "fhir_write"
#: execution option: fetch this statement's results in binary format (PostgreSQL)
BINARY_RESULTS = "fhir_binary_results"


def make_engine(url: str, pool_size: int = 20) -> Engine:
    if url.startswith("sqlite"):
        return _sqlite_engine(url)
    engine = create_engine(
        url,
        pool_size=pool_size,
        # No overflow: overflow connections are closed when returned, and under load opening
        # a PostgreSQL connection per request cost more than the requests (read benchmark).
        max_overflow=0,
        pool_timeout=30,
        # No pre-ping: it is one more round trip per request. A connection that died with a
        # database restart fails its request once (503, see rest/adapter.py) and the pool is
        # invalidated and refilled.
        pool_recycle=3600,
        # Statements are prepared after a few runs; a generic plan for a search ignores how
        # common the searched value is and was 5x slower on skewed tokens (search benchmark).
        connect_args={"options": "-c plan_cache_mode=force_custom_plan"},
    )

    @event.listens_for(engine, "before_cursor_execute")
    def _binary_results(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        # Statements that fetch resource content ask for PostgreSQL's binary result format: the
        # same Python values, but ``bytea`` arrives as it is instead of as hex text to decode (a
        # search page of 60 resources spent an eighth of its time decoding hex). Not for every
        # statement: some catalog types (int2vector) only load from text.
        if context is not None and context.execution_options.get(BINARY_RESULTS):
            cursor.format = Format.BINARY

    @event.listens_for(engine, "handle_error")
    def _lost_connection(context):  # type: ignore[no-untyped-def]
        # A backend terminated under the pool (restart, failover, pg_terminate_backend) does not
        # always fail with a message SQLAlchemy knows: psycopg may first report "another command
        # is already in progress" on the dead connection. Treated as a disconnect, the pool is
        # refilled and the request answered 503 instead of 500 (tests/storage/test_connection_loss.py).
        original = context.original_exception
        if isinstance(original, psycopg.OperationalError) and any(
            marker in str(original) for marker in _LOST_CONNECTION
        ):
            context.is_disconnect = True

    return engine


_LOST_CONNECTION = (
    "another command is already in progress",
    "terminating connection",
    "server closed the connection",
    "consuming input failed",
    "sending query failed",
)


def _sqlite_engine(url: str) -> Engine:
    in_memory = url in ("sqlite://", "sqlite:///:memory:")
    engine = create_engine(
        url,
        connect_args={"check_same_thread": False, "timeout": 60},
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
        cur = dbapi_conn.cursor()
        if not in_memory:
            cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=60000")
        cur.execute("PRAGMA foreign_keys=OFF")
        cur.execute("PRAGMA cache_size=-65536")
        # Values are compared normalised (lower case) anyway; case-sensitive LIKE lets a prefix
        # search use the index as a range (SQLite's LIKE optimisation), and uri :below is exact.
        cur.execute("PRAGMA case_sensitive_like=ON")
        try:  # the near search needs them; SQLite builds without SQLITE_ENABLE_MATH_FUNCTIONS lack them
            cur.execute("SELECT sin(0), cos(0), radians(0)")
        except sqlite3.OperationalError:
            for name, fn in (("sin", math.sin), ("cos", math.cos), ("radians", math.radians)):
                dbapi_conn.create_function(name, 1, fn, deterministic=True)
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # Readers run in autocommit, each statement on its own snapshot, as PostgreSQL's READ
        # COMMITTED gives them (repository.Repository.session).
        if conn.info.get(WRITE_FLAG):
            conn.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


#: rows SQLite's ANALYZE samples per index: seconds on a million resources, and enough for the
#: planner to see that an index-table lookup is selective (search/index_match.py)
SQLITE_ANALYSIS_LIMIT = 1000


def refresh_statistics(engine: Engine, postgres_tables: tuple[str, ...] = ()) -> None:
    """Give the query planner table statistics: SQLite's for every table, PostgreSQL's only for
    ``postgres_tables`` (its autovacuum keeps the others, but only after a while).

    Why: without ``sqlite_stat1`` SQLite guesses that every index is as selective as any other
    and starts a search from all resources of the type instead of from the few index rows that
    match (0.01 ms with statistics, 13 ms without, on 26,000 Observations); PostgreSQL plans
    lookups on 100,000 rows it has just been given as scans until it has analysed them.
    """
    if engine.dialect.name != "sqlite":
        if postgres_tables:
            with engine.connect() as conn:
                conn.exec_driver_sql(f"ANALYZE {', '.join(postgres_tables)}")
                conn.commit()
        return
    with engine.connect() as conn:
        conn.exec_driver_sql(f"PRAGMA analysis_limit={SQLITE_ANALYSIS_LIMIT}")
        conn.exec_driver_sql("ANALYZE")


def is_postgres(engine: Engine) -> bool:
    return engine.dialect.name == "postgresql"


@contextlib.contextmanager
def begin_write(engine: Engine) -> Iterator[Connection]:
    """A write transaction outside the repository (security and audit tables): on SQLite it
    takes the write lock at BEGIN, as repository sessions do, so two writers never deadlock."""
    with engine.connect() as conn:
        conn.info[WRITE_FLAG] = True
        try:
            with conn.begin():
                yield conn
        finally:
            conn.info[WRITE_FLAG] = False
