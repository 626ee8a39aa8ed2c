"""Sub-commands of ``fhir-server`` (click), kept apart from ``cli.py`` so gevent patches first."""

from __future__ import annotations

import logging
import pathlib
import sys

import click

from fhir_server.config import Settings

_DEFAULTS = Settings()


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
    logging.basicConfig(
        level=log_level.upper(), stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@cli.command()
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
    )
    run(settings)


@cli.group()
def db() -> None:
    """Database maintenance."""


@db.command()
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


@cli.command()
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
