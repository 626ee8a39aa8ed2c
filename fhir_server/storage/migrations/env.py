"""Alembic environment: runs migrations on the connection the server hands it."""

from __future__ import annotations

from alembic import context

from fhir_server.storage.schema import metadata

config = context.config
connection = config.attributes.get("connection")

if connection is None:  # invoked by the alembic CLI (developers: ``alembic revision``)
    from fhir_server.storage.engine import make_engine

    engine = make_engine(config.get_main_option("sqlalchemy.url"))
    with engine.connect() as connection:
        context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
else:
    context.configure(connection=connection, target_metadata=metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()
