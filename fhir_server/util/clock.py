"""Timestamps for resource versions: integer microseconds since the epoch, UTC.

Why integers: both databases compare them exactly and fast, and ``meta.lastUpdated`` written
from them round-trips to the same key used by ``_since``/``_at`` history queries.
"""

from __future__ import annotations

import functools
import threading
import time
from datetime import UTC, datetime
from email.utils import format_datetime

_lock = threading.Lock()
_last = 0


def now_us() -> int:
    """Current time in µs, strictly increasing within this process."""
    global _last
    with _lock:
        now = time.time_ns() // 1000
        if now <= _last:
            now = _last + 1
        _last = now
        return now


def instant(us: int) -> str:
    """FHIR ``instant`` for ``us``: ``2024-01-02T03:04:05.123456Z``."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second(seconds)}.{micros:06d}Z"


@functools.lru_cache(maxsize=256)
def _second(seconds: int) -> str:
    # A Bundle's resources share a handful of seconds; strftime per call was 3% of ingest.
    return datetime.fromtimestamp(seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")


def http_date(us: int) -> str:
    """RFC 7231 date for ``Last-Modified``."""
    return format_datetime(datetime.fromtimestamp(us // 1_000_000, tz=UTC), usegmt=True)


def from_http_date(text: str) -> int | None:
    from email.utils import parsedate_to_datetime

    try:
        dt = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return int(dt.timestamp()) * 1_000_000
