"""Index-table predicates take the SQL form each database plans well (search/index_match.py)."""

from __future__ import annotations

import pathlib
from typing import Any

from sqlalchemy import event, select
from sqlalchemy.dialects import postgresql, sqlite

from fhir_server.app import build_services
from fhir_server.config import Settings
from fhir_server.search.query import compile_query, index_lookup
from fhir_server.search.registry import get_registry
from fhir_server.storage.engine import refresh_statistics
from fhir_server.storage.schema import idx_token, resources


def _statement(params: list[tuple[str, str]]):  # type: ignore[no-untyped-def]
    """The shape of a search page: the matching rows' content, not only their rids (an index on
    resources would cover those alone)."""
    compiled = compile_query(get_registry(), "Observation", params)
    where = (resources.c.res_type == "Observation", *compiled.filters)
    return select(resources.c.rid, resources.c.content).where(*where), compiled


def test_postgresql_gets_correlated_exists_and_sqlite_an_uncorrelated_in() -> None:
    stmt, _ = _statement([("code", "http://loinc.org|8867-4"), ("subject:missing", "true")])
    pg = str(stmt.compile(dialect=postgresql.dialect()))
    assert "WHERE resources.res_type = %(res_type_1)s AND EXISTS (SELECT 1" in pg and "AND NOT EXISTS (SELECT 1" in pg
    assert "idx_token.rid = resources.rid" in pg
    lite = str(stmt.compile(dialect=sqlite.dialect()))
    assert "AND (resources.rid IN (SELECT idx_token.rid" in lite and "EXISTS" not in lite
    assert "AND NOT (resources.rid IN (SELECT idx_reference.rid" in lite
    assert "= 1" not in lite  # a predicate, not a boolean column compared with 1


def test_one_value_stays_visible_to_the_count_shortcut() -> None:
    _, compiled = _statement([("code", "http://loinc.org|8867-4")])
    lookup = index_lookup(compiled.filters[0])
    assert lookup is not None and lookup[0] is idx_token


def test_sqlite_search_starts_from_the_index_rows(tmp_path: pathlib.Path) -> None:
    """The page statement the engine runs for ``Observation?code=`` looks the few matching
    Observations up by primary key instead of visiting every Observation (with statistics from
    ``refresh_statistics``, and whatever they say about how rare the type looks)."""
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'plan.db'}", data_dir=tmp_path)
    services = build_services(settings)
    statements: list[tuple[str, Any]] = []

    def capture(_conn, _cursor, statement, parameters, _context, _many):  # type: ignore[no-untyped-def]
        statements.append((statement, parameters))

    try:
        with services.repo.session(write=True) as s:
            for i in range(2000):
                code = "8867-4" if i == 0 else f"x-{i}"
                s.create(
                    {
                        "resourceType": "Observation",
                        "status": "final",
                        "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                    }
                )
        refresh_statistics(services.repo.engine)
        event.listen(services.repo.engine, "before_cursor_execute", capture)
        with services.repo.session() as s:
            page = services.search.search(s, "Observation", [("code", "http://loinc.org|8867-4")], 100)
            assert len(page.versions) == 1
            sql, params = next((q, p) for q, p in statements if "idx_token" in q)
            plan = " / ".join(row[3] for row in s.conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql, params))
        assert "USING INTEGER PRIMARY KEY" in plan and "ix_resources_type_updated" not in plan, plan
    finally:
        event.remove(services.repo.engine, "before_cursor_execute", capture)
        services.repo.dispose()
