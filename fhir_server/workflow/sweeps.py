"""The workflow's clock: deadlines and due dates that pass without a request to notice them.

Why a thread in every worker: an invitation's answer deadline (workflow/overdue.py) or a
follow-up's date (workflow/follow_up.py) passes while nobody writes anything, so someone has to
look; any worker may, and several do, so each job writes what it finds once whoever looks (each
item in its own transaction, under the optimistic lock of the record it marks).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy.exc import DBAPIError

from fhir_server.errors import FhirError
from fhir_server.search.engine import Cursor, SearchEngine
from fhir_server.storage.repository import Repository
from fhir_server.util.clock import now_us

log = logging.getLogger(__name__)
_PAGE = 200

#: a job: given the time, does what is due; returns how many things it did
Job = Callable[[int], int]


class Sweeps:
    """Runs each job every ``interval`` seconds, in a thread of the worker (0: never)."""

    def __init__(self, interval: float, jobs: Iterable[Job]) -> None:
        self.interval = interval
        self.jobs = list(jobs)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        if self.interval <= 0 or not self.jobs:
            return
        self._thread = threading.Thread(target=self._run, name="workflow-sweeps", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def run_once(self, now: int | None = None) -> int:
        now = now_us() if now is None else now
        done = 0
        for job in self.jobs:
            try:
                done += job(now)
            except Exception:  # the next pass tries again; one job's failure must not stop the others
                log.exception("workflow sweep %r failed", job)
        return done

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.run_once()


def matching_ids(
    repo: Repository,
    search: SearchEngine,
    res_type: str,
    params: list[tuple[str, str]],
    keep: Callable[[dict[str, Any]], bool] = lambda _: True,
) -> list[str]:
    """The ids of every current ``res_type`` the search finds and ``keep`` accepts, all pages.

    A sweep's sessions come from the main pool, not the side pool: a sweep holds no request's
    connection, and its writes' own lookups (profiles, catalogue stamps) take side connections —
    several workers' sweeps writing through side connections would wait on each other."""
    found: list[str] = []
    cursor = None
    with repo.session() as session:
        while True:
            page = search.search(session, res_type, params, _PAGE, cursor)
            found += [v.res_id for v in page.versions if keep(v.resource())]
            if not page.has_next or not page.versions:
                return found
            cursor = Cursor(page.keys[-1], page.versions[-1].rid)


def each(ids: Iterable[str], handle: Callable[[str], int], what: str) -> int:
    """``handle`` each id in its own transaction; the sum of what they did. One that changed
    meanwhile (another worker got there first: a conflict) or failed in the database (e.g. a
    deadlock with another worker's pass) is left for the next pass."""
    done = 0
    for res_id in ids:
        try:
            done += handle(res_id)
        except FhirError as exc:
            log.debug("%s %s left alone: %s", what, res_id, exc)
        except DBAPIError as exc:
            log.warning("%s %s not handled this time: %s", what, res_id, exc)
    return done
