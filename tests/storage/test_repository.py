"""Repository on SQLite and PostgreSQL: versions, history apart from current rows, atomic writes."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest
from sqlalchemy import func, select

from fhir_server.errors import FhirError
from fhir_server.storage.schema import idx_quantity, idx_reference, idx_string, idx_token, resource_history, resources


def _count(services, table, rid: int) -> int:  # type: ignore[no-untyped-def]
    with services.repo.session() as s:
        return int(s.conn.execute(select(func.count()).select_from(table).where(table.c.rid == rid)).scalar_one())


def test_versions_are_kept_apart_from_current(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    with repo.session(write=True) as s:
        v1 = s.create({"resourceType": "Patient", "name": [{"family": "Zhou"}]})
    with repo.session(write=True) as s:
        v2 = s.update(s.read_current("Patient", v1.res_id), {"resourceType": "Patient", "name": [{"family": "Wu"}]})
    assert (v1.version, v2.version) == (1, 2)
    assert _count(services, resources, v1.rid) == 1
    assert _count(services, resource_history, v1.rid) == 1
    with repo.session() as s:
        assert s.read_version("Patient", v1.res_id, 1).resource()["name"][0]["family"] == "Zhou"
        assert s.read_current("Patient", v1.res_id).resource()["name"][0]["family"] == "Wu"


def test_index_rows_follow_the_current_version(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    with repo.session(write=True) as s:
        v1 = s.create({"resourceType": "Patient", "name": [{"family": "Qian"}], "gender": "female"})
    assert _count(services, idx_string, v1.rid) >= 1 and _count(services, idx_token, v1.rid) >= 1
    with repo.session(write=True) as s:
        s.delete(s.read_current("Patient", v1.res_id))
    assert _count(services, idx_string, v1.rid) == 0 and _count(services, idx_token, v1.rid) == 0


def test_failed_transaction_writes_nothing(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    marker = f"Atomic{uuid.uuid4().hex[:8]}"
    with pytest.raises(FhirError):
        with repo.session(write=True) as s:
            s.create({"resourceType": "Patient", "name": [{"family": marker}]})
            s.flush()
            raise FhirError("invalid", "a later entry failed")
    with repo.session() as s:
        rows = s.conn.execute(
            select(func.count()).select_from(idx_string).where(idx_string.c.exact == marker)
        ).scalar_one()
    assert rows == 0


def test_stale_version_is_a_conflict(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    with repo.session(write=True) as s:
        v1 = s.create({"resourceType": "Patient"})
    with repo.session(write=True) as s:
        s.update(v1, {"resourceType": "Patient", "gender": "male"})
    with pytest.raises(FhirError) as err:
        with repo.session(write=True) as s:
            s.update(v1, {"resourceType": "Patient", "gender": "female"})  # v1 is no longer current
    assert err.value.status == 409
    with repo.session() as s:
        assert s.read_current("Patient", v1.res_id).version == 2


def test_postgres_queries_yield_to_gevent(postgres_url) -> None:  # type: ignore[no-untyped-def]
    """The server runs psycopg under gevent: four 0.5 s queries must overlap, not queue."""
    script = textwrap.dedent(
        f"""
        from gevent import monkey; monkey.patch_all()
        import time, gevent
        from sqlalchemy import text
        from fhir_server.storage.engine import make_engine
        engine = make_engine({postgres_url!r})
        def query():
            with engine.connect() as conn:
                conn.execute(text("SELECT pg_sleep(0.5)"))
        query()
        start = time.time()
        gevent.joinall([gevent.spawn(query) for _ in range(4)])
        print(round(time.time() - start, 2))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert float(out.stdout) < 1.2


def test_update_of_a_deleted_resource_keeps_the_deletion_in_history(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    with repo.session(write=True) as s:
        v1 = s.create({"resourceType": "Patient", "gender": "male"})
    with repo.session(write=True) as s:
        s.delete(s.read_current("Patient", v1.res_id))
    with repo.session(write=True) as s:
        v3 = s.update(s.read_current("Patient", v1.res_id), {"resourceType": "Patient", "gender": "other"})
    assert v3.version == 3
    with repo.session() as s:
        deleted = s.read_version("Patient", v1.res_id, 2)
        assert deleted.deleted and deleted.content is None
        assert s.read_version("Patient", v1.res_id, 1).resource()["gender"] == "male"
        codes = s.conn.execute(select(idx_token.c.code).where(idx_token.c.rid == v1.rid)).scalars().all()
    assert "other" in codes and "male" not in codes


@pytest.mark.parametrize("count", [3, 120], ids=["one-statement", "copy"])
def test_bulk_create_writes_every_column(services, count: int) -> None:  # type: ignore[no-untyped-def]
    """Both PostgreSQL write paths (multi-row INSERT, binary COPY) store every column type."""
    repo = services.repo
    tag = f"Bulk{uuid.uuid4().hex[:8]}"
    with repo.session(write=True) as s:
        made = [
            s.create(
                {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": tag}], "text": f"{tag} {i} 中医"},
                    "valueQuantity": {"value": 1.50, "unit": "mmol/L", "system": "http://unitsofmeasure.org"},
                    "effectiveDateTime": "2024-03-01T08:00:00+08:00",
                    "subject": {"reference": f"Patient/p{i}"},
                }
            )
            for i in range(count)
        ]
    rids = [v.rid for v in made]
    with repo.session() as s:
        rows = s.read_many(rids)
        tagged = s.conn.execute(select(idx_token.c.rid).where(idx_token.c.rid.in_(rids), idx_token.c.code == tag)).all()
        quantities = s.conn.execute(
            select(idx_quantity.c.value, idx_quantity.c.lo).where(idx_quantity.c.rid == rids[-1])
        ).all()
        refs = s.conn.execute(select(idx_reference.c.target_id).where(idx_reference.c.rid == rids[-1])).scalars().all()
    assert [r.resource()["code"]["text"] for r in rows] == [f"{tag} {i} 中医" for i in range(count)]
    assert all(r.version == 1 and r.deleted is False and r.method == "POST" and r.idx_mask for r in rows)
    assert {r[0] for r in tagged} == set(rids)
    assert quantities and quantities[0][0] == 1.5 and quantities[0][1] == pytest.approx(1.45)
    assert f"p{count - 1}" in refs


def test_same_id_created_twice_is_a_conflict_and_writes_nothing(services) -> None:  # type: ignore[no-untyped-def]
    repo = services.repo
    res_id = uuid.uuid4().hex
    with repo.session(write=True) as s:
        s.create({"resourceType": "Patient", "gender": "male"}, res_id=res_id, method="PUT")
    with pytest.raises(FhirError) as err:
        with repo.session(write=True) as s:
            s.create({"resourceType": "Patient", "gender": "female"}, res_id=res_id, method="PUT")
    assert err.value.status == 409
    with repo.session() as s:
        assert s.read_current("Patient", res_id).resource()["gender"] == "male"
