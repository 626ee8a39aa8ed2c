"""telefhir: a FHIR R4 server with IHE profiles for teleconsultation."""

__version__ = "0.1.0"
