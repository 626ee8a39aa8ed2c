"""``$deidentify``: a de-identified copy (R25, 脱敏) under the one rule set of ``security/deidentify.py``.

- ``GET|POST [base]/[type]/[id]/$deidentify?scope=…`` — the stored resource, de-identified;
- ``POST [base]/$deidentify`` with a ``Parameters`` body: ``resource`` (any resource, or a Bundle:
  every entry, references kept consistent) and ``scope``.

``scope`` (required) names what the pseudonyms are stable within — typically the consultation
(``ServiceRequest/123``): the same patient gets the same pseudonym within one scope and an
unlinkable one in another. ``statistics=true`` (for statistics exports, R24) makes identifier values
the keyed, irreversible statistics hash of (system, value) instead, the same in every export and
scope. Nothing is stored. Definition: profiles/operationdefinition-deidentify.json.
"""

from __future__ import annotations

import functools
import pathlib

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.rest.interactions.common import read_live, require_id, require_type
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import BOOLEAN, STRING, Inputs
from fhir_server.security import crypto
from fhir_server.security.deid_key import deidentify_key
from fhir_server.security.deidentify import DeidContext, DeidentificationError, deidentify

_INSTANCE = {"scope": (STRING, False), "statistics": (BOOLEAN, False)}
_SYSTEM = {**_INSTANCE, "resource": ("resource:*", False)}  # any resource, a Bundle too


@functools.lru_cache(maxsize=4)
def _key(data_dir: str) -> bytes:
    return deidentify_key(pathlib.Path(data_dir))


def _context(ctx: RequestContext, inputs: Inputs) -> DeidContext:
    scope = inputs.get("scope")
    if not scope:
        raise FhirError("invalid-param", "$deidentify needs scope (e.g. the consultation, ServiceRequest/123)", "scope")
    hashed = None
    if inputs.get("statistics"):  # R24: irreversible identifier hashes, the same in every export
        ring = ctx.repo.fields.ring
        hashed = functools.partial(crypto.statistics_hash, ring)
    try:
        return DeidContext(_key(str(ctx.settings.data_dir)), scope, identifier_hash=hashed)
    except ValueError as exc:
        raise FhirError("invalid-param", f"$deidentify: {exc}", "scope") from None


def instance(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "deidentify", _INSTANCE)
    deid = _context(ctx, inputs)
    res_type, res_id = require_type(req.res_type), require_id(req.res_id)
    with ctx.session() as session:
        resource = read_live(session, res_type, res_id).resource()
    return FhirResponse(200, resource=_run(resource, deid))


def system(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "deidentify", _SYSTEM)
    resource = inputs.get("resource")
    if resource is None:
        raise FhirError("invalid-param", "$deidentify needs the resource to de-identify", "resource")
    return FhirResponse(200, resource=_run(resource, _context(ctx, inputs)))


def _run(resource: dict, deid: DeidContext) -> dict:  # type: ignore[type-arg]
    try:
        return deidentify(resource, deid)
    except DeidentificationError as exc:
        raise FhirError("processing", f"$deidentify: {exc}") from None
