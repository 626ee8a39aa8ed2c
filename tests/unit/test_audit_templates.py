"""Spool lines from templates (fhir_server/audit/templates.py) are exactly what balp builds.

The reference is the plain path: ``balp.build_events``, then ``store.columns`` and
``store.serialize`` of each event. Every kind, with and without each optional part, several
requesters, failures with and without diagnostics, text that JSON must escape, and the same
shape filled again with other values (the cached template).
"""

from __future__ import annotations

import itertools
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from fhir_server.audit import balp
from fhir_server.audit.store import columns, serialize
from fhir_server.audit.templates import EventTemplates
from tests.unit.test_audit_balp import EXAMPLES, SERVER, TOKEN, USER

REQUESTERS = {
    "user": USER,
    "backend client": balp.Requester(client_id="lab-system", network_address="10.0.0.9", token=TOKEN),
    "institution system": balp.Requester(
        client_id="hospital-his", organization="Organization/h-1", network_address="host.example.cn", token=TOKEN
    ),
    "anonymous": balp.Requester(network_address="192.0.2.1"),
    "percent and quotes": balp.Requester(client_id='app "100%"', user="zhang%d", user_display="张 %s \\ \n"),
}
SERVERS = {"site": SERVER, "plain": balp.Server(name="tele%sfhir", base_url="http://h/fhir", address="::1")}


def reference(interaction: balp.Interaction, requester: balp.Requester, server: balp.Server) -> bytes:
    return b"".join(
        orjson.dumps(columns(e)) + b"\t" + serialize(e) + b"\n"
        for e in balp.build_events(interaction, requester, server)
    )


def variants(interaction: balp.Interaction) -> list[balp.Interaction]:
    """The interaction as given, and with each optional part changed."""
    return [
        interaction,
        replace(interaction, patients=("Patient/p-1",)),
        replace(interaction, patients=("Patient/p-1", "Patient/p.2", "Patient/p-1")),
        replace(interaction, request_id='req "1" \\ 请求 \x01'),
        replace(interaction, status=404),
        replace(interaction, status=409),  # the same outcome code, another phrase
        replace(interaction, status=403, detail='not allowed: "scope" \\ 缺少 %s'),
        replace(interaction, status=500),
        replace(interaction, query=(interaction.query or "") + "&name=李%20四"),
        replace(interaction, query=None),
        replace(interaction, http_method="PUT"),
        replace(interaction, recorded=datetime(2026, 1, 2, 3, 4, 5, tzinfo=timezone(timedelta(hours=8)))),
    ]


@pytest.mark.parametrize("kind", sorted(EXAMPLES))
def test_every_kind_and_part_is_what_balp_builds(kind: str) -> None:
    templates = EventTemplates()
    for (requester, server), interaction in itertools.product(
        itertools.product(REQUESTERS.values(), SERVERS.values()), variants(EXAMPLES[kind])
    ):
        try:
            expected = reference(interaction, requester, server)
        except ValueError:
            with pytest.raises(ValueError):
                templates.lines(interaction, requester, server)
            continue
        assert templates.lines(interaction, requester, server) == expected
        assert templates.lines(interaction, requester, server) == expected  # from the cached template


def test_a_cached_template_takes_the_values_of_each_event() -> None:
    templates = EventTemplates()
    first = EXAMPLES["vread"]
    for n in range(5):
        interaction = replace(
            first,
            resource_type="Encounter" if n % 2 else "Observation",
            resource_id=f"id-{n}",
            version=str(n + 1),
            patients=(f"Patient/{n}",),
            request_id=f"r{n}",
            recorded=datetime(2026, 5, 6, 7, 8, n, n * 1000, tzinfo=UTC),
        )
        assert templates.lines(interaction, USER, SERVER) == reference(interaction, USER, SERVER)


def test_long_values_are_cut_to_the_columns_as_the_store_cuts_them() -> None:
    long_id = "a" * 64
    interaction = replace(
        EXAMPLES["vread"],
        resource_type="B" + "b" * 63,
        resource_id=long_id,
        version=long_id,
        patients=(f"Patient/{long_id}",),
    )
    line = EventTemplates().lines(interaction, USER, SERVER)
    assert line == reference(interaction, USER, SERVER)


def test_the_templates_are_bounded() -> None:
    templates = EventTemplates(max_templates=3)
    for n in range(10):
        requester = replace(USER, client_id=f"client-{n}")
        assert templates.lines(EXAMPLES["read"], requester, SERVER) == reference(EXAMPLES["read"], requester, SERVER)
    assert len(templates._templates) <= 3


def test_input_balp_refuses_is_refused() -> None:
    with pytest.raises(ValueError, match="resource_id"):
        EventTemplates().lines(replace(EXAMPLES["read"], resource_id='o1"}'), USER, SERVER)
    with pytest.raises(ValueError, match="patients"):
        EventTemplates().lines(replace(EXAMPLES["read"], patients=('Patient/1","x',)), USER, SERVER)
