"""The in-memory check that spares a subscription's search when it certainly cannot match: it
says "no" only when a token or reference filter excludes the resource, and defers otherwise."""

from __future__ import annotations

from fhir_server.notify.prefilter import may_match
from fhir_server.search.registry import get_registry

TASK = {
    "resourceType": "Task",
    "status": "requested",
    "intent": "order",
    "owner": {"reference": "Organization/b"},
    "businessStatus": {"coding": [{"system": "http://fhir.telefhir.cn/CodeSystem/consultation-task-status",
                                   "code": "applied"}]},
}  # fmt: skip


def check(*filters: tuple[str, str]) -> bool:
    return may_match(get_registry(), "Task", tuple(filters), TASK)


def test_a_reference_filter_excludes_another_owner() -> None:
    assert check(("owner", "Organization/b"))
    assert check(("owner", "b"))
    assert check(("owner", "Organization/a,Organization/b"))
    assert not check(("owner", "Organization/a"))
    assert not check(("owner", "a"))
    assert check(("owner", "http://elsewhere/fhir/Organization/a"))  # absolute: the search decides


def test_a_token_filter_excludes_other_codes_and_systems() -> None:
    system = "http://fhir.telefhir.cn/CodeSystem/consultation-task-status"
    assert check(("business-status", f"{system}|applied"))
    assert check(("business-status", "applied"))
    assert check(("business-status", "APPLIED"))  # never a false "no" over case
    assert not check(("business-status", f"{system}|accepted"))
    assert not check(("business-status", "http://other|applied"))
    assert check(("status", "requested"))
    assert check(("status", "http://hl7.org/fhir/task-status|requested"))  # a bare code's system is unknown here
    assert not check(("status", "completed"))


def test_what_it_does_not_understand_goes_to_the_search() -> None:
    assert check(("owner:missing", "true"), ("_tag", "x"), ("owner.name", "x"), ("authored-on", "ge2026"))
    assert not check(("identifier", "urn:x|1"))  # no identifier at all: certainly not
    with_identifier = {**TASK, "identifier": [{"system": "urn:x", "value": "2"}]}
    assert may_match(get_registry(), "Task", (("identifier", "urn:x|1"),), with_identifier)  # the search decides
    assert check(("unknown-param", "x"))
