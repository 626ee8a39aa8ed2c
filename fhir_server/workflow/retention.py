"""What is kept: a consultation's archive for at least three years, a signed report unchanged.

Why a write hook on Bundle: 001 §7.4 c) keeps the archived consultation (request, case data,
opinions, report) for at least three years, and a signed document is evidence only while it is
exactly what was signed. Every entrance — DELETE, conditional delete, PUT, a transaction entry —
reaches ``Session.update``/``delete``, so one hook refuses them all (409, saying until when).
Past the retention period the owner may delete an archive (its history is kept as for any
resource; ``fhir-server`` has no purge of history rows).
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.security.categories import is_archive
from fhir_server.storage.repository import Repository, Session, StoredVersion
from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range
from fhir_server.workflow.shared_records import as_stored

DAY_US = 86_400_000_000
#: 001 §7.4 c): at least three years (and a leap day)
MIN_RETENTION_DAYS = 3 * 365 + 1


class Retention:
    def __init__(self, days: int = MIN_RETENTION_DAYS) -> None:
        self.days = max(days, MIN_RETENTION_DAYS)

    def install(self, repo: Repository) -> None:
        repo.write_hooks["Bundle"] = self.before_write

    def before_write(
        self, session: Session, res_id: str, resource: dict[str, Any] | None, current: StoredVersion | None
    ) -> None:
        if current is None or current.deleted:
            return
        stored = as_stored(current)
        if is_archive(stored):
            what = "a consultation's archive"
        elif stored.get("type") == "document" and stored.get("signature"):
            what = "a signed document"
        else:
            return
        if resource is not None:
            raise FhirError("conflict", f"Bundle/{res_id} is {what}: it never changes (publish or archive anew)")
        until = self.kept_until(stored, current.updated_us)
        if now_us() < until:
            raise FhirError(
                "conflict", f"Bundle/{res_id} is {what}, retained until {instant(until)}: it cannot be deleted before"
            )

    def kept_until(self, bundle: dict[str, Any], fallback_us: int) -> int:
        start = fallback_us
        if isinstance(bundle.get("timestamp"), str):
            try:
                start = parse_range(bundle["timestamp"])[0]
            except ValueError:
                pass
        return max(start, fallback_us) + self.days * DAY_US
