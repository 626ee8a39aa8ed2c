"""rest-hook: an HTTP request to the subscriber's endpoint; any 2xx is delivery.

Every request carries ``X-Notification-Id`` (the idempotency key: a retry repeats it), the
subscription and the event number, and the headers the Subscription lists (``channel.header``,
e.g. the subscriber's own authorization). A redirect is not followed: the endpoint is what the
subscriber registered.
"""

from __future__ import annotations

import urllib3

from fhir_server.notify.channels import DeliveryError

#: a subscriber that does not answer in this time is retried later
TIMEOUT = urllib3.Timeout(connect=3.0, read=5.0)
_POOL = urllib3.PoolManager(num_pools=64, maxsize=4, retries=False, timeout=TIMEOUT)


def send(method: str, url: str, body: bytes | None, headers: dict[str, str], extra: tuple[str, ...]) -> None:
    all_headers = dict(headers)
    for line in extra:
        name, sep, value = line.partition(":")
        if sep and name.strip():
            all_headers[name.strip()] = value.strip()
    if body is not None:
        all_headers.setdefault("Content-Type", "application/fhir+json")
    try:
        resp = _POOL.request(method, url, body=body, headers=all_headers, redirect=False)
    except urllib3.exceptions.HTTPError as exc:
        raise DeliveryError(f"{method} {url}: {type(exc).__name__}: {exc}") from None
    if not 200 <= resp.status < 300:
        raise DeliveryError(f"{method} {url}: HTTP {resp.status}")
