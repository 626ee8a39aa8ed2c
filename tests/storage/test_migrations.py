"""The alembic migrations build exactly the tables of storage/schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from fhir_server.storage.migrate import current_revision, head_revision
from fhir_server.storage.schema import counters, metadata


def test_migrated_database_matches_the_schema(services) -> None:  # type: ignore[no-untyped-def]
    engine = services.repo.engine
    assert current_revision(engine) == head_revision(engine) == "0012"
    with engine.connect() as conn:

        def this_dialect(obj, _name, _type, _reflected, _compare_to) -> bool:  # type: ignore[no-untyped-def]
            ddl_if = getattr(obj, "_ddl_if", None)  # Index(...).ddl_if(dialect=...): one database only
            return ddl_if is None or ddl_if.dialect in (None, conn.dialect.name)

        context = MigrationContext.configure(conn, opts={"include_object": this_dialect})
        diff = compare_metadata(context, metadata)
        names = set(conn.execute(select(counters.c.name)).scalars())
    assert diff == []
    assert "search_parameters" in names  # inserted by 0002, bumped by every SearchParameter write
