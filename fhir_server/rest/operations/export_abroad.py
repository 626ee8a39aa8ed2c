"""``$export-abroad`` and ``$export-ledger``: data sent out of the country, and their ledger (R28).

The standard (001 §8.5): consultation data does not leave the country unless a security
assessment allowed it; what leaves is strictly de-identified; a ledger records what was sent,
to whom, why and under which measures. So the only way this server sends records abroad is:

``POST [base]/$export-abroad`` with a ``Parameters`` body: ``patient`` (Reference, repeated),
``recipient``, ``country`` (ISO 3166-1 alpha-2, not CN), ``purpose``, ``assessment`` (the
reference of the security assessment that allowed the transfer) and, optionally, ``measures``.
The answer is a ``collection`` Bundle of those patients' records as the requester may see them,
pseudonymized through and through (security/deidentify.py, ids and references too, under a scope
of this export alone: two exports cannot be linked), and the ledger entry is written before it
is sent (``X-Export-Id``; the entry holds the Bundle's SHA-256). Every parameter is required but
``measures``; a missing one is a 400 and nothing is sent. An export is an institution's act: the
platform's clients and an institution's own system may make one, a person's token may not.

``GET [base]/$export-ledger`` lists the entries (``_since``, ``_count``) as a ``Parameters``
resource, one ``export`` part each: an institution sees its own exports, the platform and
supervisors every institution's.
"""

from __future__ import annotations

import hashlib
import re
import uuid
from collections import Counter
from typing import Any

from sqlalchemy import insert, select

from fhir_server.context import RequestContext
from fhir_server.errors import FhirError
from fhir_server.formats import json as fjson
from fhir_server.rest.interactions.common import read_live
from fhir_server.rest.messages import FhirRequest, FhirResponse
from fhir_server.rest.operations.inputs import INTEGER, REFERENCE, STRING, Inputs
from fhir_server.search.engine import Cursor
from fhir_server.security.deid_key import deidentify_key
from fhir_server.security.deidentify import DeidContext, DeidentificationError, deidentify_bundle
from fhir_server.storage.engine import begin_write
from fhir_server.storage.schema import export_ledger as X
from fhir_server.storage.schema import resources
from fhir_server.util.clock import instant, now_us
from fhir_server.util.fhirdate import parse_range

_SPEC = {
    "patient": (REFERENCE, True),
    "recipient": (STRING, False),
    "country": (STRING, False),
    "purpose": (STRING, False),
    "assessment": (STRING, False),
    "measures": (STRING, False),
}
_REQUIRED = ("recipient", "country", "purpose", "assessment")
_COUNTRY = re.compile(r"[A-Z]{2}")
#: resources one export may carry: it is held whole to be de-identified as one Bundle
MAX_RESOURCES = 10_000
_PAGE = 1000
DEFAULT_MEASURES = (
    "pseudonymized under the platform's de-identification rule set (security/deidentify.py), ids, "
    "references and identifiers included, unlinkable to other exports; sent over TLS"
)


def export(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "export-abroad", _SPEC)
    for name in _REQUIRED:
        if not inputs.get(name):
            raise FhirError("invalid-param", f"$export-abroad needs {name} (R28: the ledger records it)", name)
    country = str(inputs.get("country")).upper()
    if not _COUNTRY.fullmatch(country):
        raise FhirError("invalid-param", "country: an ISO 3166-1 alpha-2 code such as SG", "country")
    if country == "CN":
        raise FhirError("invalid-param", "country CN is not abroad: this operation is for data leaving the country")
    patients = [_patient_id(ref) for ref in inputs.all("patient")]
    if not patients:
        raise FhirError("invalid-param", "$export-abroad needs at least one patient", "patient")
    export_id = str(uuid.uuid4())
    bundle = _records(ctx, patients)
    try:
        sent = deidentify_bundle(bundle, DeidContext(deidentify_key(ctx.settings.data_dir), f"export:{export_id}"))
    except DeidentificationError as exc:
        raise FhirError("processing", f"$export-abroad: {exc}") from None
    body = fjson.dumps(sent)
    counts = Counter(e["resource"]["resourceType"] for e in bundle["entry"])
    principal = ctx.principal
    with begin_write(ctx.repo.engine) as conn:
        conn.execute(
            insert(X).values(
                export_id=export_id,
                recorded_us=now_us(),
                organization=principal.organization if principal else None,
                requester=_requester(ctx),
                recipient=inputs.get("recipient"),
                country=country,
                purpose=inputs.get("purpose"),
                assessment=inputs.get("assessment"),
                measures=inputs.get("measures") or DEFAULT_MEASURES,
                content=", ".join(f"{n} {t}" for t, n in sorted(counts.items())),
                patients=len(patients),
                resources=len(bundle["entry"]),
                digest=hashlib.sha256(body).hexdigest(),
            )
        )
    return FhirResponse(200, body=body, headers={"X-Export-Id": export_id})


def ledger(req: FhirRequest, ctx: RequestContext) -> FhirResponse:
    inputs = Inputs(req, "export-ledger", {"_since": (STRING, False), "_count": (INTEGER, False)})
    query = select(X).order_by(X.c.recorded_us.desc()).limit(min(inputs.get("_count") or 100, 1000))
    since = inputs.get("_since")
    if since:
        try:
            query = query.where(X.c.recorded_us >= parse_range(since)[0])
        except ValueError:
            raise FhirError("invalid-param", f"_since must be a FHIR instant, not {since!r}", "_since") from None
    access = ctx.access
    if access is not None and not access.platform and not access.cross_tenant:
        query = query.where(X.c.organization == f"Organization/{access.organization}")
    with ctx.repo.engine.connect() as conn:
        rows = conn.execute(query).all()
    return FhirResponse(200, resource={"resourceType": "Parameters", "parameter": [_entry(row) for row in rows]})


def _entry(row: Any) -> dict[str, Any]:
    strings = ("export_id", "organization", "requester", "recipient", "country", "purpose", "assessment",
               "measures", "content", "digest")  # fmt: skip
    parts: list[dict[str, Any]] = [{"name": "recorded", "valueInstant": instant(row.recorded_us)}]
    parts += [{"name": name, "valueString": getattr(row, name)} for name in strings if getattr(row, name)]
    parts += [{"name": name, "valueInteger": getattr(row, name)} for name in ("patients", "resources")]
    return {"name": "export", "part": parts}


def _patient_id(ref: dict[str, Any]) -> str:
    text = str(ref.get("reference") or "")
    kind, _, ident = text.partition("/")
    if kind != "Patient" or not ident:
        raise FhirError("invalid-param", f"patient must reference a Patient, not {text!r}", "patient")
    return ident


def _records(ctx: RequestContext, patients: list[str]) -> dict[str, Any]:
    """The patients' records as the requester may see them, as one collection Bundle."""
    r = resources
    entries: list[dict[str, Any]] = []
    with ctx.session() as session:
        for patient in patients:
            read_live(session, "Patient", patient)  # 404 for a patient the requester cannot see
            cursor = None
            while True:
                page = ctx.search.search(session, None, [], _PAGE, cursor, where=[r.c.patient == patient])
                for version in page.versions:
                    entries.append({"fullUrl": ctx.full_url(f"{version.res_type}/{version.res_id}"),
                                    "resource": version.resource()})  # fmt: skip
                if len(entries) > MAX_RESOURCES:
                    raise FhirError("too-costly", f"$export-abroad sends at most {MAX_RESOURCES} resources at once")
                if not page.has_next or not page.versions:
                    break
                cursor = Cursor(page.keys[-1], page.versions[-1].rid)
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def _requester(ctx: RequestContext) -> str:
    principal = ctx.principal
    if principal is None:
        return "(auth off)"
    return f"{principal.client_id} ({principal.user})" if principal.user else principal.client_id
