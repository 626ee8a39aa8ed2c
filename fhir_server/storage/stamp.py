"""Has any resource of a type changed? One indexed query at most once per ``ttl`` seconds.

Why: caches of conformance resources (profiles, implementation-guide rules) serve every write,
so they must not query per write, yet a StructureDefinition stored through another worker must
be seen within a second. Every create, update and delete gives the resource a new, larger
``updated_us``, so the largest ``updated_us`` of the type (an index lookup on
``(res_type, updated_us)``) changes exactly when one of them changed.
"""

from __future__ import annotations

import threading
import time

from sqlalchemy import func, select

from fhir_server.storage.repository import Repository
from fhir_server.storage.schema import resources


class TypeStamp:
    def __init__(self, repo: Repository, res_type: str, ttl: float = 1.0) -> None:
        self.repo = repo
        self.res_type = res_type
        self.ttl = ttl
        self._stamp: int | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    def changed(self) -> bool:
        """True the first time, and when the type changed since the last call that said so."""
        now = time.monotonic()
        if now - self._checked < self.ttl:
            return False
        with self._lock:
            if now - self._checked < self.ttl:
                return False
            query = select(func.max(resources.c.updated_us)).where(resources.c.res_type == self.res_type)
            with self.repo.session(side=True) as session:  # its own connection: never flushes a writer's rows
                stamp = session.conn.execute(query).scalar()
            self._checked = time.monotonic()
            if self._stamp is not None and stamp == self._stamp:
                return False
            self._stamp = stamp if stamp is not None else 0
            return True

    def expire(self) -> None:
        """Check again at the next call (this worker just wrote one)."""
        self._checked = float("-inf")
        self._stamp = None
