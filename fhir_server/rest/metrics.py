"""Prometheus text exposition of request counts and latency (R30 monitoring).

Why hand-written: four counters do not justify a dependency, and the format is simple
(https://prometheus.io/docs/instrumenting/exposition_formats/). Figures are per worker process.
"""

from __future__ import annotations

import os
import threading
from collections import defaultdict

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, int], int] = defaultdict(int)
        self._buckets = [0] * (len(_BUCKETS) + 1)
        self._sum = 0.0
        self._count = 0

    def observe(self, method: str, status: int, seconds: float) -> None:
        with self._lock:
            self._requests[(method, status)] += 1
            self._sum += seconds
            self._count += 1
            for i, bound in enumerate(_BUCKETS):
                if seconds <= bound:
                    self._buckets[i] += 1
            self._buckets[-1] += 1

    def render(self) -> str:
        pid = os.getpid()
        lines = ["# TYPE fhir_http_requests_total counter"]
        with self._lock:
            for (method, status), n in sorted(self._requests.items()):
                lines.append(f'fhir_http_requests_total{{method="{method}",status="{status}",pid="{pid}"}} {n}')
            lines.append("# TYPE fhir_http_request_seconds histogram")
            for bound, n in zip(_BUCKETS, self._buckets, strict=False):
                lines.append(f'fhir_http_request_seconds_bucket{{le="{bound}",pid="{pid}"}} {n}')
            lines.append(f'fhir_http_request_seconds_bucket{{le="+Inf",pid="{pid}"}} {self._buckets[-1]}')
            lines.append(f'fhir_http_request_seconds_sum{{pid="{pid}"}} {self._sum:.6f}')
            lines.append(f'fhir_http_request_seconds_count{{pid="{pid}"}} {self._count}')
        return "\n".join(lines) + "\n"
