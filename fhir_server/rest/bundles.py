"""Building response Bundles (history, searchset) from stored versions without re-parsing them.

Why ``orjson.Fragment``: stored resources are already JSON, so a page of 100 resources is
spliced into the Bundle as bytes instead of being parsed and serialised again.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any
from urllib.parse import urlencode

import orjson

from fhir_server.errors import FhirError
from fhir_server.storage.repository import StoredVersion
from fhir_server.util.clock import instant, now_us


def raw_resource(version: StoredVersion) -> Any:
    return orjson.Fragment(version.content)


def encode_cursor(*parts: int) -> str:
    return base64.urlsafe_b64encode(".".join(str(p) for p in parts).encode()).decode().rstrip("=")


def decode_cursor(token: str, n: int) -> tuple[int, ...]:
    try:
        padded = token + "=" * (-len(token) % 4)
        parts = tuple(int(p) for p in base64.urlsafe_b64decode(padded).decode().split("."))
    except (ValueError, UnicodeDecodeError):
        raise FhirError("invalid-param", f"Invalid paging cursor {token!r}") from None
    if len(parts) != n:
        raise FhirError("invalid-param", f"Invalid paging cursor {token!r}")
    return parts


def page_link(base: str, path: str, params: Iterable[tuple[str, str]]) -> str:
    query = urlencode(list(params))
    return f"{base}/{path}" + (f"?{query}" if query else "")


def history_entry(base: str, v: StoredVersion) -> dict[str, Any]:
    method = v.method if v.method in ("POST", "PUT", "DELETE") else "PUT"
    if v.deleted:
        url, status = f"{v.res_type}/{v.res_id}", "204"
    elif method == "POST":
        url, status = v.res_type, "201"
    else:
        url, status = f"{v.res_type}/{v.res_id}", "201" if v.version == 1 else "200"
    entry: dict[str, Any] = {"fullUrl": f"{base}/{v.res_type}/{v.res_id}"}
    if not v.deleted:
        entry["resource"] = raw_resource(v)
    entry["request"] = {"method": method, "url": url}
    entry["response"] = {"status": status, "etag": v.etag, "lastModified": instant(v.updated_us)}
    return entry


def bundle(
    bundle_type: str, entries: list[dict[str, Any]], links: list[tuple[str, str]], total: int | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {"resourceType": "Bundle", "type": bundle_type, "meta": {"lastUpdated": instant(now_us())}}
    if total is not None:
        out["total"] = total
    out["link"] = [{"relation": rel, "url": url} for rel, url in links]
    if entries:
        out["entry"] = entries
    return out
