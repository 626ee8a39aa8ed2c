"""Search through the HTTP API on SQLite and PostgreSQL: chains, _has, _list, includes, sorting, paging."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import event

LOINC = "http://loinc.org"


class World:
    """A small linked data set under a unique tag, so tests sharing a database do not meet."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.tag = uuid.uuid4().hex[:10]
        t = self.tag
        self.org = self.post({"resourceType": "Organization", "name": f"Harbin TCM Hospital {t}"})
        self.zhang = self.post(
            {
                "resourceType": "Patient",
                "name": [{"family": f"Zhang{t}", "given": ["Wei"]}],
                "managingOrganization": {"reference": f"Organization/{self.org}"},
                "identifier": [
                    {
                        "system": "urn:mrn",
                        "value": f"M1{t}",
                        "type": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]},
                    }
                ],
            }
        )
        self.li = self.post({"resourceType": "Patient", "name": [{"family": f"Li{t}"}]})
        self.pulse = self.post(self.observation(f"8867-{t}", {"reference": f"Patient/{self.zhang}"}))
        self.bp = self.post(
            self.observation(
                f"85354-{t}",
                {"reference": f"Patient/{self.li}", "identifier": {"system": "urn:mrn", "value": f"M2{t}"}},
            )
        )
        self.list = self.post(
            {
                "resourceType": "List",
                "status": "current",
                "mode": "working",
                "entry": [{"item": {"reference": f"Patient/{self.li}"}}],
            }
        )

    @staticmethod
    def observation(code: str, subject: dict[str, Any]) -> dict[str, Any]:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": code}]},
            "subject": subject,
        }

    def post(self, resource: dict[str, Any]) -> str:
        resp = self.client.post(f"/fhir/{resource['resourceType']}", json=resource)
        assert resp.status_code == 201, resp.get_data(as_text=True)
        return resp.get_json()["id"]

    def search(self, query: str, status: int = 200) -> dict[str, Any]:
        resp = self.client.get(f"/fhir/{query}")
        assert resp.status_code == status, resp.get_data(as_text=True)[:800]
        return resp.get_json()

    def ids(self, query: str, mode: str = "match") -> list[str]:
        return [e["resource"]["id"] for e in self.search(query).get("entry", []) if e["search"]["mode"] == mode]


@pytest.fixture()
def world(client) -> World:  # type: ignore[no-untyped-def]
    return World(client)


def test_chain_one_and_two_levels(world: World) -> None:
    t = world.tag
    assert world.ids(f"Observation?subject.name=zhang{t}") == [world.pulse]
    assert world.ids(f"Observation?subject:Patient.name=li{t}") == [world.bp]
    assert world.ids(f"Observation?subject:Patient.organization.name=harbin tcm hospital {t}") == [world.pulse]
    assert world.ids(f"Observation?subject.organization.name=harbin tcm hospital {t}") == [world.pulse]
    assert world.ids(f"Observation?subject.name=nobody{t}") == []
    # a chain combined with a plain parameter, and with OR values at the end of the chain
    assert world.ids(f"Observation?subject.name=zhang{t},li{t}&code={LOINC}|85354-{t}") == [world.bp]


def test_reverse_chain_has_and_nested(world: World) -> None:
    t = world.tag
    assert world.ids(f"Patient?_has:Observation:subject:code=8867-{t}") == [world.zhang]
    assert world.ids(f"Patient?_has:Observation:patient:code={LOINC}|85354-{t}") == [world.li]
    assert world.ids(f"Organization?_has:Patient:organization:_has:Observation:subject:code=8867-{t}") == [world.org]
    assert world.ids(f"Organization?_has:Patient:organization:_has:Observation:subject:code=85354-{t}") == []


def test_list_of_type_and_reference_identifier(world: World) -> None:
    t = world.tag
    assert world.ids(f"Patient?_list={world.list}") == [world.li]
    assert world.ids(f"Patient?identifier:of-type=http://terminology.hl7.org/CodeSystem/v2-0203|MR|M1{t}") == [
        world.zhang
    ]
    assert world.ids(f"Observation?subject:identifier=urn:mrn|M2{t}") == [world.bp]


@pytest.mark.parametrize(
    "query",
    [
        "Observation?subject.foo=1",
        "Observation?status.name=x",
        "Patient?_has:Observation:foo:code=1",
        "Patient?_has:Observation:subject=1",
        "Patient?_has:Nothing:subject:code=1",
        "Observation?_include=Observation:status",
        "Observation?_include=Nothing:subject",
        "Observation?_include:deep=Observation:subject",
        "Patient?_sort=nothing",
        "Patient?_sort=-",
        "Patient?_cursor=notacursor",
        "Patient?_id:missing=true",
        "Patient?_lastUpdated:exact=2020",
        "Observation?date=2020-02-30",
        "Observation?value-quantity=5|a|b|c",
        "Location?near=45|126|5|kg",
    ],
)
def test_bad_parameters_are_400_naming_them(world: World, query: str) -> None:
    outcome = world.search(query, status=400)
    assert outcome["resourceType"] == "OperationOutcome" and outcome["issue"][0]["diagnostics"]


def test_include_revinclude_iterate_and_wildcards(world: World) -> None:
    t = world.tag
    obs = f"Observation?code=8867-{t},85354-{t}"
    assert sorted(world.ids(obs)) == sorted([world.pulse, world.bp])
    assert sorted(world.ids(f"{obs}&_include=Observation:subject", "include")) == sorted([world.zhang, world.li])
    assert world.ids(f"{obs}&_include=Observation:subject:Device", "include") == []
    iterated = world.ids(f"{obs}&_include=Observation:subject&_include:iterate=Patient:organization", "include")
    assert sorted(iterated) == sorted([world.zhang, world.li, world.org])
    pats = f"Patient?name=zhang{t},li{t}"
    assert sorted(world.ids(f"{pats}&_revinclude=Observation:subject", "include")) == sorted([world.pulse, world.bp])
    everything = world.ids(f"{pats}&_revinclude=*", "include")
    assert sorted(everything) == sorted([world.pulse, world.bp, world.list])
    assert sorted(world.ids(f"{obs}&_include=*", "include")) == sorted([world.zhang, world.li])


def test_include_is_a_fixed_number_of_queries(client, app) -> None:  # type: ignore[no-untyped-def]
    """Twenty matches or two: the same statements, not one per result (no N+1)."""
    statements: list[str] = []
    engine = app.config["SERVICES"].repo.engine

    def count(*args: Any) -> None:
        if "counters" not in args[2]:  # the once-a-second check for new SearchParameters may fall in
            statements.append(args[2])

    def run(n: int) -> int:
        w = World(client)
        for i in range(n):
            w.post(w.observation(f"n1-{w.tag}", {"reference": f"Patient/{[w.zhang, w.li][i % 2]}"}))
        statements.clear()
        event.listen(engine, "before_cursor_execute", count)
        try:
            query = (
                f"Observation?code=n1-{w.tag}&_include=Observation:subject&_include:iterate=Patient:organization"
                f"&_revinclude=Provenance:target&subject.name=zhang{w.tag},li{w.tag}"
            )
            found = w.ids(query)
            assert len(found) == n
        finally:
            event.remove(engine, "before_cursor_execute", count)
        return len(statements)

    assert run(2) == run(20)


def _walk(world: World, query: str) -> tuple[list[str], dict[str, Any]]:
    bundle = world.search(query)
    seen = []
    while True:
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        nxt = [link["url"] for link in bundle["link"] if link["relation"] == "next"]
        if not nxt:
            return seen, bundle
        bundle = world.search(nxt[0].split("/fhir/", 1)[1])


def test_sort_with_ties_and_missing_values_pages_forward_and_back(world: World) -> None:
    t = world.tag
    made = {}
    for i in range(7):
        made[
            world.post({"resourceType": "Patient", "name": [{"family": f"S{t}{i % 3}"}], "birthDate": f"19{50 + i}"})
        ] = (
            i % 3,
            1950 + i,
        )
    made[world.post({"resourceType": "Patient", "name": [{"family": f"S{t}9"}]})] = (9, None)
    query = f"Patient?name=s{t}&_sort=family,-birthdate&_count=3"
    seen, last = _walk(world, query)
    expected = sorted(made, key=lambda k: (made[k][0], -(made[k][1] or -(10**6))))
    assert seen == expected
    previous = [link["url"] for link in last["link"] if link["relation"] == "previous"]
    back = world.search(previous[0].split("/fhir/", 1)[1])
    assert [e["resource"]["id"] for e in back["entry"]] == expected[3:6]
    # a missing birth date sorts last in both directions
    assert _walk(world, f"Patient?name=s{t}&_sort=-birthdate&_count=4")[0][-1] == expected[-1]
    assert _walk(world, f"Patient?name=s{t}&_sort=birthdate&_count=4")[0][-1] == expected[-1]


def test_paging_is_stable_while_data_changes(world: World) -> None:
    t = world.tag
    ids = [world.post({"resourceType": "Patient", "name": [{"family": f"P{t}"}]}) for _ in range(5)]
    first = world.search(f"Patient?name=p{t}&_count=2")
    assert [e["resource"]["id"] for e in first["entry"]] == ids[:2]
    world.client.delete(f"/fhir/Patient/{ids[0]}")
    world.post({"resourceType": "Patient", "name": [{"family": f"P{t}"}]})
    nxt = [link["url"] for link in first["link"] if link["relation"] == "next"][0]
    second = world.search(nxt.split("/fhir/", 1)[1])
    assert [e["resource"]["id"] for e in second["entry"]] == ids[2:4]


def test_sort_by_id_and_last_updated(world: World) -> None:
    t = world.tag
    ids = [world.post({"resourceType": "Patient", "name": [{"family": f"U{t}"}]}) for _ in range(3)]
    assert world.ids(f"Patient?name=u{t}&_sort=-_lastUpdated") == ids[::-1]
    assert world.ids(f"Patient?name=u{t}&_sort=_id") == sorted(ids)


def test_compartment_search(world: World) -> None:
    t = world.tag
    assert world.ids(f"Patient/{world.zhang}/Observation") == [world.pulse]
    assert world.ids(f"Patient/{world.li}/Observation?code=85354-{t}") == [world.bp]
    assert world.ids(f"Patient/{world.li}/Observation?code=8867-{t}") == []
    assert world.ids(f"Patient/{world.zhang}/Patient") == [world.zhang]
    bundle = world.search(f"Patient/{world.zhang}/Observation?_count=1")
    assert bundle["link"][0]["url"].endswith(f"/fhir/Patient/{world.zhang}/Observation?_count=1")
    posted = world.client.post(f"/fhir/Patient/{world.li}/Observation/_search", data={"code": f"85354-{t}"})
    assert [e["resource"]["id"] for e in posted.get_json()["entry"]] == [world.bp]
    world.search(f"Patient/{world.zhang}/Organization", status=400)  # not in the Patient compartment
    world.search(f"Nothing/{world.zhang}/Observation", status=404)


def test_composite_values_pair_within_one_element(world: World) -> None:
    t = world.tag
    bp = world.post(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": f"85354-{t}"}]},
            "effectiveDateTime": "2024-05-01",
            "component": [
                {"code": {"coding": [{"system": LOINC, "code": f"8480-{t}"}]}, "valueQuantity": {"value": 150}},
                {"code": {"coding": [{"system": LOINC, "code": f"8462-{t}"}]}, "valueQuantity": {"value": 80}},
            ],
        }
    )
    tcm = world.post(
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": "urn:tcm", "code": f"constitution-{t}"}]},
            "valueCodeableConcept": {"coding": [{"system": "urn:tcm:constitution", "code": "qi-deficiency"}]},
        }
    )
    q = "Observation?component-code-value-quantity="
    assert world.ids(f"{q}{LOINC}|8480-{t}$gt140") == [bp]
    assert world.ids(f"{q}{LOINC}|8480-{t}$lt100") == []  # 80 belongs to the other component
    assert world.ids(f"{q}8462-{t}$lt100") == [bp]
    assert world.ids(f"{q}8462-{t}$lt50,8480-{t}$ge150") == [bp]
    assert world.ids(f"Observation?combo-code-value-quantity={LOINC}|8462-{t}$80") == [bp]
    assert world.ids(f"Observation?code-value-concept=urn:tcm|constitution-{t}$urn:tcm:constitution|qi-deficiency") == [
        tcm
    ]
    assert world.ids(f"Observation?code-value-concept=constitution-{t}$yang-deficiency") == []
    world.search(f"{q}8462-{t}", status=400)  # no second value


def test_token_in_not_in_below_above_against_stored_terminology(world: World) -> None:
    t = world.tag
    system = f"urn:tcm:syndrome:{t}"
    world.post(
        {
            "resourceType": "CodeSystem",
            "url": system,
            "status": "active",
            "content": "complete",
            "hierarchyMeaning": "is-a",
            "concept": [
                {
                    "code": "deficiency",
                    "concept": [
                        {"code": "qi-deficiency", "concept": [{"code": "spleen-qi-deficiency"}]},
                        {"code": "yin-deficiency"},
                    ],
                },
                {"code": "excess"},
            ],
        }
    )
    vs_url = f"urn:tcm:vs:{t}"
    world.post(
        {
            "resourceType": "ValueSet",
            "url": vs_url,
            "status": "active",
            "compose": {
                "include": [
                    {"system": system, "filter": [{"property": "concept", "op": "is-a", "value": "qi-deficiency"}]}
                ]
            },
        }
    )
    made = {}
    for code in ("spleen-qi-deficiency", "yin-deficiency", "excess"):
        made[code] = world.post(
            {
                "resourceType": "Condition",
                "subject": {"reference": f"Patient/{world.zhang}"},
                "code": {"coding": [{"system": system, "code": code}]},
            }
        )
    mine = f"Condition?subject=Patient/{world.zhang}"
    assert sorted(world.ids(f"{mine}&code:below={system}|deficiency")) == sorted(
        [made["spleen-qi-deficiency"], made["yin-deficiency"]]
    )
    assert world.ids(f"{mine}&code:above={system}|spleen-qi-deficiency") == [made["spleen-qi-deficiency"]]
    assert world.ids(f"{mine}&code:in={vs_url}") == [made["spleen-qi-deficiency"]]
    assert sorted(world.ids(f"{mine}&code:not-in={vs_url}")) == sorted([made["yin-deficiency"], made["excess"]])
    world.search(f"{mine}&code:in=urn:not-stored", status=400)
    world.search(f"{mine}&code:below=deficiency", status=400)  # no system to look in


def test_summary_and_elements_shape_matches_and_includes(world: World) -> None:
    t = world.tag
    query = f"Observation?code=8867-{t}&_include=Observation:subject"
    bundle = world.search(f"{query}&_elements=status")
    kinds = {e["search"]["mode"]: e["resource"] for e in bundle["entry"]}
    assert set(kinds["match"]) == {"resourceType", "id", "meta", "status", "code"}  # code is mandatory
    assert "SUBSETTED" in [tag["code"] for tag in kinds["match"]["meta"]["tag"]]
    assert "name" not in kinds["include"] and "SUBSETTED" in [tag["code"] for tag in kinds["include"]["meta"]["tag"]]
    text = world.search(f"{query}&_summary=text")["entry"][0]["resource"]
    assert "subject" not in text and text["status"] == "final"
    counted = world.search(f"Observation?code=8867-{t}&_summary=count")
    assert counted["total"] == 1 and "entry" not in counted
    world.search(f"{query}&_summary=true&_elements=status", status=400)
    world.search(f"{query}&_summary=everything", status=400)


def test_quantity_in_ucum_canonical_units(world: World) -> None:
    t = world.tag
    ucum = "http://unitsofmeasure.org"

    def glucose(value: float, unit: str) -> str:
        return world.post(
            {
                "resourceType": "Observation",
                "status": "final",
                "code": {"coding": [{"system": LOINC, "code": f"2339-{t}"}]},
                "valueQuantity": {"value": value, "system": ucum, "code": unit, "unit": unit},
            }
        )

    in_mg = glucose(5.4, "mg")
    in_mmol = glucose(5.5, "mmol/L")
    q = f"Observation?code=2339-{t}&value-quantity="
    assert world.ids(f"{q}0.0054|{ucum}|g") == [in_mg]  # the specification's example
    assert world.ids(f"{q}5.4|{ucum}|mg") == [in_mg]
    assert world.ids(f"{q}5400|{ucum}|ug") == [in_mg]
    assert world.ids(f"{q}gt5000|{ucum}|umol/L") == [in_mmol]
    assert world.ids(f"{q}lt5000|{ucum}|umol/L") == []
    assert world.ids(f"{q}5.4||mg") == [in_mg]  # without a system: compared as written
    assert world.ids(f"{q}0.0054||g") == []


def test_near_finds_locations_by_great_circle_distance(world: World) -> None:
    t = world.tag

    def location(name: str, lat: float, lng: float) -> str:
        return world.post(
            {"resourceType": "Location", "name": f"{name}{t}", "position": {"latitude": lat, "longitude": lng}}
        )

    harbin = location("Harbin", 45.7567, 126.6424)
    hulan = location("Hulan", 45.9803, 126.6031)  # ~25 km north of Harbin
    beijing = location("Beijing", 39.9042, 116.4074)  # ~1,060 km away
    fiji_east = location("Taveuni", -16.85, 179.95)
    fiji_west = location("Lau", -16.85, -179.95)  # ~10.7 km across the antimeridian
    mine = "Location?_count=1000"  # other tests' Locations are filtered out below
    ids = lambda q: sorted(i for i in world.ids(q) if i in {harbin, hulan, beijing, fiji_east, fiji_west})  # noqa: E731
    assert ids(f"{mine}&near=45.7567|126.6424|5|km") == [harbin]
    assert ids(f"{mine}&near=45.7567|126.6424|30|km") == sorted([harbin, hulan])
    assert ids(f"{mine}&near=45.7567|126.6424|30000|m") == sorted([harbin, hulan])
    assert ids(f"{mine}&near=45.7567|126.6424|700|[mi_i]") == sorted([harbin, hulan, beijing])
    assert ids(f"{mine}&near=-16.85|179.95|12|km") == sorted([fiji_east, fiji_west])
    assert ids(f"{mine}&near=45.7567|126.6424") == [harbin]  # default: within 10 km
    world.search(f"{mine}&near=95|126|5|km", status=400)
    world.search(f"{mine}&near=45|126|5|kg", status=400)


def test_counts_ignore_deleted_resources_and_repeated_values(world: World) -> None:
    t = world.tag
    code = {"coding": [{"system": LOINC, "code": f"cnt-{t}"}, {"system": LOINC, "code": f"cnt-{t}"}]}
    made = [world.post({"resourceType": "Observation", "status": "final", "code": code}) for _ in range(3)]
    world.client.delete(f"/fhir/Observation/{made[0]}")
    for query in (f"Observation?code=cnt-{t}", f"Observation?code={LOINC}|cnt-{t}"):
        assert world.search(f"{query}&_summary=count")["total"] == 2  # counted on the index alone
        assert world.search(f"{query}&status=final&_summary=count")["total"] == 2  # counted on resources
        assert world.search(f"{query}&_total=accurate")["total"] == 2


def test_previous_links_walk_back_to_the_first_page(world: World) -> None:
    t = world.tag
    for i in range(7):
        world.post({"resourceType": "Patient", "name": [{"family": f"B{t}"}], "birthDate": f"19{60 + i % 3}"})
    query = f"Patient?name=b{t}&_sort=-birthdate&_count=2"
    forward, last = _walk(world, query)
    backward: list[str] = []
    bundle = last
    while True:
        backward = [e["resource"]["id"] for e in bundle.get("entry", [])] + backward
        previous = [link["url"] for link in bundle["link"] if link["relation"] == "previous"]
        if not previous:
            break
        bundle = world.search(previous[0].split("/fhir/", 1)[1])
    assert backward == forward and len(forward) == 7
    first = world.search(query)
    assert not [link for link in first["link"] if link["relation"] == "previous"]


def test_contained_resources_are_searched_with_contained(world: World) -> None:
    t = world.tag
    rxnorm = "http://www.nlm.nih.gov/research/umls/rxnorm"

    def prescription(code: str, contained: bool) -> str:
        medication = {"resourceType": "Medication", "code": {"coding": [{"system": rxnorm, "code": code}]}}
        body: dict[str, Any] = {
            "resourceType": "MedicationRequest",
            "status": "active",
            "intent": "order",
            "subject": {"reference": f"Patient/{world.zhang}"},
        }
        if contained:
            body["contained"] = [{**medication, "id": "m1"}]
            body["medicationReference"] = {"reference": "#m1"}
        else:
            body["medicationCodeableConcept"] = medication["code"]
        return world.post(body)

    inside = prescription(f"gancao-{t}", contained=True)  # 甘草 (licorice) compounded, described inline
    outside = prescription(f"gancao-{t}", contained=False)
    standalone = world.post(
        {"resourceType": "Medication", "code": {"coding": [{"system": rxnorm, "code": f"gancao-{t}"}]}}
    )
    med = f"Medication?code={rxnorm}|gancao-{t}"
    assert world.ids(med) == [standalone]  # default _contained=false
    assert world.ids(f"{med}&_contained=true") == [inside]  # the container is returned
    assert sorted(world.ids(f"{med}&_contained=both")) == sorted([standalone, inside])
    assert world.search(f"Medication?code=gancao-{t}&_contained=true&_summary=count")["total"] == 1
    assert world.ids(f"MedicationRequest?code=gancao-{t}") == [outside]  # code of the request itself
    world.search(f"{med}&_contained=maybe", status=400)
    world.search(f"{med}&_contained=true&_containedType=contained", status=400)
    world.search("Medication?_id=m1&_contained=true", status=400)
    world.search(f"{med}&_contained=true&_sort=code", status=400)


def test_text_searches_the_narrative(world: World) -> None:
    t = world.tag

    def patient(div: str) -> str:
        return world.post(
            {
                "resourceType": "Patient",
                "name": [{"family": f"T{t}"}],
                "text": {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{div}</div>'},
            }
        )

    cough = patient(f"<p>主诉：咳嗽三天 <b>Café</b> &amp; fever {t}</p>")
    other = patient(f"<p>头痛 headache {t}</p>")
    mine = f"Patient?name=t{t}"
    assert world.ids(f"{mine}&_text=咳嗽") == [cough]
    assert world.ids(f"{mine}&_text=cafe %26 FEVER") == [cough]  # case, accents, entities, tags
    assert sorted(world.ids(f"{mine}&_text=咳嗽,headache")) == sorted([cough, other])
    assert world.ids(f"{mine}&_text=head_ache") == []  # _ is not a wildcard
    assert world.ids("?_text=咳嗽三天 café&_count=1000") == [cough]  # system level
    world.search(f"{mine}&_text:exact=x", status=400)
