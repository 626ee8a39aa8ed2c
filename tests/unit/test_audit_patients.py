"""Which patients a request's audit records name (BALP: one AuditEvent per patient), for the
interactions whose patient is not a plain ``subject``: operations and appointments."""

from __future__ import annotations

from fhir_server.audit.interactions import patients_of
from fhir_server.rest.messages import FhirRequest


def test_an_operation_names_the_patients_of_its_parameters() -> None:
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "patient-reference", "valueReference": {"reference": "Patient/p1"}},
            {"name": "practitioner", "valueReference": {"reference": "Patient/not-a-patient-parameter"}},
            {
                "name": "appointment-resource",
                "resource": {
                    "resourceType": "Appointment",
                    "status": "proposed",
                    "participant": [{"actor": {"reference": "Patient/p2"}}, {"actor": {"reference": "Practitioner/x"}}],
                },
            },
        ],
    }
    req = FhirRequest("POST", "Appointment", operation="$book", resource=body)
    assert patients_of("operation", req, None) == ("Patient/p1", "Patient/p2")


def test_an_operation_names_the_patients_of_its_query() -> None:
    req = FhirRequest("GET", "Appointment", operation="$find", params=[("patient-reference", "Patient/p3")])
    assert patients_of("operation", req, None) == ("Patient/p3",)
    assert patients_of("operation", FhirRequest("GET", "Appointment", operation="$find"), None) == ()


def test_an_appointment_names_its_patient_participants() -> None:
    appointment = {"resourceType": "Appointment", "participant": [{"actor": {"reference": "Patient/p4"}}]}
    assert patients_of("create", FhirRequest("POST", "Appointment", resource=appointment), None) == ("Patient/p4",)
