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


def insert_many(conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
    """Insert ``rows`` (tuples in column order) into ``table`` on ``conn``'s transaction."""
    if not rows:
        return
    if conn.dialect.name == "postgresql":
        with conn.connection.driver_connection.cursor() as cur, cur.copy(_copy_sql(table)) as copy:
            copy.set_types(_pg_types(table))
            for row in rows:
                copy.write_row(row)
    else:
        conn.connection.driver_connection.executemany(_insert_sql(table), rows)
