"""``Access.owns_readable`` (security/tenancy.py) never lets a read by id see a row the SQL
predicate hides.

The shortcut spares a read of one of the institution's own rows the access predicate. Checked
against the predicate itself, on a database holding one row of every combination of owner,
category, labels, minority and patient, for accesses of every kind: each row the shortcut
accepts must be one the predicate finds. And it must accept the plain case, or it spares nothing.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, insert, select
from sqlalchemy.engine import Engine

from fhir_server.security import categories as cat
from fhir_server.security import labels as lab
from fhir_server.security.tenancy import Access, RowAccess
from fhir_server.storage.schema import metadata, resources

NOW = 1_800_000_000_000_000
DAY = 86_400_000_000
OWNERS = ("h1", "h2", None)
CATEGORIES = (0, *(1 << bit for bit in range(8)))
LABELS = tuple(range(lab.ALL + 1))
MINOR_UNTIL = (None, NOW - DAY, NOW + DAY)
PATIENTS = (None, "p1", "p2")
ROWS = [RowAccess(*combo) for combo in itertools.product(OWNERS, PATIENTS, CATEGORIES, LABELS, MINOR_UNTIL)]

ACCESSES = {
    "platform": Access(platform=True),
    "institution": Access(organization="h1"),
    "institution, some categories": Access(organization="h1", readable=cat.PATIENT | cat.CLINICAL | cat.CATALOGUE),
    "institution, no catalogue": Access(organization="h1", readable=cat.PATIENT_DATA),
    "institution, not cleared": Access(organization="h1", clearance=0, minors=False),
    "institution, cleared for minors only": Access(organization="h1", clearance=lab.MINOR, minors=True),
    "institution, infectious but no minors": Access(organization="h1", clearance=lab.INFECTIOUS, minors=False),
    "supervisor": Access(organization="h1", cross_tenant=cat.CONSULTATION),
    "patient in context": Access(organization="h1", patient="p1"),
    "resident": Access(patient="p1", own_records=True),
    "no institution": Access(),
}


@pytest.fixture(scope="module")
def engine() -> Iterator[Engine]:
    engine = create_engine("sqlite://")
    metadata.create_all(engine, tables=[resources, metadata.tables["access_grants"]])
    with engine.begin() as conn:
        conn.execute(
            insert(resources),
            [
                {
                    "rid": n + 1,
                    "res_type": "Observation",
                    "res_id": str(n),
                    "version": 1,
                    "updated_us": NOW - DAY,
                    "deleted": False,
                    "method": "POST",
                    "tenant": row.tenant,
                    "patient": row.patient,
                    "category": row.category,
                    "labels": row.labels,
                    "minor_until_us": row.minor_until_us,
                }
                for n, row in enumerate(ROWS)
            ],
        )
    yield engine
    engine.dispose()


@pytest.mark.parametrize("name", sorted(ACCESSES))
def test_the_shortcut_accepts_no_row_the_predicate_hides(engine: Engine, name: str) -> None:
    access = ACCESSES[name]
    predicate = access.visible(resources, at_us=NOW)
    query = select(resources.c.rid)
    with engine.connect() as conn:
        visible = set(conn.execute(query.where(predicate) if predicate is not None else query).scalars())
    accepted = {n + 1 for n, row in enumerate(ROWS) if access.owns_readable(row, NOW)}
    assert accepted <= visible, [ROWS[rid - 1] for rid in sorted(accepted - visible)][:5]
    if name.startswith(("platform", "institution")):
        assert accepted, "the shortcut accepts nothing: every read would pay for the predicate"
    if name == "platform":
        assert accepted == visible == set(range(1, len(ROWS) + 1))
