"""A small bounded LRU, and one set of caches per repository.

Why per repository: rids and versions are only unique within one database, and a process can
hold several (the test suite opens SQLite and PostgreSQL side by side), so a cache keyed by
``(rid, version)`` must never be shared between databases. The caches hang off the
``Repository`` object through a weak reference, so they go away with it.

Why bounded: a process serves many searches over its lifetime; expansions and parsed
CodeSystems are kept only for the most recently used handful.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from collections.abc import Hashable
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

V = TypeVar("V")

#: how many expansions (one per ValueSet reference) and parsed resources each repository keeps
EXPANSIONS_KEPT = 256
PARSED_KEPT = 64


class LRU(Generic[V]):
    """A least-recently-used map with at most ``size`` entries; safe to share between threads."""

    def __init__(self, size: int) -> None:
        if size < 1:
            raise ValueError("an LRU needs room for at least one entry")
        self.size = size
        self._data: OrderedDict[Hashable, V] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable) -> V | None:
        with self._lock:
            value = self._data.get(key)
            if value is not None:
                self._data.move_to_end(key)
            return value

    def put(self, key: Hashable, value: V) -> None:
        with self._lock:
            self._data[key] = value
            self._data.move_to_end(key)
            while len(self._data) > self.size:
                self._data.popitem(last=False)

    def pop(self, key: Hashable) -> None:
        with self._lock:
            self._data.pop(key, None)

    def clear(self) -> None:
        with self._lock:
            self._data.clear()

    def __len__(self) -> int:
        return len(self._data)


@dataclass
class TerminologyCaches:
    """What one repository's terminology lookups remember between searches."""

    #: ValueSet reference → ``Expansion`` (codes and the stored versions they were computed from)
    expansions: LRU[Any] = field(default_factory=lambda: LRU(EXPANSIONS_KEPT))
    #: (res_type, kind, rid, version, updated_us) → (business version, parsed form): a ValueSet's
    #: JSON, a CodeSystem's ``CodeSystemView`` (kind "") or ``MemoryContent`` (kind "content")
    parsed: LRU[Any] = field(default_factory=lambda: LRU(PARSED_KEPT))


_BY_REPOSITORY: weakref.WeakKeyDictionary[Any, TerminologyCaches] = weakref.WeakKeyDictionary()
_REGISTRY_LOCK = threading.Lock()


def caches_for(repository: Any) -> TerminologyCaches:
    """The caches of ``repository`` (created on first use)."""
    with _REGISTRY_LOCK:
        caches = _BY_REPOSITORY.get(repository)
        if caches is None:
            caches = _BY_REPOSITORY[repository] = TerminologyCaches()
        return caches
