"""Security labels of sensitive populations and data: minors, infectious disease, restricted.

Why bits on the row: the standard asks for "额外隐私保护措施" for minors and infectious-disease
patients (001 §8.3.2, MISSION R26). A label restricts who may see the resource (the roles that
hold a clearance for it, security/roles.py) and whether it may cross to another institution at
all (only when the patient's consent names the label: security/grants.py). Kept as a bit mask in
``resources.labels`` so the restriction is one ``&`` in the SQL filter (security/tenancy.py).

Where labels come from (http://hl7.org/fhir/R4/security-labels.html):

* the resource's own ``meta.security``: our codes (``minor``, ``infectious-disease``), HL7 v3
  confidentiality ``R``/``V`` (restricted), and the v3 ActCode sensitivity policies (HIV and STD
  count as infectious disease, the others as restricted);
* its patient's labels: a label on the Patient marks a population, so every resource about
  that patient carries it too (propagated when the Patient's labels change);
* age: a patient under 18 is a minor until the 18th birthday. That moment is stored
  (``resources.minor_until_us``) rather than a bit, so nobody has to clear it when the patient
  comes of age: the filter compares it with the time of the request.
"""

from __future__ import annotations

import datetime
from typing import Any

MINOR = 1
INFECTIOUS = 2
RESTRICTED = 4
ALL = MINOR | INFECTIOUS | RESTRICTED

SYSTEM = "http://fhir.telefhir.cn/CodeSystem/security-label"
CONFIDENTIALITY = "http://terminology.hl7.org/CodeSystem/v3-Confidentiality"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
NAMES = {MINOR: "minor", INFECTIOUS: "infectious-disease", RESTRICTED: "restricted"}
_OURS = {name: bit for bit, name in NAMES.items()}
_INFECTIOUS_ACT_CODES = frozenset({"HIV", "STD"})
#: v3 ActCode _InformationSensitivityPolicy codes other than HIV and STD
_RESTRICTED_ACT_CODES = frozenset(
    "BH COCO DEMO DOB DRGIS DVD EMP ETH ETHUD GDIS GENETIC LOCIS MST OPIOIDUD PDS PRS PSY PSYTHPN "
    "SCA SDV SEX SICKLE SOC SPI TBOO".split()
)
ADULT_AGE = 18


def of_security(security: Any) -> int:
    """The label bits a ``meta.security`` list names."""
    mask = 0
    for coding in security if isinstance(security, list) else []:
        if not isinstance(coding, dict):
            continue
        system, code = coding.get("system"), coding.get("code")
        if system == SYSTEM:
            mask |= _OURS.get(code, 0)  # type: ignore[arg-type]
        elif system == CONFIDENTIALITY and code in ("R", "V"):
            mask |= RESTRICTED
        elif system == ACT_CODE and code in _INFECTIOUS_ACT_CODES:
            mask |= INFECTIOUS
        elif system == ACT_CODE and code in _RESTRICTED_ACT_CODES:
            mask |= RESTRICTED
    return mask


def of_resource(resource: dict[str, Any]) -> int:
    meta = resource.get("meta")
    return of_security(meta.get("security")) if isinstance(meta, dict) else 0


def minor_until_us(patient: dict[str, Any]) -> int | None:
    """When a Patient turns 18 (µs since the epoch, UTC midnight of the birthday), or None when
    the birth date is unknown. A partial date is read as its latest possible day, the safe side:
    ``2010`` as 31 December 2010, ``2010-05`` as 31 May 2010."""
    raw = patient.get("birthDate")
    if not isinstance(raw, str) or len(raw) < 4 or not raw[:4].isdigit():
        return None
    try:
        year = int(raw[:4]) + ADULT_AGE
        if len(raw) >= 10:
            born = datetime.date.fromisoformat(raw[:10])
            day = _birthday(year, born.month, born.day)
        elif len(raw) >= 7:
            month = int(raw[5:7])
            day = _month_end(year, month)
        else:
            day = datetime.date(year, 12, 31)
    except ValueError:
        return None
    moment = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.UTC)
    return int(moment.timestamp()) * 1_000_000


def describe(mask: int, minor: bool = False) -> str:
    names = [name for bit, name in NAMES.items() if mask & bit]
    if minor and "minor" not in names:
        names.insert(0, "minor")
    return ", ".join(names) or "none"


def _birthday(year: int, month: int, day: int) -> datetime.date:
    if month == 2 and day == 29:  # born on 29 February: of age on 1 March in common years
        try:
            return datetime.date(year, 2, 29)
        except ValueError:
            return datetime.date(year, 3, 1)
    return datetime.date(year, month, day)


def _month_end(year: int, month: int) -> datetime.date:
    first_next = datetime.date(year + month // 12, month % 12 + 1, 1)
    return first_next - datetime.timedelta(days=1)
