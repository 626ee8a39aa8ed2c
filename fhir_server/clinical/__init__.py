"""Clinical computations: constitution scoring, meridian interpretation, aECG import.

Why a package of its own: these are pure functions over plain values and FHIR dicts (no
database, no Flask), so they can be tested against the standards' worked examples directly and
reused by any entrance (REST operations today, HL7 v2 or batch imports later). The REST side
lives in ``fhir_server/rest/operations/``.
"""
