"""Access columns for rows stored before tenancy existed (migration 0013), by ``fhir-server db upgrade``.

Why a step of its own rather than SQL in the migration: the columns come from the same rules the
writes use (security/tenancy.py: the patient from the search index of the resource, the category
from its type and ``category``, labels from ``meta.security`` and the patient's, the owner from
the patient or the institution it names), which need the parsed resource. Patients go first, so
the rows about them inherit their labels and owner. Rows still at category 0 are the ones left
to do, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy import select

from fhir_server.formats import json as fjson
from fhir_server.security import categories as cat
from fhir_server.storage.repository import Repository
from fhir_server.storage.schema import resources

_UPDATE = "UPDATE resources SET tenant = ?, patient = ?, category = ?, labels = ?, minor_until_us = ? WHERE rid = ?"


def backfill(repo: Repository, batch_size: int = 500, progress: Callable[[int], None] | None = None) -> int:
    """Compute the access columns of every row that has none yet; returns how many."""
    r = resources
    done = 0
    sql = _UPDATE.replace("?", "%s") if repo.postgres else _UPDATE
    for patients_first in (True, False):
        which = r.c.res_type == "Patient" if patients_first else r.c.res_type != "Patient"
        last = 0
        while True:
            with repo.session(write=True) as session:
                rows = session.conn.execute(
                    select(r.c.rid, r.c.res_type, r.c.deleted, r.c.content)
                    .where(r.c.category == 0, r.c.rid > last, which)
                    .order_by(r.c.rid)
                    .limit(batch_size)
                ).all()
                if not rows:
                    break
                changes = []
                for row in rows:
                    if row.deleted or row.content is None:  # a deletion marker: the platform's from now on
                        columns = (None, None, cat.of_type(row.res_type, False), 0, None)
                    else:
                        resource = fjson.loads(row.content)
                        access = repo.row_access(session, resource, repo.indexer(resource, row.rid), None)
                        columns = (access.tenant, access.patient, access.category, access.labels, access.minor_until_us)
                    changes.append((*columns, row.rid))
                session.conn.exec_driver_sql(sql, changes)
                last = rows[-1].rid
            done += len(rows)
            if progress is not None:
                progress(len(rows))
    return done
