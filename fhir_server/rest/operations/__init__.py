"""FHIR operations (``$name``), one module per operation; routes.py declares their routes."""
