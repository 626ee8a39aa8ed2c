"""Human-readable request numbers: every consultation, diagnosis and referral request gets one.

Why the server assigns it: 001 §7.2 a) "系统自动生成唯一会诊编号" — the number is what people quote
on the phone and print on the report, so it must be unique across every institution and short.
The form is ``HZ-2026-000123`` (会诊, a consultation), ``ZD-…`` (诊断, a diagnosis request) or
``ZZ-…`` (转诊, a referral): the year (China Standard Time) and a counter of that year shared by
every worker, taken in the request's own transaction (``counters``), so numbers are never
repeated and a rolled-back request gives its number up with it. A request that already carries a
consultation number keeps it.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.workflow import machine as m

SYSTEM = "http://fhir.telefhir.cn/sid/consultation-number"
CHINA = timezone(timedelta(hours=8))
PREFIX = {"consultation": "HZ", "offline": "HZ", "multicentre": "HZ", "diagnosis": "ZD", "referral": "ZZ"}


def install(repo: Repository) -> None:
    repo.write_hooks["ServiceRequest"] = assign


def assign(session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None) -> None:
    if resource is None or current is not None or not _is_telemedicine(resource):
        return
    identifiers = resource.get("identifier") if isinstance(resource.get("identifier"), list) else []
    if any(isinstance(i, dict) and i.get("system") == SYSTEM for i in identifiers):
        return
    year = datetime.now(CHINA).year
    number = next_value(session, f"request-number-{year}")
    kind = m.kind_of({"code": {"coding": _service_codings(resource)}})
    resource["identifier"] = [
        *identifiers,
        {"use": "official", "system": SYSTEM, "value": f"{PREFIX[kind]}-{year}-{number:06d}"},
    ]


def next_value(session: Session, name: str) -> int:
    """The next value of counter ``name`` (from 1), in the session's transaction."""
    placeholder = "%s" if session.repo.postgres else "?"
    sql = (
        f"INSERT INTO counters (name, value) VALUES ({placeholder}, 1) "
        "ON CONFLICT (name) DO UPDATE SET value = counters.value + 1 RETURNING value"
    )
    return int(session.conn.exec_driver_sql(sql, (name,)).scalar_one())


def _service_codings(resource: dict[str, Any]) -> list[dict[str, Any]]:
    found = []
    for concept in [resource.get("code"), *(resource.get("category") or [])]:
        for coding in (concept or {}).get("coding", []) if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and coding.get("system") == m.SERVICE_TYPES:
                found.append(coding)
    return found


def _is_telemedicine(resource: dict[str, Any]) -> bool:
    return bool(_service_codings(resource))
