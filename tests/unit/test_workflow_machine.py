"""The Task state machine as data (workflow/machine.py) and the diagrams of docs/workflows.md."""

from __future__ import annotations

import pathlib

from fhir_server.workflow import machine as m

ROOT = pathlib.Path(__file__).resolve().parents[2]


def _task(code: str) -> dict:
    return {"code": {"coding": [{"system": m.SERVICE_TYPES, "code": code}]}}


def test_kinds_come_from_the_service_type() -> None:
    assert m.kind_of(_task("teleconsultation-multicentre")) == "multicentre"
    assert m.kind_of(_task("teleconsultation-online")) == "consultation"
    assert m.kind_of(_task("teleconsultation-offline")) == "offline"
    assert m.kind_of(_task("referral-up")) == "referral"
    assert m.kind_of(_task("tcm-constitution-identification")) == "diagnosis"
    assert m.kind_of(_task("imaging-diagnosis")) == "diagnosis"


def test_a_consultation_is_pre_reviewed_a_diagnosis_need_not_be() -> None:
    assert "accepted" not in m.transitions("consultation", "applied")
    assert m.transitions("diagnosis", "applied")["accepted"] == {m.PERFORMER}
    assert m.transitions("referral", "applied")["rejected"] == {m.PERFORMER, m.PLATFORM}


def test_a_multicentre_invitation_is_answered_directly_and_published_by_the_leader() -> None:
    assert m.transitions("multicentre", "applied")["accepted"] == {m.PERFORMER}
    assert "pre-reviewed" not in m.transitions("multicentre", "applied")
    assert m.transitions("multicentre", "pre-reviewed") == {}
    assert m.transitions("multicentre", "reported")["published"] == {m.REQUESTER}
    assert m.REQUESTER in m.transitions("multicentre", "scheduled")["in-progress"]


def test_every_state_has_a_task_status_and_final_states_have_no_steps() -> None:
    targets = {t for s in m.TASK_STATUS for t in m.transitions("diagnosis", s)}
    assert targets <= set(m.TASK_STATUS)
    for final in ("evaluated", "rejected", "cancelled"):
        assert m.transitions("consultation", final) == {}
    assert m.describe({}) == "none: it is final"


def test_the_codes_are_those_of_the_code_system() -> None:
    import json

    system = json.loads((ROOT / "terminology" / "codesystem" / "consultation-task-status.json").read_text())
    codes = {
        c["code"]: next(p["valueCode"] for p in c["property"] if p["code"] == "task-status") for c in system["concept"]
    }
    assert codes == m.TASK_STATUS


def test_the_workflow_docs_draw_the_machines_the_code_enforces() -> None:
    doc = (ROOT / "docs" / "workflows.md").read_text()
    for kind in ("consultation", "offline", "multicentre", "diagnosis", "referral"):
        assert m.mermaid(kind) in doc, kind
    from fhir_server.workflow import data_requests

    assert data_requests.mermaid() in doc
