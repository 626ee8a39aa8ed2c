"""Black-box search through the HTTP API on real data, checked against an independent oracle.

Real data: the Synthea hospital and practitioner batches, four Synthea patient transactions and a
selection of R4 examples (PUT with their ids), loaded once per database (SQLite and a fresh
PostgreSQL database of its own, so no other test's data can change an answer).

The oracle is plain Python over the JSON that was sent: ids as the server assigned them (from the
``location`` of each response entry), references rewritten the way a transaction resolves them
(``urn:uuid:`` to the new ``Type/id``, ``Type?identifier=…`` to the one resource with that
identifier). It never looks at the server's search. Each query's answer (all pages, following
``next``) must equal the oracle's, and every oracle answer relied upon is asserted to be non-empty.
"""

from __future__ import annotations

import bz2
import json
import re
import time
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any
from urllib.parse import urlencode

import pytest

from tests.conftest import fresh_database, shared_data

BASE = "http://testserver/fhir"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
SYNTHEA_ID = "https://github.com/synthetichealth/synthea"
CLINICAL = "http://terminology.hl7.org/CodeSystem/condition-clinical"

SYNTHEA_PATIENTS = [
    "085e81c0-7a95-ef02-16ef-aa1b4344deed",  # Ruben688 Medhurst46
    "f500d29f-be62-9008-43c5-e2c173dde9bd",  # Rosario163 Medhurst46: the same family name
    "ab5537a3-8608-5f56-53f5-d10b00eb4680",  # Lucas404 León820: an accent; the only metabolic panels (mg/dL)
    "8a4c9c04-1524-9f1c-d65b-9b17e4520fef",  # Zandra428 O'Hara248: an infant, no BMI
]
R4_EXAMPLES = [
    "patient-example.json",  # Patient/example, birthDate 1974-12-25
    "patient-example-chinese.json",  # the same birth date, name only as text
    "patient-example-f001-pieter.json",
    "patient-example-f201-roel.json",
    "patient-example-a.json",  # no birth date
    "patient-example-d.json",
    "patient-example-animal.json",
    "patient-example-newborn.json",  # no name
    "patient-example-infant-twin-1.json",
    "observation-example-bloodpressure-dar.json",  # systolic component, diastolic absent
    "observation-example-bloodpressure-cancel.json",
    "observation-example-f001-glucose.json",  # effectivePeriod with a start only, mmol/L
    "observation-example-f003-co2.json",  # effectivePeriod
    "observation-example-f005-hemoglobin.json",  # g/dL
    "observation-example-f204-creatinine.json",  # a quantity in a SNOMED "unit"
    "observation-example-bmi.json",
    "observation-example-body-temperature.json",
    "observation-example-body-length.json",  # two LOINC codings
    "observation-example-head-circumference.json",
    "observation-example-respiratory-rate.json",
    "observation-example-vitals-panel.json",
    "location-example.json",
    "location-example-hl7hq.json",
    "location-example-ambulance.json",
    "organization-example.json",
    "organization-example-f001-burgers.json",
    "organization-example-good-health-care.json",
    "encounter-example.json",
    "encounter-example-home.json",
    "encounter-example-f001-heart.json",
    "encounter-example-f201-20130404.json",
    "condition-example-f201-fever.json",
    "condition-example-f001-heart.json",
    "condition-example-stroke.json",
    "condition-example2.json",
]

# UCUM units of the loaded quantities: mass concentrations with their factor to g/L, and the others,
# which are not comparable to g/L. A unit in neither set fails the load: the oracle would be unsure.
G_PER_L = {"g/L": Decimal(1), "mg/dL": Decimal("0.01"), "g/dL": Decimal(10), "mg/L": Decimal("0.001")}
NOT_MASS_CONCENTRATION = {
    "mm[Hg]", "/min", "%", "fL", "mmol/L", "cm", "kg", "{score}", "kg/m2", "10*3/uL", "10*6/uL", "pg", "Cel", "kPa",
}  # fmt: skip


# -- the oracle's FHIR semantics -------------------------------------------------------------------
MIN_DT = datetime(1, 1, 2, tzinfo=UTC)
MAX_DT = datetime(9999, 12, 30, tzinfo=UTC)
_DATE = re.compile(r"^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(\.\d+)?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$")
PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")


def date_range(value: str) -> tuple[datetime, datetime]:
    """[low, high) in UTC of a FHIR date/dateTime/instant at its precision; no timezone means UTC."""
    m = _DATE.match(value)
    assert m, value
    y, mo, d, hh, mi, ss, frac, tz = m.groups()
    if mo is None:
        return datetime(int(y), 1, 1, tzinfo=UTC), datetime(int(y) + 1, 1, 1, tzinfo=UTC)
    if d is None:
        lo = datetime(int(y), int(mo), 1, tzinfo=UTC)
        return lo, (lo + timedelta(days=32)).replace(day=1)
    if hh is None:
        lo = datetime(int(y), int(mo), int(d), tzinfo=UTC)
        return lo, lo + timedelta(days=1)
    tzinfo: timezone = UTC
    if tz and tz != "Z":
        sign = -1 if tz[0] == "-" else 1
        tzinfo = timezone(sign * timedelta(hours=int(tz[1:3]), minutes=int(tz[4:6])))
    lo = datetime(int(y), int(mo), int(d), int(hh), int(mi), int(ss or 0), tzinfo=tzinfo).astimezone(UTC)
    if frac:
        digits = min(len(frac) - 1, 6)
        lo += timedelta(microseconds=int(frac[1:].ljust(6, "0")[:6]))
        return lo, lo + timedelta(microseconds=10 ** (6 - digits))
    return lo, lo + (timedelta(seconds=1) if ss else timedelta(minutes=1))


def period_range(period: dict[str, Any]) -> tuple[datetime, datetime]:
    lo = date_range(period["start"])[0] if "start" in period else MIN_DT
    hi = date_range(period["end"])[1] if "end" in period else MAX_DT
    return lo, hi


def split_prefix(value: str) -> tuple[str, str]:
    if value[:2] in PREFIXES and (value[2:3].isdigit() or value[2:3] == "-"):
        return value[:2], value[2:]
    return "eq", value


def range_match(prefix: str, r: tuple[Any, Any], p: tuple[Any, Any]) -> bool:
    """R4 prefix semantics between the resource's range r and the parameter's range p (both [lo, hi))."""
    contained = p[0] <= r[0] and r[1] <= p[1]
    return {
        "eq": contained,
        "ne": not contained,
        "gt": r[1] > p[1],
        "lt": r[0] < p[0],
        "ge": r[1] > p[1] or contained,
        "le": r[0] < p[0] or contained,
        "sa": r[0] >= p[1],
        "eb": r[1] <= p[0],
    }[prefix]


def date_match(ranges: Iterable[tuple[datetime, datetime]], query: str) -> bool:
    prefix, value = split_prefix(query)
    p = date_range(value)
    return any(range_match(prefix, r, p) for r in ranges)


def number_match(value: Decimal, query: str) -> bool:
    """A number against ``[prefix]number``: ``eq``/``ne`` with the precision implied by the digits."""
    prefix, raw = split_prefix(query)
    v = Decimal(raw)
    half = Decimal(5).scaleb(v.as_tuple().exponent - 1)  # type: ignore[operator]
    within = v - half <= value < v + half
    return {"eq": within, "ne": not within, "gt": value > v, "lt": value < v, "ge": value >= v, "le": value <= v}[
        prefix
    ]


def norm(text: str) -> str:
    """Case- and accent-insensitive form of a string for string search."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c)).casefold()


def name_parts(names: list[dict[str, Any]]) -> list[str]:
    parts: list[str] = []
    for n in names:
        parts += [n[k] for k in ("family", "text") if k in n]
        parts += [s for k in ("given", "prefix", "suffix") for s in n.get(k, [])]
    return parts


def string_match(values: Iterable[str], query: str, modifier: str = "") -> bool:
    if modifier == "exact":
        return any(v == query for v in values)
    if modifier == "contains":
        return any(norm(query) in norm(v) for v in values)
    return any(norm(v).startswith(norm(query)) for v in values)


def codings(concept: dict[str, Any] | None) -> list[dict[str, Any]]:
    return (concept or {}).get("coding", [])


def token_match(codes: list[dict[str, Any]], query: str) -> bool:
    """``code``, ``system|code``, ``|code`` or ``system|``; a comma is an OR."""
    for q in query.split(","):
        if "|" not in q:
            if any(c.get("code") == q for c in codes):
                return True
            continue
        system, code = q.split("|", 1)
        for c in codes:
            if (system == "" and "system" not in c and c.get("code") == code) or (
                system and c.get("system") == system and (code == "" or c.get("code") == code)
            ):
                return True
    return False


def obs_dates(obs: dict[str, Any]) -> list[tuple[datetime, datetime]]:
    if "effectiveDateTime" in obs:
        return [date_range(obs["effectiveDateTime"])]
    if "effectivePeriod" in obs:
        return [period_range(obs["effectivePeriod"])]
    assert not any(k.startswith("effective") for k in obs), obs["id"]
    return []


def to_dec(x: Any) -> Decimal:
    return Decimal(str(x))


# -- loading ----------------------------------------------------------------------------------------
_LOCATION = re.compile(r"(?:^|/)([A-Z][A-Za-z]+)/([A-Za-z0-9\-.]{1,64})/_history/\d+$")


class RealData:
    """The loaded resources as stored (``Type/id`` → resource, in creation order) and a client."""

    def __init__(self, client: Any, label: str) -> None:
        self.client = client
        self.label = label
        self.res: dict[str, dict[str, Any]] = {}
        self.synthea_patients: list[str] = []  # keys, in SYNTHEA_PATIENTS order
        self.by_identifier: dict[tuple[str, str, str], str] = {}

    # the oracle's view
    def of(self, rtype: str) -> list[dict[str, Any]]:
        return [r for r in self.res.values() if r["resourceType"] == rtype]

    @staticmethod
    def key(resource: dict[str, Any]) -> str:
        return f"{resource['resourceType']}/{resource['id']}"

    @staticmethod
    def ref(element: dict[str, Any] | None) -> str | None:
        """The relative ``Type/id`` a Reference element points at (absolute URLs of this server made relative)."""
        ref = (element or {}).get("reference")
        if ref and ref.startswith(BASE + "/"):
            ref = ref[len(BASE) + 1 :]
        return ref

    def resolve(self, element: dict[str, Any] | None) -> dict[str, Any] | None:
        ref = self.ref(element)
        return self.res.get(ref) if ref else None

    # loading through the API
    def post_bundle(self, bundle: dict[str, Any]) -> None:
        resp = self.client.post("/fhir", data=json.dumps(bundle), content_type="application/fhir+json")
        assert resp.status_code == 200, resp.get_data(as_text=True)[:2000]
        out = resp.get_json()["entry"]
        assert len(out) == len(bundle["entry"])
        full_urls: dict[str, str] = {}
        for sent, got in zip(bundle["entry"], out, strict=True):
            assert got["response"]["status"].split()[0] in {"200", "201"}, got["response"]
            m = _LOCATION.search(got["response"]["location"])
            assert m, got["response"]["location"]
            assert m.group(1) == sent["resource"]["resourceType"]
            sent["resource"]["id"] = m.group(2)
            full_urls[sent["fullUrl"]] = f"{m.group(1)}/{m.group(2)}"
        for sent in bundle["entry"]:
            resource = sent["resource"]
            self._rewrite(resource, full_urls)
            self.res[self.key(resource)] = resource
            for ident in resource.get("identifier", []):
                if "system" in ident and "value" in ident:
                    self.by_identifier[(resource["resourceType"], ident["system"], ident["value"])] = self.key(resource)

    def _rewrite(self, node: Any, full_urls: dict[str, str]) -> None:
        if isinstance(node, list):
            for item in node:
                self._rewrite(item, full_urls)
        elif isinstance(node, dict):
            for k, v in node.items():
                if k == "reference" and isinstance(v, str):
                    node[k] = self._resolve_written(v, full_urls)
                else:
                    self._rewrite(v, full_urls)

    def _resolve_written(self, ref: str, full_urls: dict[str, str]) -> str:
        if ref in full_urls:
            return full_urls[ref]
        if "?" in ref:
            rtype, query = ref.split("?", 1)
            name, _, value = query.partition("=")
            assert name == "identifier" and "|" in value and "&" not in value, ref
            system, code = value.split("|", 1)
            return self.by_identifier[(rtype, system, code)]
        assert not ref.startswith("urn:"), ref
        return ref

    def put(self, resource: dict[str, Any]) -> None:
        resp = self.client.put(
            f"/fhir/{self.key(resource)}", data=json.dumps(resource), content_type="application/fhir+json"
        )
        assert resp.status_code == 201, (self.key(resource), resp.get_data(as_text=True)[:2000])
        self.res[self.key(resource)] = resource

    # searching through the API
    def pages(self, path: str, params: Iterable[tuple[str, str]] = ()) -> list[dict[str, Any]]:
        """Every page of a search, following ``next`` links."""
        query = urlencode(list(params))
        url: str | None = f"/fhir/{path}" + (f"?{query}" if query else "")
        pages: list[dict[str, Any]] = []
        while url:
            resp = self.client.get(url)
            assert resp.status_code == 200, (url, resp.get_data(as_text=True)[:1000])
            bundle = resp.get_json()
            assert bundle["resourceType"] == "Bundle" and bundle["type"] == "searchset"
            pages.append(bundle)
            assert len(pages) < 500, "runaway paging"
            nxt = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
            url = "/fhir/" + nxt[0].split("/fhir/", 1)[1] if nxt else None
        return pages

    def matches(self, path: str, *params: tuple[str, str]) -> list[str]:
        return [
            self.key(e["resource"])
            for page in self.pages(path, params)
            for e in page.get("entry", [])
            if e["search"]["mode"] == "match"
        ]


def qs(params: Iterable[tuple[str, str]]) -> str:
    """A query string for messages (not encoded)."""
    return "&".join(f"{k}={v}" for k, v in params)


def check(actual: list[str], expected: Iterable[str], what: str, nonempty: bool = True) -> None:
    """The server's answer (with duplicates) is exactly the oracle's set."""
    expected = list(expected)
    if nonempty:
        assert expected, f"{what}: the oracle's answer is empty, the query would prove nothing"
    missing = sorted(set(expected) - set(actual))
    extra = sorted(set(actual) - set(expected))
    duplicates = sorted(k for k, n in Counter(actual).items() if n > 1)
    assert not (missing or extra or duplicates), (
        f"{what}: expected {len(set(expected))}, got {len(actual)}; missing {len(missing)} {missing[:4]}, "
        f"unexpected {len(extra)} {extra[:4]}, duplicated {duplicates[:4]}"
    )


def _load(data: RealData) -> None:
    synthea = shared_data("fhir", "synthea")
    examples = shared_data("fhir", "r4-examples")
    for path in sorted(synthea.glob("0-*.json.bz2")):
        data.post_bundle(json.loads(bz2.decompress(path.read_bytes())))
    for name in SYNTHEA_PATIENTS:
        bundle = json.loads(bz2.decompress((synthea / f"{name}.json.bz2").read_bytes()))
        assert bundle["type"] == "transaction" and bundle["entry"][0]["resource"]["resourceType"] == "Patient"
        data.post_bundle(bundle)
        data.synthea_patients.append(data.key(bundle["entry"][0]["resource"]))
    for name in R4_EXAMPLES:
        data.put(json.loads((examples / name).read_text()))
    # the oracle's units are complete
    units = {
        q["code"]
        for obs in data.of("Observation")
        for q in [obs.get("valueQuantity")] + [c.get("valueQuantity") for c in obs.get("component", [])]
        if q and q.get("system") == UCUM
    }
    assert units <= set(G_PER_L) | NOT_MASS_CONCENTRATION, units - set(G_PER_L) - NOT_MASS_CONCENTRATION


def _references(node: Any) -> list[str]:
    if isinstance(node, list):
        return sorted(r for item in node for r in _references(item))
    if isinstance(node, dict):
        found = [v for k, v in node.items() if k == "reference" and isinstance(v, str)]
        return sorted(found + [r for k, v in node.items() if k != "reference" for r in _references(v)])
    return []


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def real(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealData]:
    """Real data loaded once per database into a database of this module's own."""
    from fhir_server.app import build_services, create_app
    from fhir_server.config import Settings

    shared_data("fhir", "synthea")
    shared_data("fhir", "r4-examples")
    with fresh_database(request.param, tmp_path_factory) as url:
        settings = Settings(
            database_url=url, data_dir=tmp_path_factory.mktemp("realdata-dir"), base_url=BASE, auth=False
        )
        services = build_services(settings)
        try:
            data = RealData(create_app(settings, services).test_client(), request.param)
            started = time.perf_counter()
            _load(data)
            loaded = time.perf_counter() - started
            # the oracle's reference rewriting agrees with what was stored (reads, not searches)
            for key, resource in data.res.items():
                if resource["resourceType"] in ("Encounter", "Condition", "Patient"):
                    stored = data.client.get(f"/fhir/{key}").get_json()
                    assert _references(stored) == _references(resource), key
            print(f"\n[{request.param}] loaded {len(data.res)} resources in {loaded:.1f} s")
            yield data
        finally:
            services.repo.dispose()


# -- 1. tokens --------------------------------------------------------------------------------------
def test_token_code_with_and_without_system(real: RealData) -> None:
    observations = real.of("Observation")
    for query in (f"{LOINC}|8310-5", "8310-5", f"{LOINC}|39156-5", "29463-7,8302-2", f"{LOINC}|"):
        expected = [real.key(o) for o in observations if token_match(codings(o["code"]), query)]
        assert len(expected) < len(observations) or query == f"{LOINC}|", query
        check(real.matches("Observation", ("code", query)), expected, f"Observation?code={query}")
    # no coding without a system in the data: an empty answer on purpose
    check(real.matches("Observation", ("code", "|8310-5")), [], "Observation?code=|8310-5", nonempty=False)
    # without _sort, results come in creation order
    expected_order = [real.key(o) for o in observations if token_match(codings(o["code"]), "8302-2")]
    assert real.matches("Observation", ("code", "8302-2"), ("_count", "7")) == expected_order


def test_token_condition_clinical_status(real: RealData) -> None:
    conditions = real.of("Condition")
    for query in ("active", f"{CLINICAL}|resolved"):
        expected = [real.key(c) for c in conditions if token_match(codings(c.get("clinicalStatus")), query)]
        check(real.matches("Condition", ("clinical-status", query)), expected, f"Condition?clinical-status={query}")
    expected = [real.key(c) for c in conditions if not token_match(codings(c.get("clinicalStatus")), "active")]
    check(real.matches("Condition", ("clinical-status:not", "active")), expected, "clinical-status:not=active")


# -- 2. patient-scoped token + date range -------------------------------------------------------------
def _utc_day(value: str) -> str:
    return date_range(value)[0].date().isoformat()


def test_patient_code_and_date_range(real: RealData) -> None:
    patient = real.synthea_patients[2]
    code = f"{LOINC}|29463-7"
    mine = [
        o
        for o in real.of("Observation")
        if real.ref(o.get("subject")) == patient and token_match(codings(o["code"]), code)
    ]
    instants = sorted(date_range(o["effectiveDateTime"])[0] for o in mine)
    lower, upper = instants[1].date().isoformat(), instants[-2].date().isoformat()
    params = [("subject", patient), ("code", code), ("date", f"ge{lower}"), ("date", f"lt{upper}")]
    expected = [
        real.key(o) for o in mine if date_match(obs_dates(o), f"ge{lower}") and date_match(obs_dates(o), f"lt{upper}")
    ]
    assert 0 < len(expected) < len(mine)
    check(real.matches("Observation", *params), expected, f"Observation?{qs(params)}")

    # the timezone counts: an Observation whose UTC day is not its local day
    shifted = next(
        o
        for p in real.synthea_patients
        for o in real.of("Observation")
        if real.ref(o.get("subject")) == p and _utc_day(o["effectiveDateTime"]) != o["effectiveDateTime"][:10]
    )
    subject = real.ref(shifted["subject"])
    theirs = [o for o in real.of("Observation") if real.ref(o.get("subject")) == subject]
    for day in (_utc_day(shifted["effectiveDateTime"]), shifted["effectiveDateTime"][:10]):
        for query in ([f"{day}"], [f"ge{day}", f"le{day}"], [f"sa{day}"], [f"eb{day}"]):
            expected = [real.key(o) for o in theirs if all(date_match(obs_dates(o), q) for q in query)]
            params = [("subject", subject)] + [("date", q) for q in query]
            check(real.matches("Observation", *params), expected, f"Observation?{qs(params)}", nonempty=False)
    inside = real.matches("Observation", ("subject", subject), ("date", _utc_day(shifted["effectiveDateTime"])))
    assert real.key(shifted) in inside
    outside = real.matches("Observation", ("subject", subject), ("date", shifted["effectiveDateTime"][:10]))
    assert real.key(shifted) not in outside


def test_date_on_periods_of_r4_examples(real: RealData) -> None:
    observations = real.of("Observation")
    for query in (
        "2013-04-05",
        "gt2013-04-04",
        "lt2013-04-03",
        "sa2013-04-02",
        "ge2013-04-03",
        "lt2013-04-02T09:00:00Z",
        "gt2100",
        "1999-07-02",
    ):
        expected = [real.key(o) for o in observations if date_match(obs_dates(o), query)]
        check(real.matches("Observation", ("date", query)), expected, f"Observation?date={query}")


# -- 3. strings ---------------------------------------------------------------------------------------
def test_string_name_prefix_case_and_accent_insensitive(real: RealData) -> None:
    patients = real.of("Patient")
    for query in ("med", "MEDHURST46", "leon", "LEÓN820", "o'hara", "van de", "pet", "张", "roel"):
        expected = [real.key(p) for p in patients if string_match(name_parts(p.get("name", [])), query)]
        check(real.matches("Patient", ("name", query)), expected, f"Patient?name={query}")
    expected = [real.key(p) for p in patients if string_match(name_parts(p.get("name", [])), "urst", "contains")]
    check(real.matches("Patient", ("name:contains", "urst")), expected, "Patient?name:contains=urst")


def test_string_family_exact(real: RealData) -> None:
    patients = real.of("Patient")
    for query, nonempty in (("León820", True), ("Medhurst46", True), ("van de Heuvel", True), ("leon820", False)):
        families = [
            real.key(p)
            for p in patients
            if string_match([n["family"] for n in p.get("name", []) if "family" in n], query, "exact")
        ]
        check(real.matches("Patient", ("family:exact", query)), families, f"family:exact={query}", nonempty)


# -- 4. chains ----------------------------------------------------------------------------------------
def test_chain_subject_name(real: RealData) -> None:
    for param, query in (("subject.name", "Medhurst46"), ("subject:Patient.name", "leon"), ("subject.name", "Chalm")):
        expected = []
        for enc in real.of("Encounter"):
            target = real.resolve(enc.get("subject"))
            if target and target["resourceType"] == "Patient" and string_match(name_parts(target["name"]), query):
                expected.append(real.key(enc))
        check(real.matches("Encounter", (param, query)), expected, f"Encounter?{param}={query}")
    medhurst = real.matches("Encounter", ("subject.name", "Medhurst46"))
    assert {real.ref(real.res[k]["subject"]) for k in medhurst} == set(real.synthea_patients[:2])


def test_chain_subject_birthdate(real: RealData) -> None:
    for query in (real.res[real.synthea_patients[2]]["birthDate"], "1974-12-25", "lt1980"):
        expected = []
        for obs in real.of("Observation"):
            target = real.resolve(obs.get("subject"))
            if target and target["resourceType"] == "Patient" and "birthDate" in target:
                if date_match([date_range(target["birthDate"])], query):
                    expected.append(real.key(obs))
        check(
            real.matches("Observation", ("subject:Patient.birthdate", query)),
            expected,
            f"Observation?subject:Patient.birthdate={query}",
        )


# -- 5. _has ------------------------------------------------------------------------------------------
def test_has_reverse_chain(real: RealData) -> None:
    observations = real.of("Observation")
    for param, ref_of, code in (
        ("_has:Observation:subject:code", "subject", "39156-5"),
        ("_has:Observation:patient:code", "subject", f"{LOINC}|2339-0"),
    ):
        having = {real.ref(o.get(ref_of)) for o in observations if token_match(codings(o["code"]), code)}
        expected = [real.key(p) for p in real.of("Patient") if real.key(p) in having]
        assert len(expected) < len(real.of("Patient"))
        check(real.matches("Patient", (param, code)), expected, f"Patient?{param}={code}")


def test_has_nested(real: RealData) -> None:
    code = "2339-0"
    encounters_with = {
        real.ref(o.get("encounter")) for o in real.of("Observation") if token_match(codings(o["code"]), code)
    }
    encounters = [e for e in real.of("Encounter") if real.key(e) in encounters_with]
    providers = {real.ref(e.get("serviceProvider")) for e in encounters}
    expected = [real.key(o) for o in real.of("Organization") if real.key(o) in providers]
    param = "_has:Encounter:service-provider:_has:Observation:encounter:code"
    check(real.matches("Organization", (param, code)), expected, f"Organization?{param}={code}")
    practitioners = {
        real.ref(p.get("individual"))
        for e in encounters
        for p in e.get("participant", [])
        if (real.ref(p.get("individual")) or "").startswith("Practitioner/")
    }
    expected = [real.key(p) for p in real.of("Practitioner") if real.key(p) in practitioners]
    param = "_has:Encounter:practitioner:_has:Observation:encounter:code"
    check(real.matches("Practitioner", (param, code)), expected, f"Practitioner?{param}={code}")


# -- 6. _include / _revinclude ------------------------------------------------------------------------
def _page_entries(page: dict[str, Any]) -> tuple[list[dict[str, Any]], list[str]]:
    matches = [e["resource"] for e in page.get("entry", []) if e["search"]["mode"] == "match"]
    included = [RealData.key(e["resource"]) for e in page.get("entry", []) if e["search"]["mode"] == "include"]
    assert all(e["search"]["mode"] in ("match", "include") for e in page.get("entry", []))
    return matches, included


def test_include_subject_per_page(real: RealData) -> None:
    code = "29463-7"
    pages = real.pages("Observation", [("code", code), ("_include", "Observation:subject"), ("_count", "10")])
    assert len(pages) > 1
    seen = []
    for page in pages:
        matches, included = _page_entries(page)
        seen += [RealData.key(m) for m in matches]
        referenced = {real.ref(real.res[RealData.key(m)].get("subject")) for m in matches}
        check(included, [k for k in referenced if k in real.res], "_include=Observation:subject on one page")
    expected = [real.key(o) for o in real.of("Observation") if token_match(codings(o["code"]), code)]
    check(seen, expected, "Observation?code=29463-7&_include=Observation:subject (matches)")


@pytest.mark.parametrize("count", [10, 3])
def test_revinclude_encounters_per_page(real: RealData, count: int) -> None:
    pages = real.pages("Patient", [("_revinclude", "Encounter:subject"), ("_count", str(count))])
    assert len(pages) > 1
    seen = []
    for page in pages:
        matches, included = _page_entries(page)
        keys = {RealData.key(m) for m in matches}
        seen += list(keys)
        expected = [real.key(e) for e in real.of("Encounter") if real.ref(e.get("subject")) in keys]
        check(included, expected, "_revinclude=Encounter:subject on one page", nonempty=False)
    check(seen, [real.key(p) for p in real.of("Patient")], "Patient?_revinclude=Encounter:subject (matches)")
    total = sum(len(_page_entries(p)[1]) for p in pages)
    assert total == sum(1 for e in real.of("Encounter") if real.ref(e.get("subject")) in real.res)


# -- 7. _sort -----------------------------------------------------------------------------------------
def test_sort_observations_by_date_descending(real: RealData) -> None:
    for patient in real.synthea_patients:
        mine = [o for o in real.of("Observation") if real.ref(o.get("subject")) == patient]
        expected = sorted((date_range(o["effectiveDateTime"])[1] for o in mine), reverse=True)
        found = real.matches("Observation", ("subject", patient), ("_sort", "-date"))
        check(found, [real.key(o) for o in mine], f"Observation?subject={patient}&_sort=-date")
        assert [date_range(real.res[k]["effectiveDateTime"])[1] for k in found] == expected
        paged = real.matches("Observation", ("subject", patient), ("_sort", "-date"), ("_count", "7"))
        assert [date_range(real.res[k]["effectiveDateTime"])[1] for k in paged] == expected
        assert sorted(paged) == sorted(found)


def test_sort_patients_by_birthdate(real: RealData) -> None:
    patients = real.of("Patient")

    def low(key: str) -> datetime | None:
        born = real.res[key].get("birthDate")
        return date_range(born)[0] if born else None

    def high(key: str) -> datetime | None:
        born = real.res[key].get("birthDate")
        return date_range(born)[1] if born else None

    keys = [real.key(p) for p in patients]
    without = [None] * sum(1 for p in patients if "birthDate" not in p)
    assert without
    ascending = sorted(low(k) for k in keys if low(k)) + without  # type: ignore[type-var]
    descending = sorted((high(k) for k in keys if high(k)), reverse=True) + without  # type: ignore[type-var]
    for count in ("50", "4"):
        found = real.matches("Patient", ("_sort", "birthdate"), ("_count", count))
        check(found, keys, "Patient?_sort=birthdate")
        assert [low(k) for k in found] == ascending
        found = real.matches("Patient", ("_sort", "-birthdate"), ("_count", count))
        check(found, keys, "Patient?_sort=-birthdate")
        assert [high(k) for k in found] == descending


# -- 8. totals ----------------------------------------------------------------------------------------
def test_summary_count_and_total_accurate(real: RealData) -> None:
    second, active = real.synthea_patients[1], "active"
    cases: list[tuple[str, list[tuple[str, str]], Callable[[dict[str, Any]], bool]]] = [
        ("Observation", [("code", "29463-7")], lambda r: token_match(codings(r["code"]), "29463-7")),
        ("Observation", [], lambda r: True),
        ("Condition", [("clinical-status", active)], lambda r: token_match(codings(r.get("clinicalStatus")), active)),
        ("Encounter", [("subject", second)], lambda r: real.ref(r["subject"]) == second),
    ]  # fmt: skip
    for rtype, params, pred in cases:
        expected = [real.key(r) for r in real.of(rtype) if pred(r)]
        assert expected
        counted = real.pages(rtype, params + [("_summary", "count")])
        assert len(counted) == 1 and "entry" not in counted[0]
        assert counted[0]["total"] == len(expected), (rtype, params, counted[0]["total"], len(expected))
        pages = real.pages(rtype, params + [("_total", "accurate"), ("_count", "10")])
        assert pages[0]["total"] == len(expected), (rtype, params)
        found = [real.key(e["resource"]) for p in pages for e in p.get("entry", [])]
        check(found, expected, f"{rtype}?{qs(params)}&_total=accurate")


# -- 9. composite -------------------------------------------------------------------------------------
def _component_values(obs: dict[str, Any], code: str) -> list[Decimal]:
    return [
        to_dec(c["valueQuantity"]["value"])
        for c in obs.get("component", [])
        if token_match(codings(c["code"]), code) and "value" in c.get("valueQuantity", {})
    ]


def test_composite_component_code_value_quantity(real: RealData) -> None:
    observations = real.of("Observation")
    systolic = sorted(v for o in observations for v in _component_values(o, f"{LOINC}|8480-6"))
    diastolic = sorted(v for o in observations for v in _component_values(o, f"{LOINC}|8462-4"))
    assert systolic and diastolic
    threshold = systolic[len(systolic) // 2]
    for code, value in ((f"{LOINC}|8480-6", f"gt{threshold}"), ("8462-4", f"le{diastolic[3]}"), ("8480-6", "107")):
        expected = [
            real.key(o) for o in observations if any(number_match(v, value) for v in _component_values(o, code))
        ]
        query = f"{code}${value}"
        check(real.matches("Observation", ("component-code-value-quantity", query)), expected, query)
    # pairing within one component: no diastolic above the largest diastolic, though many systolic are
    above = diastolic[-1]
    assert systolic[-1] > above
    query = f"{LOINC}|8462-4$gt{above}"
    check(real.matches("Observation", ("component-code-value-quantity", query)), [], query, nonempty=False)


# -- 10. quantity in UCUM units -----------------------------------------------------------------------
def _in_g_per_l(obs: dict[str, Any]) -> Decimal | None:
    q = obs.get("valueQuantity") or {}
    if q.get("system") == UCUM and q.get("code") in G_PER_L and "value" in q:
        return to_dec(q["value"]) * G_PER_L[q["code"]]
    return None


def test_quantity_mg_per_dl_searched_in_g_per_l(real: RealData) -> None:
    observations = real.of("Observation")
    glucose = next(
        o for o in observations if token_match(codings(o["code"]), "2339-0") and o["valueQuantity"]["code"] == "mg/dL"
    )
    value = to_dec(glucose["valueQuantity"]["value"]) / 100
    for query, params in (
        (f"{value}", []),
        ("gt0.9", [("code", f"{LOINC}|2339-0")]),
        ("gt100", []),
        ("le0.0115", []),
    ):
        expected = [
            real.key(o)
            for o in observations
            if (v := _in_g_per_l(o)) is not None
            and number_match(v, query)
            and all(token_match(codings(o["code"]), c) for _, c in params)
        ]
        full = params + [("value-quantity", f"{query}|{UCUM}|g/L")]
        check(real.matches("Observation", *full), expected, f"Observation?{qs(full)}")
    assert real.key(glucose) in real.matches("Observation", ("value-quantity", f"{value}|{UCUM}|g/L"))


# -- 11. compartment ----------------------------------------------------------------------------------
def test_patient_compartment_encounters(real: RealData) -> None:
    for patient in real.synthea_patients + ["Patient/example"]:
        expected = [real.key(e) for e in real.of("Encounter") if real.ref(e.get("subject")) == patient]
        check(real.matches(f"{patient}/Encounter"), expected, f"{patient}/Encounter")


# -- 12. reference forms ------------------------------------------------------------------------------
def test_reference_by_absolute_url_and_by_id(real: RealData) -> None:
    for patient in (real.synthea_patients[3], "Patient/f001"):
        pid = patient.split("/")[1]
        expected = [real.key(o) for o in real.of("Observation") if real.ref(o.get("subject")) == patient]
        for param, value in (
            ("subject", patient),
            ("subject", f"{BASE}/{patient}"),
            ("subject", pid),
            ("subject:Patient", pid),
            ("patient", pid),
        ):
            check(real.matches("Observation", (param, value)), expected, f"Observation?{param}={value}")
    # by id only, an id that several types share (Patient/f001, Organization/f001, Encounter/f001, ...)
    expected = [real.key(c) for c in real.of("Condition") if real.ref(c.get("encounter")) == "Encounter/f001"]
    check(real.matches("Condition", ("encounter", "f001")), expected, "Condition?encounter=f001")
    expected = [real.key(e) for e in real.of("Encounter") if real.ref(e.get("serviceProvider")) == "Organization/f001"]
    check(real.matches("Encounter", ("service-provider", f"{BASE}/Organization/f001")), expected, "service-provider")


# -- beyond the list: more of the same kinds on the same data --------------------------------------------
def test_encounter_period_dates_and_sort(real: RealData) -> None:
    """Encounter.period across UTC midnight: ``eq`` needs containment, ``sa``/``eb`` and ``ne`` the rest."""
    crossing = next(
        e
        for e in real.of("Encounter")
        if "period" in e
        and real.ref(e.get("subject")) in real.synthea_patients
        and period_range(e["period"])[0].date() != (period_range(e["period"])[1] - timedelta(microseconds=1)).date()
    )
    patient = real.ref(crossing["subject"])
    theirs = [e for e in real.of("Encounter") if real.ref(e.get("subject")) == patient]
    lo, hi = period_range(crossing["period"])
    # the crossing encounter itself: in neither day (eq), above the first, below the second
    crossing_in = {lo.date().isoformat(): {"ne", "gt", "ge"}, hi.date().isoformat(): {"ne", "lt", "le"}}
    for day, prefixes in crossing_in.items():
        for prefix in PREFIXES:
            query = f"{prefix}{day}"
            expected = [real.key(e) for e in theirs if date_match([period_range(e["period"])], query)]
            assert (real.key(crossing) in expected) == (prefix in prefixes), query
            params = [("subject", patient), ("date", query)]
            check(real.matches("Encounter", *params), expected, f"Encounter?{qs(params)}", nonempty=False)
    found = real.matches("Encounter", ("subject", patient), ("_sort", "date"), ("_count", "4"))
    assert [period_range(real.res[k]["period"])[0] for k in found] == sorted(
        period_range(e["period"])[0] for e in theirs
    )
    found = real.matches("Encounter", ("subject", patient), ("_sort", "-date"), ("_count", "4"))
    assert [period_range(real.res[k]["period"])[1] for k in found] == sorted(
        (period_range(e["period"])[1] for e in theirs), reverse=True
    )


def test_condition_onset_date(real: RealData) -> None:
    patient = real.synthea_patients[2]
    theirs = [c for c in real.of("Condition") if real.ref(c.get("subject")) == patient]
    for query in ("2020-03-06", "ge2016", "lt2003-12-15", "2011-12"):
        expected = [
            real.key(c) for c in theirs if "onsetDateTime" in c and date_match([date_range(c["onsetDateTime"])], query)
        ]
        params = [("patient", patient), ("onset-date", query)]
        check(real.matches("Condition", *params), expected, f"Condition?{qs(params)}")


def test_more_tokens_identifiers_and_ids(real: RealData) -> None:
    body_length = [
        real.key(o)
        for o in real.of("Observation")
        if token_match(codings(o["code"]), "8302-2") and token_match(codings(o["code"]), "8306-3")
    ]
    check(real.matches("Observation", ("code", "8302-2"), ("code", "8306-3")), body_length, "code=8302-2&code=8306-3")
    for original, key in zip(SYNTHEA_PATIENTS, real.synthea_patients, strict=True):
        check(real.matches("Patient", ("identifier", f"{SYNTHEA_ID}|{original}")), [key], f"identifier {original}")
        assert real.key(real.res[key]) == key and real.res[key]["id"] != original  # a new id was assigned
    check(real.matches("Patient", ("_id", "example,f001,nothing")), ["Patient/example", "Patient/f001"], "_id")
    having = {
        real.ref(c.get("subject"))
        for c in real.of("Condition")
        if token_match(codings(c.get("clinicalStatus")), "active")
    }
    expected = [real.key(p) for p in real.of("Patient") if real.key(p) in having]
    check(real.matches("Patient", ("_has:Condition:patient:clinical-status", "active")), expected, "_has Condition")


def test_more_strings_on_organizations_and_chains_through_conditional_references(real: RealData) -> None:
    for query in ("mount auburn", "health", "burgers"):
        expected = [
            real.key(o)
            for o in real.of("Organization")
            if string_match([o.get("name", "")] + o.get("alias", []), query)
        ]
        check(real.matches("Organization", ("name", query)), expected, f"Organization?name={query}")
    first = next(e for e in real.of("Encounter") if real.ref(e.get("subject")) in real.synthea_patients)
    family = real.resolve(first["participant"][0]["individual"])["name"][0]["family"]  # type: ignore[index]
    for param, element, target_type, query in (
        ("service-provider.name", "serviceProvider", "Organization", "mount auburn"),
        ("location.name", "location", "Location", "cambridge health"),
        ("participant:Practitioner.family", "participant", "Practitioner", family[:4].lower()),
    ):
        expected = []
        for enc in real.of("Encounter"):
            if element == "location":
                targets = [real.resolve(loc.get("location")) for loc in enc.get("location", [])]
            elif element == "participant":
                targets = [real.resolve(p.get("individual")) for p in enc.get("participant", [])]
            else:
                targets = [real.resolve(enc.get(element))]
            names = [
                n
                for t in targets
                if t and t["resourceType"] == target_type
                for n in (
                    [t.get("name", "")] + t.get("alias", [])
                    if target_type != "Practitioner"
                    else [n["family"] for n in t.get("name", []) if "family" in n]
                )
            ]
            if string_match(names, query):
                expected.append(real.key(enc))
        check(real.matches("Encounter", (param, query)), expected, f"Encounter?{param}={query}")


def test_more_composites_and_quantities(real: RealData) -> None:
    observations = real.of("Observation")

    def top(o: dict[str, Any], code: str) -> list[Decimal]:
        q = o.get("valueQuantity") or {}
        return [to_dec(q["value"])] if token_match(codings(o["code"]), code) and "value" in q else []

    weights = sorted(v for o in observations for v in top(o, f"{LOINC}|29463-7"))
    for param, code, value, values in (
        ("code-value-quantity", f"{LOINC}|29463-7", f"gt{weights[len(weights) // 2]}", top),
        ("combo-code-value-quantity", f"{LOINC}|8480-6", "gt130", _component_values),
        ("combo-code-value-quantity", f"{LOINC}|29463-7", "lt10", lambda o, c: top(o, c) + _component_values(o, c)),
    ):
        expected = [real.key(o) for o in observations if any(number_match(v, value) for v in values(o, code))]
        query = f"{code}${value}"
        check(real.matches("Observation", (param, query)), expected, f"Observation?{param}={query}")
    # 7.2 g/dL is 72 g/L; "as written" without a system compares code or unit literally
    for query, pred in (
        (f"72|{UCUM}|g/L", lambda o: (v := _in_g_per_l(o)) is not None and number_match(v, "72")),
        ("7.2||g/dL", lambda o: (o.get("valueQuantity") or {}).get("code") == "g/dL"
            and number_match(to_dec(o["valueQuantity"]["value"]), "7.2")),
        (f"ne72|{UCUM}|g/L", lambda o: (v := _in_g_per_l(o)) is not None and number_match(v, "ne72")),
    ):  # fmt: skip
        expected = [real.key(o) for o in observations if pred(o)]
        check(real.matches("Observation", ("value-quantity", query)), expected, f"value-quantity={query}")


def test_include_iterate_per_page(real: RealData) -> None:
    code = f"{LOINC}|2339-0"
    params = [
        ("code", code),
        ("_include", "Observation:encounter"),
        ("_include:iterate", "Encounter:service-provider"),
        ("_count", "3"),
    ]
    pages = real.pages("Observation", params)
    assert len(pages) > 1
    for page in pages:
        matches, included = _page_entries(page)
        encounters = {real.ref(real.res[RealData.key(m)].get("encounter")) for m in matches}
        orgs = {real.ref(real.res[e].get("serviceProvider")) for e in encounters if e in real.res}
        check(included, [k for k in encounters | orgs if k in real.res], f"Observation?{qs(params)} one page")


def test_sort_by_family_and_birthdate_direct(real: RealData) -> None:
    synthea = [real.res[k] for k in real.synthea_patients]
    found = real.matches("Patient", ("name", "med,leon,o'hara"), ("_sort", "family"), ("_count", "2"))
    check(found, real.synthea_patients, "Patient?name=med,leon,o'hara&_sort=family")
    assert [real.res[k]["name"][0]["family"] for k in found] == sorted(p["name"][0]["family"] for p in synthea)
    patients = real.of("Patient")
    for query in ("1974-12-25", "1974", "ge2017", "lt1950", "ne1974-12-25"):
        expected = [
            real.key(p) for p in patients if "birthDate" in p and date_match([date_range(p["birthDate"])], query)
        ]
        check(real.matches("Patient", ("birthdate", query)), expected, f"Patient?birthdate={query}")


def test_larger_results_page_completely(real: RealData) -> None:
    practitioners = real.of("Practitioner")
    for query in ("dr", "dr."):
        expected = [real.key(p) for p in practitioners if string_match(name_parts(p.get("name", [])), query)]
        assert len(expected) > 100
        check(real.matches("Practitioner", ("name", query)), expected, f"Practitioner?name={query}")
    locations = real.of("Location")
    city = locations[0]["address"]["city"]
    for param, query in (("address-city", city.lower()), ("address", city[:4]), ("address-state", "ma")):
        part = param.removeprefix("address-")
        expected = [
            real.key(loc)
            for loc in locations
            if "address" in loc
            and string_match(
                [
                    v
                    for k, v in loc["address"].items()
                    if (part == "address" and k in ("city", "district", "state", "country", "postalCode", "text"))
                    or k == part
                ]
                + (loc["address"].get("line", []) if part == "address" else []),
                query,
            )
        ]
        check(real.matches("Location", (param, query), ("_count", "40")), expected, f"Location?{param}={query}")
    pages = real.pages("Organization", [("_total", "accurate"), ("_count", "60")])
    assert pages[0]["total"] == len(real.of("Organization")) and len(pages) == 4
    check(
        [real.key(e["resource"]) for p in pages for e in p["entry"]],
        [real.key(o) for o in real.of("Organization")],
        "Organization?_total=accurate&_count=60",
    )
