"""Code system URLs the clinical computations write (fixed for issue 4; see docs/ and terminology/).

Why constants: the Observations built here are searched by these codes
(``Observation?code=…|constitution-assessment``); one misspelt URL would make them invisible.
"""

from __future__ import annotations

BASE = "http://fhir.telefhir.cn"


def code_system(cs_id: str) -> str:
    return f"{BASE}/CodeSystem/{cs_id}"


def profile(sd_id: str) -> str:
    return f"{BASE}/StructureDefinition/{sd_id}"


#: the profiles the Observations built here claim (profiles/structuredefinition-*.json)
CONSTITUTION_PROFILE = profile("tcm-constitution-assessment")
MERIDIAN_PROFILE = profile("tcm-meridian-measurement")
ECG_PROFILE = profile("ecg-observation")

OBSERVATION_CODE = code_system("tcm-observation-code")
CONSTITUTION = code_system("tcm-constitution")
CONSTITUTION_RESULT = code_system("tcm-constitution-result")
CONSTITUTION_FORM = code_system("tcm-constitution-form")
MERIDIAN = code_system("tcm-meridian")
MERIDIAN_POINT = code_system("tcm-meridian-point")
MERIDIAN_INTERPRETATION = code_system("tcm-meridian-interpretation")

UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
MDC = "urn:oid:2.16.840.1.113883.6.24"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
V3_INTERPRETATION = "http://terminology.hl7.org/CodeSystem/v3-ObservationInterpretation"


def coding(system: str, code: str, display: str | None = None) -> dict[str, str]:
    out = {"system": system, "code": code}
    if display is not None:
        out["display"] = display
    return out


def concept(system: str, code: str, display: str | None = None, text: str | None = None) -> dict[str, object]:
    out: dict[str, object] = {"coding": [coding(system, code, display)]}
    if text is not None:
        out["text"] = text
    return out


def category(code: str, display: str) -> list[dict[str, object]]:
    return [concept(OBSERVATION_CATEGORY, code, display)]


def has_coding(value: object, system: str, code: str | None = None) -> str | None:
    """The code of the first coding of ``system`` in a CodeableConcept (matching ``code`` if given)."""
    if not isinstance(value, dict):
        return None
    for c in value.get("coding") or []:
        if isinstance(c, dict) and c.get("system") == system and (code is None or c.get("code") == code):
            found = c.get("code")
            return found if isinstance(found, str) else None
    return None
