"""Framework-free request and response values passed to interaction handlers.

Why: handlers are ``handle(request, ctx) -> FhirResponse`` so that the HTTP adapter, batch and
transaction Bundles and the loader all call them the same way (ARCHITECTURE.md: "Handlers
return values, not Flask responses").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, urlencode

from fhir_server.storage.repository import StoredVersion


@dataclass
class FhirRequest:
    method: str
    res_type: str | None = None
    res_id: str | None = None
    vid: str | None = None
    operation: str | None = None
    #: (compartment type, id) of ``Patient/123/Observation``
    compartment: tuple[str, str] | None = None
    #: query (or form) parameters in the order given; repeated names stay separate
    params: list[tuple[str, str]] = field(default_factory=list)
    #: header names in lower case
    headers: dict[str, str] = field(default_factory=dict)
    resource: dict[str, Any] | None = None
    body: bytes = b""
    content_type: str | None = None
    #: the client's network address (for audit records)
    client_address: str | None = None
    #: x5t#S256 of the TLS client certificate the connection presented, if any (RFC 8705)
    client_certificate: str | None = None
    #: the path and query string as received, kept for a signed request (security/signing.py)
    raw_path: str | None = None
    raw_query: str | None = None

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())

    def param(self, name: str) -> str | None:
        for key, value in self.params:
            if key == name:
                return value
        return None

    @property
    def prefer(self) -> dict[str, str]:
        """``Prefer`` header as a dict, e.g. ``{"return": "minimal", "handling": "strict"}``."""
        out: dict[str, str] = {}
        for part in (self.header("prefer") or "").split(","):
            for item in part.split(";"):
                key, _, value = item.strip().partition("=")
                if key:
                    out[key.strip().lower()] = value.strip().strip('"')
        return out

    @property
    def query_string(self) -> str:
        return urlencode(self.params)

    def search_params(self) -> list[tuple[str, str]]:
        """Parameters that are not about the format of the response."""
        return [(k, v) for k, v in self.params if k not in ("_format", "_pretty")]


def parse_query(query: str) -> list[tuple[str, str]]:
    return parse_qsl(query, keep_blank_values=True)


@dataclass
class FhirResponse:
    status: int
    #: the resource to return, or None; ``body`` may hold its JSON already serialised
    resource: dict[str, Any] | None = None
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    version: StoredVersion | None = None

    @classmethod
    def for_version(cls, status: int, version: StoredVersion, *, body: bool = True) -> FhirResponse:
        headers = {"ETag": version.etag, "Last-Modified": version.last_modified}
        resp = cls(status, headers=headers, version=version)
        if body and version.content is not None:
            resp.body = version.content
        return resp
