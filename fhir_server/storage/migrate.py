"""Schema migrations with alembic: ``fhir-server db upgrade`` and automatic set-up of an empty database.

Why automatic only on an empty database: a fresh install should just start, but upgrading a
database that holds data is an operator's decision (backup first), so the server refuses to
start on an out-of-date schema and says which command to run.
"""

from __future__ import annotations

import pathlib

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, inspect

MIGRATIONS = pathlib.Path(__file__).with_name("migrations")


def alembic_config(engine: Engine) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    cfg.set_main_option("sqlalchemy.url", engine.url.render_as_string(hide_password=False))
    return cfg


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def upgrade(engine: Engine, revision: str = "head") -> None:
    cfg = alembic_config(engine)
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, revision)


class SchemaOutOfDate(RuntimeError):
    pass


def ensure_schema(engine: Engine) -> None:
    """Create the schema on an empty database; refuse an out-of-date one."""
    current = current_revision(engine)
    head = head_revision(engine)
    if current == head:
        return
    if current is None and not inspect(engine).get_table_names():
        upgrade(engine)
        return
    raise SchemaOutOfDate(
        f"database schema is at revision {current!r}, this server needs {head!r}: "
        "back up the database, then run `fhir-server db upgrade`"
    )
