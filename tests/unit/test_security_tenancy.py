"""The building blocks of tenancy: categories, labels, roles and the reading of Consents."""

from __future__ import annotations

import datetime
import json
import pathlib
from typing import Any

import pytest

from fhir_server.security import categories as cat
from fhir_server.security import consent, labels, roles

ROOT = pathlib.Path(__file__).resolve().parents[2]
NOW = int(datetime.datetime(2026, 12, 7, tzinfo=datetime.UTC).timestamp()) * 1_000_000


def _codes(name: str) -> set[str]:
    system = json.loads((ROOT / "terminology" / "codesystem" / f"{name}.json").read_text())
    return {c["code"] for c in system["concept"]}


def test_the_code_systems_name_exactly_what_the_code_enforces() -> None:
    assert _codes("data-category") == set(cat.CODES)
    assert _codes("security-label") == set(labels.NAMES.values())
    assert _codes("telemedicine-role") == set(roles.ROLES)


@pytest.mark.parametrize(
    ("resource", "expected"),
    [
        ({"resourceType": "Patient"}, cat.PATIENT),
        ({"resourceType": "Observation"}, cat.CLINICAL),
        ({"resourceType": "Observation", "category": [{"coding": [{"code": "laboratory"}]}]}, cat.EXAMINATION),
        ({"resourceType": "Observation", "category": [{"coding": [{"code": "imaging"}]}]}, cat.IMAGING),
        ({"resourceType": "DiagnosticReport", "category": [{"coding": [{"code": "RAD"}]}]}, cat.IMAGING),
        ({"resourceType": "DiagnosticReport"}, cat.EXAMINATION),
        ({"resourceType": "MedicationRequest"}, cat.TREATMENT),
        ({"resourceType": "Task"}, cat.CONSULTATION),
        ({"resourceType": "Consent"}, cat.ADMINISTRATIVE),
        ({"resourceType": "CodeSystem"}, cat.CATALOGUE),
        ({"resourceType": "PractitionerRole"}, cat.CATALOGUE),
    ],
)
def test_categories(resource: dict[str, Any], expected: int) -> None:
    assert cat.of_resource(resource, True) == expected


def test_labels_from_meta_security() -> None:
    assert labels.of_security([{"system": labels.SYSTEM, "code": "minor"}]) == labels.MINOR
    assert labels.of_security([{"system": labels.ACT_CODE, "code": "HIV"}]) == labels.INFECTIOUS
    assert labels.of_security([{"system": labels.ACT_CODE, "code": "PSY"}]) == labels.RESTRICTED
    assert labels.of_security([{"system": labels.CONFIDENTIALITY, "code": "R"}]) == labels.RESTRICTED
    assert labels.of_security([{"system": labels.CONFIDENTIALITY, "code": "N"}]) == 0
    assert labels.of_security("nonsense") == 0


@pytest.mark.parametrize(
    ("birth", "adult_on"),
    [
        ("2010-05-03", "2028-05-03"),
        ("2010-05", "2028-05-31"),  # a partial date counts from its latest day: the safe side
        ("2010", "2028-12-31"),
        ("2008-02-29", "2026-03-01"),  # of age on 1 March in a common year
    ],
)
def test_a_patient_is_a_minor_until_the_18th_birthday(birth: str, adult_on: str) -> None:
    until = labels.minor_until_us({"birthDate": birth})
    day = datetime.date.fromisoformat(adult_on)
    assert until == int(datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC).timestamp()) * 1_000_000
    assert labels.minor_until_us({}) is None


def test_roles_combine_and_leave_out_what_none_grants() -> None:
    admin = roles.permissions(["leading-institution-admin"])
    assert admin.allows("Patient", cat.PATIENT, "r") and not admin.allows("Observation", cat.CLINICAL, "r")
    assert admin.clearance == 0 and not admin.minors
    both = roles.permissions(["leading-institution-admin", "expert"])
    assert both.allows("Observation", cat.CLINICAL, "c") and both.clearance == labels.ALL
    resident = roles.permissions(["patient"])  # R23's name for the resident role
    assert resident.roles == ("resident",) and resident.allows("QuestionnaireResponse", cat.CLINICAL, "c")
    assert not resident.allows("Condition", cat.CLINICAL, "c")
    assert roles.permissions(["supervisor"]).cross_tenant == cat.CONSULTATION
    assert roles.permissions(["wizard"]).letters == {}


# -- consent --------------------------------------------------------------------------------------
def _consent(provision: dict[str, Any], status: str = "active", scope: str = "patient-privacy") -> dict[str, Any]:
    return {"resourceType": "Consent", "status": status, "scope": {"coding": [{"code": scope}]}, "provision": provision}


def _permit(action: str | None = None, actor: str | None = None, **more: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "permit", **more}
    if action:
        out["action"] = [{"coding": [{"code": action}]}]
    if actor:
        out["actor"] = [{"reference": {"reference": actor}}]
    return out


B = "Organization/b"


def test_a_consent_permits_only_what_it_says() -> None:
    opt_in = _consent({"type": "deny", "provision": [_permit("disclose", B)]})
    assert consent.decision([opt_in], "disclose", B, cat.CLINICAL, 0, NOW)
    assert not consent.decision([opt_in], "disclose", "Organization/c", cat.CLINICAL, 0, NOW)
    assert not consent.decision([opt_in], "collect", B, cat.CLINICAL, 0, NOW)
    assert not consent.decision([], "collect", B, cat.CLINICAL, 0, NOW)


def test_consents_add_up_and_an_explicit_deny_wins() -> None:
    collect = _consent({"type": "deny", "provision": [_permit("collect")]})
    disclose = _consent({"type": "deny", "provision": [_permit("disclose", B)]})
    assert consent.decision([collect, disclose], "collect", B, cat.CLINICAL, 0, NOW)
    assert consent.decision([collect, disclose], "disclose", B, cat.CLINICAL, 0, NOW)
    no_imaging = _consent(
        {
            "type": "deny",
            "actor": [{"reference": {"reference": B}}],
            "class": [{"system": cat.SYSTEM, "code": "imaging"}],
        }
    )
    assert not consent.decision([disclose, no_imaging], "disclose", B, cat.IMAGING, 0, NOW)
    assert consent.decision([disclose, no_imaging], "disclose", B, cat.CLINICAL, 0, NOW)


def test_inactive_consents_and_other_scopes_do_not_count() -> None:
    everything = _permit()
    assert consent.decision([_consent(everything)], "disclose", B, cat.CLINICAL, 0, NOW)
    assert not consent.decision([_consent(everything, status="inactive")], "disclose", B, cat.CLINICAL, 0, NOW)
    assert not consent.decision([_consent(everything, scope="research")], "disclose", B, cat.CLINICAL, 0, NOW)


def test_periods_and_classes() -> None:
    past = _consent({"type": "deny", "provision": [_permit("disclose", B, period={"end": "2025-01-01"})]})
    assert not consent.decision([past], "disclose", B, cat.CLINICAL, 0, NOW)
    clinical = _consent(_permit("disclose", B, **{"class": [{"system": cat.SYSTEM, "code": "clinical"}]}))
    assert consent.permitted_categories([clinical], "disclose", B, NOW) == cat.CLINICAL


def test_sensitive_data_needs_a_provision_that_names_its_label() -> None:
    plain = _consent({"type": "deny", "provision": [_permit("disclose", B)]})
    assert not consent.decision([plain], "disclose", B, cat.CLINICAL, labels.MINOR, NOW)
    named = _consent(
        {
            "type": "deny",
            "provision": [_permit("disclose", B, securityLabel=[{"system": labels.SYSTEM, "code": "minor"}])],
        }
    )
    assert consent.decision([named], "disclose", B, cat.CLINICAL, labels.MINOR, NOW)
    assert not consent.decision([named], "disclose", B, cat.CLINICAL, labels.INFECTIOUS, NOW)
    assert consent.permitted_labels([named], "disclose", B, cat.CLINICAL, NOW) == labels.MINOR
    # a general deny reaches labelled data too
    deny_all = _consent({"type": "deny", "actor": [{"reference": {"reference": B}}]})
    assert not consent.decision([named, deny_all], "disclose", B, cat.CLINICAL, labels.MINOR, NOW)


def test_shares_are_the_actors_of_permit_provisions() -> None:
    share = _consent({"type": "deny", "provision": [_permit("access", B, period={"start": "2026-01-01"})]})
    assert consent.shares(share) == [(B, {"start": "2026-01-01"})]
    assert consent.shares(_consent(_permit("access", B), status="draft")) == []


def test_the_roles_table_of_the_security_docs_is_the_code() -> None:
    columns = [cat.PATIENT, cat.CLINICAL, cat.EXAMINATION, cat.IMAGING, cat.TREATMENT, cat.CONSULTATION,
               cat.ADMINISTRATIVE, cat.CATALOGUE]  # fmt: skip
    doc = (ROOT / "docs" / "security.md").read_text()
    for code, role in roles.ROLES.items():
        perms = roles.permissions([code])
        letters = " | ".join(perms.letters.get(c, "") or "–" for c in columns)
        cleared = labels.describe(role.clearance | (labels.MINOR if role.minors else 0))
        assert f"| `{code}` {role.display} | {letters} | {cleared} |" in doc, code


def test_an_access_is_built_again_from_its_basis() -> None:
    from fhir_server.security import tenancy
    from fhir_server.security.scopes import ScopeSet

    person = tenancy._access("Organization/h1", ("expert",), None, frozenset({"user"}), "Practitioner/7", True)
    scopes = ScopeSet.parse("system/Observation.rs?category=laboratory system/Subscription.cruds")
    client = tenancy._within_scopes(("Organization/h1", (), None, frozenset({"system"}), None, False, False), scopes)
    for access in (person, client):
        assert access.basis is not None
        again = tenancy.access_of_basis(json.loads(json.dumps(tenancy.basis_json(access.basis))))
        assert again == access and again.basis == access.basis
    with pytest.raises(ValueError):
        tenancy.access_of_basis({"organization": 5})
    with pytest.raises(ValueError):
        tenancy.access_of_basis({**tenancy.basis_json(client.basis), "scope": "system/Observation.xyz"})
