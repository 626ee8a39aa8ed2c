"""Writing many rows at once, by the fastest path each database offers.

Why not SQLAlchemy's ``insert()`` executemany: profiling the ingest showed parameter processing
and, on PostgreSQL, one protocol message per row (each a cooperative gevent wait) costing
more than everything else a create does. PostgreSQL's ``COPY`` streams all rows of a table in
one command, in binary with the column types pinned (3x less CPU than text COPY, and ``bytea``
content goes as it is instead of hex-escaped); on SQLite a constant-SQL ``executemany`` on the
driver is a tight C loop. Both run on the session's connection, inside its transaction.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from sqlalchemy import BigInteger, Boolean, Connection, Float, Integer, LargeBinary, String, Table

# PostgreSQL binary COPY type of each column type used in fhir_server.storage.schema.
_PG_TYPES = (
    (BigInteger, "int8"),
    (Integer, "int4"),
    (Boolean, "bool"),
    (Float, "float8"),
    (LargeBinary, "bytea"),
    (String, "text"),
)


@functools.cache
def _columns(table: Table) -> tuple[str, ...]:
    return tuple(c.name for c in table.columns)


@functools.cache
def _insert_sql(table: Table) -> str:
    cols = _columns(table)
    return f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"


@functools.cache
def _copy_sql(table: Table) -> str:
    return f"COPY {table.name} ({', '.join(_columns(table))}) FROM STDIN (FORMAT BINARY)"


@functools.cache
def _pg_types(table: Table) -> list[str]:
    return [next(name for kind, name in _PG_TYPES if isinstance(c.type, kind)) for c in table.columns]


#: Up to this many rows in all, PostgreSQL gets one multi-row INSERT statement (one round trip)
#: instead of a COPY per table (two round trips each): a single create writes ~15 rows.
SMALL_WRITE = 200


def insert_many(
    conn: Connection, writes: Sequence[tuple[Table, Sequence[tuple[Any, ...]]]], *, copy: bool = False
) -> None:
    """Insert each ``(table, rows)`` (rows as tuples in column order) on ``conn``'s transaction.

    ``copy``: on PostgreSQL, always ``COPY``, for rows of long text (audit records): the one-
    statement path sends text arrays, whose quoting psycopg does with a regular expression per
    value (40% of the audit writer's time)."""
    writes = [(table, rows) for table, rows in writes if rows]
    if not writes:
        return
    driver = conn.connection.driver_connection
    if conn.dialect.name != "postgresql":
        for table, rows in writes:
            driver.executemany(_insert_sql(table), rows)
    elif not copy and sum(len(rows) for _, rows in writes) <= SMALL_WRITE:
        _insert_in_one_statement(driver, writes)
    else:
        for table, rows in writes:
            with driver.cursor() as cur, cur.copy(_copy_sql(table)) as copy:
                copy.set_types(_pg_types(table))
                for row in rows:
                    copy.write_row(row)


def _insert_in_one_statement(driver: Any, writes: list[tuple[Table, Sequence[tuple[Any, ...]]]]) -> None:
    # Each table's rows travel as one array per column: the SQL text depends only on which
    # tables are written, so psycopg parses and prepares it once (a VALUES list per row count
    # made every statement new: parsing it was 15% of the CRUD benchmark).
    params: list[list[Any]] = []
    for _table, rows in writes:
        params.extend(list(column) for column in zip(*rows, strict=True))
    driver.execute(_unnest_sql(tuple(table for table, _ in writes)), params)


@functools.cache
def _unnest_sql(tables: tuple[Table, ...]) -> str:
    inserts = []
    for table in tables:
        arrays = ", ".join(f"%s::{t}[]" for t in _pg_types(table))
        inserts.append(f"INSERT INTO {table.name} ({', '.join(_columns(table))}) SELECT * FROM unnest({arrays})")
    *first, last = inserts
    ctes = ", ".join(f"w{i} AS ({sql})" for i, sql in enumerate(first))
    return f"WITH {ctes} {last}" if first else last
