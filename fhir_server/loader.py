"""``fhir-server load``: Bundles, NDJSON and single resources into the database, streaming.

Why it works this way:
- It writes through the same handlers as the REST API (transaction/batch Bundles go through
  the Bundle processor; other resources through create/update), so validation and indexing
  are the same whichever door data comes in by.
- Transaction Bundles are all-or-nothing by definition, so each is read whole; collections,
  other Bundles and NDJSON are streamed entry by entry (``ijson``) and committed in batches,
  so a file of any size loads in constant memory.
- A rejected resource is reported with its reason and location and loading goes on.
"""

from __future__ import annotations

import bz2
import gzip
import io
import logging
import pathlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import IO, Any

import ijson
from tqdm import tqdm

from fhir_server.app import Services, build_services
from fhir_server.config import Settings
from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.rest.interactions import batch
from fhir_server.rest.messages import FhirRequest
from fhir_server.storage.engine import refresh_statistics
from fhir_server.validation import check_resource

log = logging.getLogger("fhir_server.loader")


@dataclass
class Report:
    loaded: int = 0
    rejected: list[tuple[str, str, str]] = field(default_factory=list)  # (file, where, reason)

    def reject(self, file: str, where: str, reason: str) -> None:
        self.rejected.append((file, where, reason))
        log.warning("rejected %s %s: %s", file, where, reason)

    def summary(self) -> str:
        lines = [f"loaded {self.loaded} resources, rejected {len(self.rejected)}"]
        lines += [f"  {f} {w}: {r}" for f, w, r in self.rejected[:50]]
        if len(self.rejected) > 50:
            lines.append(f"  ... and {len(self.rejected) - 50} more")
        return "\n".join(lines)


def open_file(path: pathlib.Path) -> IO[bytes]:
    if path.suffix == ".gz":
        return gzip.open(path, "rb")
    if path.suffix == ".bz2":
        return bz2.open(path, "rb")
    return open(path, "rb")


def _plain_name(path: pathlib.Path) -> str:
    return path.name.removesuffix(".gz").removesuffix(".bz2")


def _fix_numbers(value: Any) -> Any:
    """ijson yields Decimals: keep floats where they round-trip, exact decimals otherwise."""
    if isinstance(value, dict):
        return {k: _fix_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_fix_numbers(v) for v in value]
    if isinstance(value, Decimal):
        return fjson.parse_decimal(str(value))
    return value


class Loader:
    def __init__(
        self, settings: Settings, batch_size: int = 500, progress: bool = True, services: Services | None = None
    ) -> None:
        self.settings = settings
        self.services = services or build_services(settings)
        self.batch_size = batch_size
        self.progress = progress
        self.base = settings.base_url or f"http://{settings.host}:{settings.port}/fhir"

    def _ctx(self) -> RequestContext:
        services = self.services
        return RequestContext(services.repo, self.settings, services.search, self.base, profiles=services.profiles)

    def load_files(self, paths: list[pathlib.Path]) -> Report:
        report = Report()
        bar = tqdm(total=sum(p.stat().st_size for p in paths), unit="B", unit_scale=True, disable=not self.progress)
        for path in paths:
            try:
                self._load_file(path, report, bar)
            except FhirError as err:
                report.reject(str(path), "", err.diagnostics)
            except (OSError, ijson.JSONError, EOFError) as err:
                report.reject(str(path), "", f"cannot read: {err}")
        bar.close()
        if report.loaded:
            refresh_statistics(self.services.repo.engine)  # the planner's figures for the new rows
        return report

    def _load_file(self, path: pathlib.Path, report: Report, bar: tqdm) -> None:
        name = _plain_name(path)
        size = path.stat().st_size
        if name.endswith(".ndjson"):
            with open_file(path) as fh:
                self._load_stream(self._ndjson(fh, str(path), report), str(path), report)
            bar.update(size)
            return
        with open_file(path) as fh:
            head = _peek_header(fh)
        if head.get("resourceType") == "Bundle" and head.get("type") in ("transaction", "batch"):
            with open_file(path) as fh:
                bundle = fjson.loads(fh.read())
            self._load_bundle(bundle, str(path), report)
        elif head.get("resourceType") == "Bundle":
            with open_file(path) as fh:
                entries = (
                    (f"Bundle.entry[{i}]", _fix_numbers(e.get("resource")))
                    for i, e in enumerate(ijson.items(fh, "entry.item"))
                )
                self._load_stream(entries, str(path), report)
        else:
            with open_file(path) as fh:
                self._load_stream(iter([("", fjson.loads(fh.read()))]), str(path), report)
        bar.update(size)

    def _ndjson(self, fh: IO[bytes], file: str, report: Report) -> Iterator[tuple[str, Any]]:
        for lineno, line in enumerate(io.BufferedReader(fh), start=1):  # type: ignore[arg-type]
            if not line.strip():
                continue
            try:
                yield f"line {lineno}", fjson.loads(line)
            except FhirError as err:
                report.reject(file, f"line {lineno}", err.diagnostics)

    def _load_bundle(self, bundle: dict[str, Any], file: str, report: Report) -> None:
        self.services.search_params.maybe_refresh()  # SearchParameters a running server registered
        req = FhirRequest(method="POST", resource=bundle, headers={"prefer": "return=minimal"})
        try:
            resp = batch.handle(req, self._ctx())
        except FhirError as err:
            report.reject(file, "transaction", err.diagnostics)
            return
        for i, entry in enumerate(resp.resource.get("entry", [])):  # type: ignore[union-attr]
            status = entry["response"]["status"]
            if status.startswith("2"):
                report.loaded += 1
            else:
                issue = entry["response"].get("outcome", {}).get("issue", [{}])[0]
                report.reject(file, f"Bundle.entry[{i}]", f"{status} {issue.get('diagnostics', '')}")

    def _load_stream(self, items: Iterator[tuple[str, Any]], file: str, report: Report) -> None:
        chunk: list[tuple[str, dict[str, Any]]] = []
        for where, resource in items:
            if not isinstance(resource, dict):
                report.reject(file, where, "not a resource")
                continue
            try:
                check_resource(resource)
            except FhirError as err:
                report.reject(file, where, err.diagnostics)
                continue
            chunk.append((where, resource))
            if len(chunk) >= self.batch_size:
                self._commit(chunk, file, report)
                chunk = []
        if chunk:
            self._commit(chunk, file, report)

    def _commit(self, chunk: list[tuple[str, dict[str, Any]]], file: str, report: Report) -> None:
        """Store a batch in one transaction; if it fails, store its resources one by one."""
        self.services.search_params.maybe_refresh()
        try:
            with self.services.repo.session(write=True) as session:
                for _, resource in chunk:
                    _store(session, resource)
            report.loaded += len(chunk)
        except FhirError:
            for where, resource in chunk:
                try:
                    with self.services.repo.session(write=True) as session:
                        _store(session, resource)
                    report.loaded += 1
                except FhirError as err:
                    report.reject(file, where, err.diagnostics)


def _store(session: Any, resource: dict[str, Any]) -> None:
    """Keep the resource's id when it has one (update-as-create), else assign one."""
    res_id = resource.get("id")
    if res_id is None:
        session.create(resource)
        return
    current = session.read_current(resource["resourceType"], res_id)
    if current is None:
        session.create(resource, res_id, method="PUT")
    else:
        session.update(current, resource)


def _peek_header(fh: IO[bytes]) -> dict[str, str]:
    """Top-level ``resourceType`` and ``type`` of a JSON document, reading no more than needed."""
    found: dict[str, str] = {}
    try:
        for prefix, event, value in ijson.parse(fh):
            if prefix in ("resourceType", "type") and event == "string":
                found[prefix] = value
                if len(found) == 2:
                    break
    except ijson.JSONError as err:
        raise FhirError("malformed", f"Invalid JSON: {err}") from None
    return found
