"""The alembic migrations build exactly the tables of storage/schema.py, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import select

from fhir_server.storage.migrate import current_revision, head_revision
from fhir_server.storage.schema import counters, metadata


def test_migrated_database_matches_the_schema(services) -> None:  # type: ignore[no-untyped-def]
    engine = services.repo.engine
    assert current_revision(engine) == head_revision(engine) == "0015"
    with engine.connect() as conn:

        def this_dialect(obj, _name, _type, _reflected, _compare_to) -> bool:  # type: ignore[no-untyped-def]
            ddl_if = getattr(obj, "_ddl_if", None)  # Index(...).ddl_if(dialect=...): one database only
            return ddl_if is None or ddl_if.dialect in (None, conn.dialect.name)

        context = MigrationContext.configure(conn, opts={"include_object": this_dialect})
        diff = compare_metadata(context, metadata)
        names = set(conn.execute(select(counters.c.name)).scalars())
    assert diff == []
    assert "search_parameters" in names  # inserted by 0002, bumped by every SearchParameter write


def test_upgrade_computes_the_access_columns_of_rows_stored_before_tenancy(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A database at 0012 with data: ``fhir-server db upgrade`` migrates it and gives every stored
    row its owner, patient, category and labels, as a write would have (security/backfill.py)."""
    import pathlib
    import subprocess
    import sys

    import orjson
    from sqlalchemy import text

    from fhir_server.security import categories, labels
    from fhir_server.storage.engine import make_engine
    from fhir_server.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    upgrade(engine, "0012")
    patient = {"resourceType": "Patient", "id": "p1", "birthDate": "2015-03-04",
               "managingOrganization": {"reference": "Organization/o1"},
               "meta": {"security": [{"system": labels.SYSTEM, "code": "infectious-disease"}]}}  # fmt: skip
    obs = {"resourceType": "Observation", "id": "o1", "status": "final", "code": {"text": "x"},
           "category": [{"coding": [{"code": "laboratory"}]}], "subject": {"reference": "Patient/p1"}}  # fmt: skip
    rows = [
        (1, "Observation", "o1", orjson.dumps(obs), False),
        (2, "Patient", "p1", orjson.dumps(patient), False),
        (3, "CodeSystem", "cs", orjson.dumps({"resourceType": "CodeSystem", "id": "cs"}), False),
        (4, "Condition", "gone", None, True),
    ]
    with engine.begin() as conn:
        for rid, res_type, res_id, content, deleted in rows:
            conn.execute(
                text(
                    "INSERT INTO resources (rid, res_type, res_id, version, updated_us, deleted, method, "
                    "idx_mask, content) VALUES (:rid, :t, :i, 1, 1, :d, 'POST', 0, :c)"
                ),
                {"rid": rid, "t": res_type, "i": res_id, "d": deleted, "c": content},
            )
    engine.dispose()
    cli = pathlib.Path(sys.executable).with_name("fhir-server")
    result = subprocess.run([str(cli), "db", "upgrade", "--database-url", url, "--data-dir", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "access columns computed for 4 stored resources" in result.stdout
    engine = make_engine(url)
    with engine.connect() as conn:
        got = {r.res_id: r for r in conn.execute(text("SELECT * FROM resources"))}
    engine.dispose()
    assert (got["p1"].tenant, got["p1"].patient, got["p1"].category) == ("o1", "p1", categories.PATIENT)
    assert got["p1"].labels == labels.INFECTIOUS and got["p1"].minor_until_us is not None
    assert (got["o1"].tenant, got["o1"].patient, got["o1"].category) == ("o1", "p1", categories.EXAMINATION)
    assert got["o1"].labels == labels.INFECTIOUS and got["o1"].minor_until_us == got["p1"].minor_until_us
    assert (got["cs"].tenant, got["cs"].category) == (None, categories.CATALOGUE)
    assert got["gone"].category == categories.CLINICAL
