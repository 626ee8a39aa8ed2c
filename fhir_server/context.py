"""The request context: what a handler needs besides the request itself.

Why: handlers stay pure functions of ``(request, ctx)``. The context carries the repository,
settings, search engine and public base URL, and, inside a transaction Bundle, the open
session, so that nested handlers join the Bundle's database transaction instead of opening
their own.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fhir_server.config import Settings
from fhir_server.storage.repository import Repository, Session

if TYPE_CHECKING:
    from fhir_server.audit.interactions import RequestAuditor
    from fhir_server.search.engine import SearchEngine
    from fhir_server.search.reindex import JobRunner
    from fhir_server.security.keys import SigningKeys
    from fhir_server.security.tenancy import Access
    from fhir_server.security.tokens import Principal
    from fhir_server.validation.conformance import ProfileStore


@dataclass
class RequestContext:
    repo: Repository
    settings: Settings
    search: SearchEngine
    base_url: str
    #: the open session of an enclosing transaction Bundle, if any
    active_session: Session | None = None
    #: background jobs (``$reindex``) of this process; None where jobs cannot be started
    jobs: JobRunner | None = None
    #: the worker's StructureDefinitions and compiled profiles (validation/conformance.py)
    profiles: ProfileStore | None = None
    #: who the request acts for (its access token); None when auth is off (security/)
    principal: Principal | None = None
    #: where this request's audit records go; None when audit is off (audit/)
    auditor: RequestAuditor | None = None
    #: what the request may see and change (security/tenancy.py); None: everything
    access: Access | None = None
    #: the keys that sign published documents (workflow/documents.py)
    document_keys: SigningKeys | None = None

    @contextmanager
    def session(self, write: bool = False) -> Iterator[Session]:
        """Join the enclosing transaction if there is one, else open a new one."""
        if self.active_session is not None:
            yield self.active_session
            return
        with self.repo.session(write=write, access=self.access) as sess:
            yield sess

    def full_url(self, relative: str) -> str:
        return f"{self.base_url}/{relative}"

    def child(self, session: Session) -> RequestContext:
        return RequestContext(
            self.repo,
            self.settings,
            self.search,
            self.base_url,
            session,
            self.jobs,
            self.profiles,
            self.principal,
            self.auditor,
            self.access,
            self.document_keys,
        )
