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
