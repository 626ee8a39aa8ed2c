"""De-identification (脱敏) of FHIR R4 resources and Bundles for every exchange that leaves an institution.

Why one rule set: the consultation standard asks that "数据交互过程中，对患者身份证号、手机号、详细地址等
敏感信息进行脱敏处理，脱敏处理不影响临床使用 … 脱敏规则统一、透明，确保多中心脱敏标准一致" (001 §8.3.1,
MISSION R25) and that the patient's name and contact details travel only de-identified (001 表1).
:data:`RULES` is that rule set as data — one row per element path, datatype or extension, each with
the action taken and the reason — and the same table drives ``$deidentify``, cross-institution sharing,
exports (R28) and every other egress path. Clinical content is kept: the result is **pseudonymized**
(``meta.security`` PSEUDED, http://hl7.org/fhir/R4/security-labels.html), not anonymized.

Pseudonyms (:func:`pseudonym`) are ``HMAC-SHA256(key, scope ∥ 0x00 ∥ kind ∥ 0x00 ∥ value)``: keyed,
so nobody without the platform key can confirm a guess (an ID card number has only ~10^11 plausible
values, a bare hash of it is reversible by enumeration); scoped, so the same patient has one pseudonym
within a consultation (``ServiceRequest/…``) and unlinkable ones across consultations; typed by
``kind``, so the same digits as an ID card and as a record number do not reveal that they are equal.
References, ``Bundle.entry.fullUrl``, conditional references and ``ifNoneExist`` are rewritten with
the same functions as the ids and identifiers they point at, so a de-identified Bundle still resolves.

Free text (:func:`scrub_free_text`) is scrubbed twice: of every value the structured rules removed
anywhere in the same resource or Bundle (the patient's name, ID number, phone, street …: a note that
repeats them verbatim is caught even when no pattern would be), then of the patterns of GB 11643
resident ID numbers (18 characters with a verified ISO 7064 MOD 11-2 check character and a real birth
date, or the 15-digit pre-1999 form), mainland mobile and landline numbers and e-mail addresses.

Departures from HIPAA Safe Harbor (45 CFR 164.514(b)(2)), on purpose, because a consultation must stay
clinically usable (001 §8.3.1 "不影响临床使用"):

* clinical dates are kept (the timeline of illness, tests and treatment is what the expert reads);
  only the birth date and date of death are cut to the year, so age stays computable;
* province, city and district of an address are kept (endemic and regional disease matters for
  diagnosis; the standard asks only for the *detailed* address to be removed); ages over 89 are not
  grouped;
* practitioners' names and the institution's own identifier (USCC), address and telecom are kept:
  they are not the protected subject and the consultation must know the expert and reach the
  institution (every other identifier, a practitioner's ID card and licence included, is pseudonymized);
* binary attachments other than ``text/*`` (PDF, images, DICOM, ECG) are passed through: their content
  cannot be inspected here and must be de-identified where it is produced (DICOM: PS3.15 Annex E).
  Their title and URL are scrubbed; the photo of a person is removed.

Consequences worth knowing: a pseudonymous ID card value cannot meet cn-pat-1/cn-prac-1, so those
profile claims are dropped (:data:`PROFILES_BROKEN_BY_PSEUDONYMS`); searching free text for every
removed value may also blank an ordinary word that equals a two-character given name (建国) — the
safe side of the trade. Input that is not R4 JSON (an unknown element) raises
:class:`DeidentificationError` rather than being passed on unexamined.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime
import hashlib
import hmac
import html
import json
import re
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from typing import Any
from urllib.parse import parse_qsl, urlencode
from xml.sax.saxutils import escape as xml_escape

from fhir_server.model import Element, get_model

__all__ = [
    "Action",
    "DeidContext",
    "DeidentificationError",
    "PROFILES_BROKEN_BY_PSEUDONYMS",
    "PSEUDED",
    "REDACTED",
    "RULES",
    "Rule",
    "deidentify",
    "deidentify_bundle",
    "is_resident_id_number",
    "pseudonym",
    "scrub_free_text",
]

#: What replaces a scrubbed span of free text.
REDACTED = "[已脱敏]"

#: Base32 characters kept of the 256-bit HMAC: 26 × 5 = 130 bits, as strong as a random UUID. Two
#: values of one kind collide in a scope with probability ≈ n²/2^131 — 4·10^-22 for a billion values —
#: which matters because a collision would merge two patients' records. 26 characters fit a FHIR id
#: (≤ 64) with room for a ``Type/`` prefix in references.
PSEUDONYM_LENGTH = 26

#: Characters of the pseudonym shown in a name label ("患者-K3F9QZ2A"): 40 bits, so two persons of one
#: consultation (tens at most) share a label with probability below 10^-9. Labels are for people
#: reading the record; the ids carry the full pseudonym.
LABEL_LENGTH = 8

#: meta.security label of every resource this module returns: v3 ObservationValue PSEUDED
#: ("pseudonymized", security-labels.html, Security Integrity Observation).
PSEUDED: dict[str, str] = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "PSEUDED",
    "display": "pseudonymized",
}

#: Name-label prefix of each person resource type, used for its ``name`` and for the ``display`` of
#: references to it so both show the same label.
PERSON_LABELS: dict[str, str] = {"Patient": "患者", "RelatedPerson": "亲属", "Person": "人员"}

#: The narrative that replaces a resource's ``text`` (narrative.html: status "generated").
REMOVED_NARRATIVE = (
    '<div xmlns="http://www.w3.org/1999/xhtml"><p>叙述已在脱敏时移除，可能含患者身份信息。'
    "Narrative removed by de-identification.</p></div>"
)

#: the numbers of consultations (workflow/numbers.py): kept, they name no person
CONSULTATION_NUMBER = "http://fhir.telefhir.cn/sid/consultation-number"
#: Profiles whose invariants check the check character of an identifier the rules pseudonymize: a
#: de-identified resource no longer meets them, and a server that validates claimed profiles on write
#: (ours does, validation/conformance.py) would refuse it, so the claim is dropped.
PROFILES_BROKEN_BY_PSEUDONYMS: dict[str, str] = {
    "http://fhir.telefhir.cn/StructureDefinition/cn-patient": "cn-pat-1 (GB 11643 check character of the ID card)",
    "http://fhir.telefhir.cn/StructureDefinition/cn-practitioner": "cn-prac-1 (GB 11643 check character)",
}

CN_NATIVE_PLACE = "http://fhir.telefhir.cn/StructureDefinition/cn-native-place"
CN_ETHNICITY = "http://fhir.telefhir.cn/StructureDefinition/cn-ethnicity"


class DeidentificationError(ValueError):
    """The input cannot be de-identified safely (not FHIR R4 JSON, or an element that no rule covers)."""


@dataclass(frozen=True)
class DeidContext:
    """The platform's HMAC secret and the scope within which pseudonyms are stable.

    ``scope`` is typically the consultation, e.g. ``"ServiceRequest/abc"``: the same patient maps to
    the same pseudonym within it and to an unlinkable one in another scope.
    """

    key: bytes = field(repr=False)
    scope: str
    #: keep resource ids and references as they are: the platform's own view of another
    #: institution's data (security/egress.py), where ids are the server's random UUIDs and the
    #: reader must be able to follow references; an exchange that leaves the platform pseudonymizes them
    keep_links: bool = False
    #: for statistics exports: identifier values become this keyed, irreversible hash of
    #: (system, value), the same in every export (security/crypto.py ``statistics_hash``), so
    #: exports can be counted and joined by patient without revealing who
    identifier_hash: Callable[[str, str], str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.key, bytes):
            raise TypeError("DeidContext.key must be bytes")
        if len(self.key) < 32:
            raise ValueError("DeidContext.key must be at least 32 bytes (HMAC-SHA256 key, RFC 2104 §3)")
        if not isinstance(self.scope, str) or not self.scope:
            raise ValueError("DeidContext.scope must be a non-empty string")
        if "\0" in self.scope:
            raise ValueError("DeidContext.scope must not contain NUL (it separates the HMAC input's fields)")


# --------------------------------------------------------------------------- pseudonyms


def _digest(ctx: DeidContext, kind: str, value: str) -> bytes:
    if not isinstance(kind, str) or not kind or "\0" in kind:
        raise ValueError("pseudonym kind must be a non-empty string without NUL")
    if not isinstance(value, str):
        raise DeidentificationError(f"cannot pseudonymize a {type(value).__name__} ({kind}): expected a string")
    message = f"{ctx.scope}\0{kind}\0{value}".encode()
    return hmac.new(ctx.key, message, hashlib.sha256).digest()


def pseudonym(ctx: DeidContext, kind: str, value: str) -> str:
    """Deterministic pseudonym of ``value`` of the given ``kind`` (a resource type, ``Identifier|<system>`` …).

    Lower-case base32 of HMAC-SHA256, :data:`PSEUDONYM_LENGTH` characters, so it is a valid FHIR id
    (``[A-Za-z0-9\\-.]{1,64}``) and a valid identifier value.
    """
    return base64.b32encode(_digest(ctx, kind, value)).decode("ascii").lower()[:PSEUDONYM_LENGTH]


def _pseudonym_uuid(ctx: DeidContext, kind: str, value: str) -> uuid.UUID:
    """A version-4-shaped UUID from the HMAC, so ``urn:uuid:`` and OID values keep their form."""
    return uuid.UUID(bytes=_digest(ctx, kind, value)[:16], version=4)


def _label(prefix: str, token: str) -> str:
    return f"{prefix}-{token[:LABEL_LENGTH].upper()}"


# --------------------------------------------------------------------------- the rule set


class Action(Enum):
    PSEUDONYMIZE_ID = "pseudonymize-id"
    PSEUDONYMIZE_REFERENCE = "pseudonymize-reference"
    PSEUDONYMIZE_IDENTIFIER = "pseudonymize-identifier"
    PSEUDONYMIZE_URL = "pseudonymize-url"
    PSEUDONYMIZE_CONTENT_URL = "pseudonymize-content-url"
    PSEUDONYMIZE_QUERY = "pseudonymize-query"
    PSEUDONYMIZE_UID = "pseudonymize-uid"
    PSEUDONYMIZE_VALUE = "pseudonymize-value"
    REPLACE_NAME = "replace-name"
    REMOVE = "remove"
    GENERALIZE_ADDRESS = "generalize-address"
    PROVINCE_ONLY = "province-only"
    YEAR_ONLY = "year-only"
    REPLACE_NARRATIVE = "replace-narrative"
    SCRUB_NARRATIVE = "scrub-narrative"
    SCRUB_TEXT = "scrub-text"
    SCRUB_ATTACHMENT = "scrub-attachment"
    SCRUB_BINARY = "scrub-binary"
    DROP_BROKEN_PROFILE = "drop-broken-profile"
    KEEP = "keep"


@dataclass(frozen=True)
class Rule:
    """One row of the rule set.

    ``target`` is an element path of JSON names from a resource or datatype (``Patient.telecom``,
    ``Meta.source``; ``Resource.id`` for every resource; repeated recursive segments are collapsed, so
    ``Composition.section.text`` also covers nested sections), a datatype (``HumanName``, ``string``:
    every element of that type) or ``extension:<url>``. The most specific row wins: element path, then
    path from the enclosing datatype, then datatype; elements no row covers are walked into
    (complex) or kept (non-text primitives).
    """

    target: str
    action: Action
    reason: str
    #: REPLACE_NAME: prefix of the name label
    label: str | None = None


RULES: tuple[Rule, ...] = (
    # --- ids and links: pseudonymized consistently, so an exchange stays internally resolvable
    Rule(
        "Resource.id",
        Action.PSEUDONYMIZE_ID,
        "A logical id is a key that can be looked up at the source institution; pseudonymized per scope "
        "(contained resources keep their local ids, which only name fragments).",
    ),
    Rule(
        "Reference",
        Action.PSEUDONYMIZE_REFERENCE,
        "Type/id, absolute, urn:uuid, urn:oid and conditional references are rewritten with the same "
        "pseudonyms as their targets; the display of a reference to a person becomes that person's label.",
    ),
    Rule(
        "Identifier",
        Action.PSEUDONYMIZE_IDENTIFIER,
        "ID card, medical record, insurance and phone-as-identifier numbers are direct identifiers (001 §8.3.1); "
        "system, type and use are kept so the receiver knows what kind of number it is, the value is a "
        "pseudonym of (system, value); urn:oid and urn:uuid values keep their form. A consultation "
        "number (system http://fhir.telefhir.cn/sid/consultation-number) is kept: it names a "
        "consultation, not a person, and every institution taking part refers to it (001 §7.2 a-b).",
    ),
    Rule(
        "Organization.identifier",
        Action.KEEP,
        "An institution's unified social credit code (GB 32100) is public registration data, no more "
        "identifying than its kept name, and cn-org-1/cn-org-2 require it to be real.",
    ),
    Rule(
        "Meta.profile",
        Action.DROP_BROKEN_PROFILE,
        "Claims of the profiles in PROFILES_BROKEN_BY_PSEUDONYMS are dropped: their check-character "
        "invariants cannot hold for a pseudonym, and a false claim makes the receiver refuse the resource.",
    ),
    Rule(
        "Bundle.entry.fullUrl",
        Action.PSEUDONYMIZE_URL,
        "Rewritten like the references that point at the entry, so they still resolve.",
    ),
    Rule("Bundle.entry.request.url", Action.PSEUDONYMIZE_URL, "Carries the target's id or search values."),
    Rule("Bundle.entry.response.location", Action.PSEUDONYMIZE_URL, "Carries the created resource's id."),
    Rule(
        "Bundle.entry.request.ifNoneExist",
        Action.PSEUDONYMIZE_QUERY,
        "A search usually by identifier; identifier values are pseudonymized as in Identifier so it still matches.",
    ),
    Rule(
        "Bundle.link",
        Action.REMOVE,
        "Paging links are server state of the source and repeat the search values (identifier=…).",
    ),
    Rule("Bundle.entry.link", Action.REMOVE, "As Bundle.link."),
    Rule(
        "Bundle.signature",
        Action.REMOVE,
        "A signature over the original content no longer verifies and names the signer.",
    ),
    Rule(
        "Meta.source",
        Action.REMOVE,
        "The source system's URI and message id can be traced back to the original record.",
    ),
    Rule(
        "ImagingStudy.series.uid",
        Action.PSEUDONYMIZE_UID,
        "DICOM UIDs embed the institution's root and are looked up in its PACS; replaced by 2.25 UUID-"
        "derived UIDs as DICOM PS3.15 Annex E does (same UID → same replacement in the scope).",
    ),
    Rule("ImagingStudy.series.instance.uid", Action.PSEUDONYMIZE_UID, "As ImagingStudy.series.uid."),
    Rule(
        "Device.serialNumber",
        Action.PSEUDONYMIZE_VALUE,
        "A device serial number identifies the patient who uses or wears it (Safe Harbor (M)).",
    ),
    Rule("Device.udiCarrier", Action.REMOVE, "The UDI of an implant identifies its wearer (Safe Harbor (M))."),
    # --- names
    Rule(
        "Patient.name",
        Action.REPLACE_NAME,
        "The patient's name is the first direct identifier; replaced by a label from the patient's "
        "pseudonym so the consultation can still say which patient it is.",
        label=PERSON_LABELS["Patient"],
    ),
    Rule(
        "RelatedPerson.name",
        Action.REPLACE_NAME,
        "Names a relative of the patient.",
        label=PERSON_LABELS["RelatedPerson"],
    ),
    Rule(
        "Person.name", Action.REPLACE_NAME, "Names the person behind the patient record.", label=PERSON_LABELS["Person"]
    ),
    Rule(
        "Patient.contact.name", Action.REPLACE_NAME, "Names the patient's contact (guardian, relative).", label="联系人"
    ),
    Rule(
        "HumanName",
        Action.REPLACE_NAME,
        "Any other person's name (organization contacts, name extensions) — removed unless a row keeps it.",
        label="人员",
    ),
    Rule(
        "Practitioner.name",
        Action.KEEP,
        "Practitioners are not the protected subject; the consultation must know which expert gave an opinion "
        "(001 表1 participating experts).",
    ),
    Rule("FamilyMemberHistory.name", Action.REMOVE, "The relative's actual name."),
    Rule(
        "extension:http://hl7.org/fhir/StructureDefinition/patient-mothersMaidenName",
        Action.REMOVE,
        "A classic identity-verification secret.",
    ),
    # --- contact details
    Rule(
        "ContactPoint",
        Action.REMOVE,
        "Phone, e-mail and other contact points of persons are removed, not masked: 138****5678 keeps the "
        "carrier and region prefix and the last digits, which with age and district narrow a person down; "
        "the platform reaches the patient through the leading institution.",
    ),
    Rule("Organization.telecom", Action.KEEP, "The institution's own switchboard, not a person's."),
    Rule("Location.telecom", Action.KEEP, "A place's contact, not a person's."),
    Rule("HealthcareService.telecom", Action.KEEP, "A service's contact, not a person's."),
    Rule("Endpoint.contact", Action.KEEP, "Technical contact of a system endpoint."),
    Rule(
        "PractitionerRole.telecom",
        Action.KEEP,
        "The work contact of the expert's role, needed to coordinate the consultation.",
    ),
    # --- addresses
    Rule(
        "Address",
        Action.GENERALIZE_ADDRESS,
        "Only country, province (state), city and district are kept — regional disease matters and the "
        "standard asks only the detailed address (详细地址) to be removed; line, text and postalCode are "
        "removed, as are period and extensions (geolocation).",
    ),
    Rule("Organization.address", Action.KEEP, "The institution's own address, not a person's."),
    Rule("Location.address", Action.KEEP, "A place's address, not a person's."),
    Rule(
        "extension:" + CN_NATIVE_PLACE,
        Action.PROVINCE_ONLY,
        "Native place (籍贯) is exchanged (001 表1) but at province level only; city and below narrow the person.",
    ),
    Rule(
        "extension:" + CN_ETHNICITY,
        Action.KEEP,
        "Ethnicity (民族) is exchanged as patient basic information (001 表1) and matters clinically.",
    ),
    # --- dates: birth and death to the year (age stays computable); clinical dates kept
    Rule("Patient.birthDate", Action.YEAR_ONLY, "Year only: age stays computable, the day does not identify."),
    Rule("Practitioner.birthDate", Action.YEAR_ONLY, "As Patient.birthDate."),
    Rule("RelatedPerson.birthDate", Action.YEAR_ONLY, "As Patient.birthDate."),
    Rule("Person.birthDate", Action.YEAR_ONLY, "As Patient.birthDate."),
    Rule("Patient.deceasedDateTime", Action.YEAR_ONLY, "Date of death is a Safe Harbor date; the year is kept."),
    Rule("FamilyMemberHistory.bornDate", Action.YEAR_ONLY, "As Patient.birthDate, for the relative."),
    Rule("FamilyMemberHistory.deceasedDate", Action.YEAR_ONLY, "As Patient.deceasedDateTime, for the relative."),
    Rule(
        "extension:http://hl7.org/fhir/StructureDefinition/patient-birthTime",
        Action.REMOVE,
        "The exact time of birth is finer than the birth date.",
    ),
    # --- images of persons
    Rule("Patient.photo", Action.REMOVE, "A face is a biometric identifier."),
    Rule("Practitioner.photo", Action.REMOVE, "A face is a biometric identifier; not needed for a consultation."),
    Rule("RelatedPerson.photo", Action.REMOVE, "A face is a biometric identifier."),
    Rule("Person.photo", Action.REMOVE, "A face is a biometric identifier."),
    # --- free text
    Rule(
        "Narrative",
        Action.REPLACE_NARRATIVE,
        "A resource's narrative is generated from its data and typically prints the name and ID number; it is "
        "replaced by a generated div saying so.",
    ),
    Rule(
        "Composition.section.text",
        Action.SCRUB_NARRATIVE,
        "A section's narrative is the document's clinical content, so it is scrubbed rather than removed.",
    ),
    Rule(
        "string",
        Action.SCRUB_TEXT,
        "Free text (notes, CodeableConcept.text, valueString, displays, answers) may repeat identifiers: "
        "known values and ID/phone/e-mail patterns are replaced by [已脱敏].",
    ),
    Rule("markdown", Action.SCRUB_TEXT, "As string."),
    Rule(
        "Attachment.url",
        Action.PSEUDONYMIZE_CONTENT_URL,
        "A FHIR URL (Binary/id) is rewritten like a reference, so it names the pseudonymized Binary; any other "
        "URL is scrubbed as free text, since it can embed a patient number or name.",
    ),
    Rule(
        "Attachment",
        Action.SCRUB_ATTACHMENT,
        "text/* content is decoded, scrubbed and re-encoded (size updated, hash dropped); other binary content "
        "cannot be inspected here and is de-identified where it is produced.",
    ),
    Rule("Binary.data", Action.SCRUB_BINARY, "As Attachment, for a Binary resource's text/* content."),
    Rule("SampledData.data", Action.KEEP, "Waveform digits, not text; scrubbing would corrupt the signal."),
)

_RULES_BY_TARGET: dict[str, Rule] = {}
for _rule in RULES:
    if _rule.target in _RULES_BY_TARGET:
        raise RuntimeError(f"duplicate de-identification rule for {_rule.target}")
    _RULES_BY_TARGET[_rule.target] = _rule


def _collapse(path: str) -> str:
    """``Composition.section.section.text`` → ``Composition.section.text`` (recursive elements)."""
    parts: list[str] = []
    for part in path.split("."):
        if not parts or parts[-1] != part:
            parts.append(part)
    return ".".join(parts)


# --------------------------------------------------------------------------- free-text scrubbing

# Digit-run boundaries: not inside a longer number and not the fraction of a decimal (0.00123456789).
_BEFORE = r"(?<!\d)(?<!\d\.)"
_AFTER = r"(?!\d)(?!\.\d)"
_EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}")
#: GB 11643-1999: 6-digit region code (first digit 1–8), 8-digit birth date, 3-digit sequence, check character.
_ID18_RE = re.compile(_BEFORE + r"[1-8]\d{16}[0-9Xx]" + _AFTER)
#: The 15-digit form issued before 1999: region, YYMMDD, sequence (no check character).
_ID15_RE = re.compile(_BEFORE + r"[1-8]\d{5}(\d{2})(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])\d{3}" + _AFTER)
#: Mainland mobile (1[3-9]x xxxx xxxx, optional +86/0086/86 prefix and - or space separators).
_MOBILE_RE = re.compile(_BEFORE + r"(?:(?:\+|00)?86[- ]?)?1[3-9]\d(?:[- ]?\d{4}){2}" + _AFTER)
#: Landline: area code 0xx or 0xxx (optionally in parentheses), 7–8 digit local number.
_LANDLINE_RE = re.compile(_BEFORE + r"(?:\(0\d{2,3}\)|0\d{2,3})[- ]?\d{7,8}" + _AFTER)
_ID18_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID18_CHECK = "10X98765432"


def _real_date(year: int, month: int, day: int) -> bool:
    try:
        datetime.date(year, month, day)
    except ValueError:
        return False
    return True


def is_resident_id_number(value: str) -> bool:
    """A GB 11643 resident ID number: 17 digits whose ISO 7064 MOD 11-2 check character matches, with a real birth date.

    The check character alone lets one random 18-digit string in 11 through; requiring the birth date
    (digits 7–14) to be a real date from 1850 on keeps lab values and order numbers out.
    """
    if len(value) != 18 or not value[:17].isdigit() or value[17] not in "0123456789Xx":
        return False
    total = sum(int(d) * w for d, w in zip(value[:17], _ID18_WEIGHTS, strict=True))
    if _ID18_CHECK[total % 11] != value[17].upper():
        return False
    year, month, day = int(value[6:10]), int(value[10:12]), int(value[12:14])
    return year >= 1850 and _real_date(year, month, day)


def _literal_pattern(value: str) -> str:
    """A known value as a pattern; ASCII letters and digits at its ends must not continue a longer word or number."""
    pattern = re.escape(value)
    if value[0].isascii() and value[0].isalnum():
        pattern = r"(?<![A-Za-z0-9])" + pattern
    if value[-1].isascii() and value[-1].isalnum():
        pattern += r"(?![A-Za-z0-9])"
    return pattern


def _worth_scrubbing(value: str) -> bool:
    """Whether a removed value is distinctive enough to be searched for in free text.

    One CJK character (a family name such as 王) or a short ASCII token (a house number, "Li") would
    hit ordinary words and lab values, so those are left to the structured rules.
    """
    if len(value) < 2:
        return False
    if value.isascii():
        return len(value) >= (6 if value.isdigit() else 4)
    return True


class _Scrubber:
    """Free-text scrubbing with a fixed set of known sensitive values."""

    def __init__(self, known: Iterable[str] = ()) -> None:
        values = sorted({v.strip() for v in known if _worth_scrubbing(v.strip())}, key=lambda v: (-len(v), v))
        self._known = re.compile("|".join(map(_literal_pattern, values)), re.IGNORECASE) if values else None

    def text(self, text: str) -> str:
        if self._known is not None:
            text = self._known.sub(REDACTED, text)
        text = _EMAIL_RE.sub(REDACTED, text)
        text = _ID18_RE.sub(lambda m: REDACTED if is_resident_id_number(m.group()) else m.group(), text)
        text = _ID15_RE.sub(
            lambda m: REDACTED if _real_date(1900 + int(m.group(1)), int(m.group(2)), int(m.group(3))) else m.group(),
            text,
        )
        text = _MOBILE_RE.sub(REDACTED, text)
        return _LANDLINE_RE.sub(REDACTED, text)

    def xhtml(self, div: str) -> str:
        """Scrub the text and attribute values of an XHTML fragment, leaving its markup intact.

        Character references are decoded before matching (``&#49;3800000000`` is a phone number too);
        a changed span is re-escaped, so the result stays well-formed (narrative.html).
        """
        div = _XML_COMMENT_RE.sub("", div)
        parts = _TAG_RE.split(div)
        for i, part in enumerate(parts):
            if i % 2:
                parts[i] = _ATTR_RE.sub(lambda m: m.group(1) + self._attribute(m.group(2)), part)
            elif part:
                plain = html.unescape(part)
                scrubbed = self.text(plain)
                parts[i] = part if scrubbed == plain else xml_escape(scrubbed)
        return "".join(parts)

    def _attribute(self, quoted: str) -> str:
        quote, inner = quoted[0], quoted[1:-1]
        plain = html.unescape(inner)
        scrubbed = self.text(plain)
        if scrubbed == plain:
            return quoted
        return quote + xml_escape(scrubbed, {'"': "&quot;", "'": "&apos;"}) + quote


_XML_COMMENT_RE = re.compile(r"<!--.*?-->", re.DOTALL)
_TAG_RE = re.compile(r"(<[^>]*>)")
_ATTR_RE = re.compile(r"""(=\s*)("[^"]*"|'[^']*')""")


def scrub_free_text(text: str, known: Iterable[str] = ()) -> str:
    """Replace known sensitive values, resident ID numbers, phone numbers and e-mail addresses by :data:`REDACTED`.

    For free text outside FHIR (HL7 v2 NTE/OBX text, DICOM comments) on the same rules.
    """
    if not isinstance(text, str):
        raise DeidentificationError(f"free text must be a string, got {type(text).__name__}")
    return _Scrubber(known).text(text)


# --------------------------------------------------------------------------- the walk


class _Removed:
    """Marks an element the rules drop."""


_REMOVED = _Removed()


@dataclass(frozen=True, slots=True)
class _Deferred:
    """A value finished only when every sensitive value of the resource or Bundle is known.

    Free text is walked before the structured elements it may repeat (``text`` comes before ``name``),
    so scrubbing it waits for the end of the walk.
    """

    finish: Callable[[_Scrubber], Any]


@dataclass
class _Owner:
    """The resource being walked."""

    type: str
    id: str | None
    contained: bool
    #: local id -> resource type of its contained resources (for ``#id`` references)
    contained_types: dict[str, str]
    #: the resource as given (Binary.data needs its sibling contentType)
    raw: dict[str, Any]


_LOCATION_RE = re.compile(
    r"(?P<base>[A-Za-z][A-Za-z0-9+.\-]*://[^?#]*/)?"
    r"(?P<type>[A-Z][A-Za-z]+)"
    r"(?:/(?P<id>[A-Za-z0-9\-.]{1,64})(?P<history>/_history/[A-Za-z0-9\-.]{1,64})?)?"
    r"(?P<operation>/\$[A-Za-z][A-Za-z0-9\-]*)?"
    r"(?:\?(?P<query>.*))?",
    re.DOTALL,
)
_ABSOLUTE_URL_RE = re.compile(r"https?://\S+")
_YEAR_RE = re.compile(r"([0-9]{4})(?:-|T|$)")
#: Search parameters that carry no patient data (http://hl7.org/fhir/R4/search.html result parameters).
_NEUTRAL_SEARCH_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_total",
        "_contained",
        "_containedType",
        "_format",
        "_pretty",
        "_lastUpdated",
    }
)


class _Deidentifier:
    """One de-identification run: the walk over one resource or Bundle and the values it removed."""

    def __init__(self, ctx: DeidContext) -> None:
        if not isinstance(ctx, DeidContext):
            raise TypeError("ctx must be a DeidContext")
        self.ctx = ctx
        self.model = get_model()
        #: values removed by structured rules, searched for in all free text of the run
        self.sensitive: set[str] = set()
        #: original fullUrl -> (resource type, id) of the Bundle entries, for urn:uuid references
        self.entries: dict[str, tuple[str, str | None]] = {}
        self.owners: list[_Owner] = []

    # ---- entry points

    def run(self, resource: Any) -> dict[str, Any]:
        if isinstance(resource, dict) and resource.get("resourceType") == "Bundle":
            self._index_entries(resource)
        out = self.resource(resource, "", contained=False)
        return _finish(out, _Scrubber(self.sensitive))

    def _index_entries(self, bundle: dict[str, Any]) -> None:
        for entry in bundle.get("entry") or ():
            if not isinstance(entry, dict):
                continue
            res, full_url = entry.get("resource"), entry.get("fullUrl")
            if isinstance(res, dict) and isinstance(full_url, str) and isinstance(res.get("resourceType"), str):
                rid = res.get("id")
                self.entries[full_url] = (res["resourceType"], rid if isinstance(rid, str) else None)
                if res["resourceType"] == "Bundle":
                    self._index_entries(res)

    # ---- resources and complex values

    def resource(self, res: Any, where: str, contained: bool) -> dict[str, Any]:
        if not isinstance(res, dict):
            raise DeidentificationError(f"{where or 'input'}: expected a resource (JSON object)")
        rtype = res.get("resourceType")
        if not isinstance(rtype, str) or not self.model.is_resource(rtype) or rtype in ("Resource", "DomainResource"):
            raise DeidentificationError(f"{where or 'input'}: unknown resource type {rtype!r}")
        rid = res.get("id")
        contained_types = {
            c["id"]: c["resourceType"]
            for c in res.get("contained") or ()
            if isinstance(c, dict) and isinstance(c.get("id"), str) and isinstance(c.get("resourceType"), str)
        }
        self.owners.append(_Owner(rtype, rid if isinstance(rid, str) else None, contained, contained_types, res))
        try:
            out = self._object(res, rtype, rtype, self.model.elements(rtype), where or rtype, resource=True)
        finally:
            self.owners.pop()
        assert isinstance(out, dict)  # resourceType is always kept
        return out if contained else _with_label(out)

    def _object(
        self,
        obj: Any,
        path: str,
        type_name: str | None,
        elements: dict[str, Element],
        where: str,
        resource: bool = False,
        special: dict[str, Callable[[Any], Any]] | None = None,
    ) -> dict[str, Any] | _Removed:
        """A resource, datatype or backbone element, property by property in the input's order."""
        if not isinstance(obj, dict):
            raise DeidentificationError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        out: dict[str, Any] = {}
        for key in obj:
            if resource and key == "resourceType":
                out[key] = obj[key]
                continue
            name = key[1:] if key.startswith("_") else key
            if key.startswith("_") and name in obj:
                continue  # handled with its primitive value
            elem = elements.get(name)
            if elem is None:
                raise DeidentificationError(f"{where}.{name}: not an element of {type_name or path}")
            value, ext = obj.get(name, _REMOVED), obj.get("_" + name, _REMOVED)
            if special is not None and name in special:
                new_value = special[name](value) if value is not _REMOVED else _REMOVED
                new_ext = self._primitive_extensions(ext, f"{where}._{name}")
            else:
                new_value, new_ext = self._element(elem, path, type_name, value, ext, where, resource)
            if new_value is not _REMOVED:
                out[name] = new_value
            if new_ext is not _REMOVED:
                out["_" + name] = new_ext
        if not out or (resource is False and set(out) <= {"id"}):
            return _REMOVED
        return out

    def _rule(self, elem: Element, path: str, type_name: str | None, at_root: bool) -> Rule | None:
        rule = _RULES_BY_TARGET.get(_collapse(f"{path}.{elem.name}"))
        if rule is None and type_name is not None:
            rule = _RULES_BY_TARGET.get(f"{type_name}.{elem.name}")
        if rule is None and at_root:
            rule = _RULES_BY_TARGET.get(f"Resource.{elem.name}")
        if rule is None:
            rule = _RULES_BY_TARGET.get(elem.type)
        return rule

    def _element(
        self,
        elem: Element,
        path: str,
        type_name: str | None,
        value: Any,
        ext: Any,
        where: str,
        at_root: bool,
    ) -> tuple[Any, Any]:
        rule = self._rule(elem, path, type_name, at_root)
        epath, ewhere = f"{path}.{elem.name}", f"{where}.{elem.name}"
        action = rule.action if rule is not None else None
        if action is Action.REMOVE:
            if value is not _REMOVED:
                for item in value if isinstance(value, list) else [value]:
                    self._harvest(item, elem.type)
            return _REMOVED, _REMOVED
        if action is Action.KEEP:
            return (_REMOVED if value is _REMOVED else copy.deepcopy(value)), (
                _REMOVED if ext is _REMOVED else copy.deepcopy(ext)
            )
        if value is None:
            raise DeidentificationError(f"{ewhere}: null is only allowed inside arrays")
        new_ext = self._primitive_extensions(ext, f"{where}._{elem.name}")
        if value is _REMOVED:
            return _REMOVED, new_ext
        if not elem.repeats:
            if isinstance(value, list):
                raise DeidentificationError(f"{ewhere}: expected a single value, got an array")
            return self._item(rule, elem, value, epath, ewhere), new_ext
        if not isinstance(value, list):
            raise DeidentificationError(f"{ewhere}: expected an array")
        items = [self._item(rule, elem, v, epath, f"{ewhere}[{i}]") for i, v in enumerate(value)]
        if self.model.is_primitive(elem.type):
            # a dropped primitive takes its _x item with it, so the two arrays stay aligned (json.html)
            kept_at = [i for i, item in enumerate(items) if item is not _REMOVED]
            if isinstance(new_ext, list):
                new_ext = [new_ext[i] for i in kept_at if i < len(new_ext)]
                new_ext = new_ext if any(e is not None for e in new_ext) else _REMOVED
            return ([items[i] for i in kept_at] if kept_at else _REMOVED), new_ext
        kept: list[Any] = []
        for item in items:
            if item is not _REMOVED and not (action is Action.REPLACE_NAME and item in kept):
                kept.append(item)
        return (kept if kept else _REMOVED), new_ext

    def _primitive_extensions(self, ext: Any, where: str) -> Any:
        """The ``_x`` sibling of a primitive: id and extensions, one per array item (json.html#primitive)."""
        if ext is _REMOVED:
            return _REMOVED
        elements = self.model.elements("Element")
        if isinstance(ext, list):
            items = [
                None if e is None else self._object(e, "Element", "Element", elements, f"{where}[{i}]")
                for i, e in enumerate(ext)
            ]
            items = [None if i is _REMOVED else i for i in items]
            return items if any(i is not None for i in items) else _REMOVED
        return self._object(ext, "Element", "Element", elements, where)

    def _item(self, rule: Rule | None, elem: Element, value: Any, path: str, where: str) -> Any:
        """One value of an element (one array item), by the rule's action or by its type."""
        if value is None:
            return None  # placeholder in a primitive array paired with _x
        if elem.type == "Resource":
            return self.resource(value, where, contained=elem.name == "contained")
        action = rule.action if rule is not None else None
        handler = _HANDLERS.get(action) if action is not None else None
        if handler is not None:
            return handler(self, rule, elem, value, path, where)
        if self.model.is_primitive(elem.type):
            return value
        if elem.type == "Extension":
            return self._extension(value, path, where)
        return self._complex(elem, value, path, where)

    def _complex(self, elem: Element, value: Any, path: str, where: str, **kwargs: Any) -> dict[str, Any] | _Removed:
        type_name = None if elem.children is not None else elem.type
        return self._object(value, path, type_name, self.model.children_of(elem), where, **kwargs)

    def _extension(self, ext: Any, path: str, where: str) -> dict[str, Any] | _Removed:
        if not isinstance(ext, dict):
            raise DeidentificationError(f"{where}: expected an Extension object")
        url = ext.get("url")
        rule = _RULES_BY_TARGET.get(f"extension:{url}") if isinstance(url, str) else None
        if rule is not None and rule.action is Action.KEEP:
            return copy.deepcopy(ext)
        if rule is not None and rule.action is Action.REMOVE:
            for key, value in ext.items():
                if key.startswith("value"):
                    self._harvest(value, self.model.elements("Extension")[key].type)
            return _REMOVED
        if rule is not None and rule.action is Action.PROVINCE_ONLY:
            return self._province_only(ext, where)
        out = self._object(ext, path, "Extension", self.model.elements("Extension"), where)
        # ext-1: an extension has a value or extensions; one whose content was removed goes too
        if out is _REMOVED or not any(k.startswith("value") or k == "extension" for k in out):
            return _REMOVED
        return out

    # ---- actions

    def _pseudonymize_id(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> Any:
        owner = self.owners[-1]
        if owner.contained or self.ctx.keep_links:
            return value
        return pseudonym(self.ctx, owner.type, _string(value, where))

    def _reference(self, rule: Rule, elem: Element, ref: Any, path: str, where: str) -> Any:
        if not isinstance(ref, dict):
            raise DeidentificationError(f"{where}: expected a Reference object")
        target_type, target_id = self._reference_target(ref)
        special = {
            "reference": lambda v: self._location(_string(v, f"{where}.reference"), f"{where}.reference"),
            "display": lambda v: self._reference_display(_string(v, f"{where}.display"), elem, target_type, target_id),
        }
        return self._complex(elem, ref, path, where, special=special)

    def _reference_target(self, ref: dict[str, Any]) -> tuple[str | None, str | None]:
        """Type and id of what a Reference points at, as far as the reference itself and the Bundle tell."""
        literal = ref.get("reference")
        if isinstance(literal, str):
            if literal.startswith("#"):
                container = next((o for o in reversed(self.owners) if not o.contained), None)
                if literal == "#" and container is not None:
                    return container.type, None
                return (container.contained_types.get(literal[1:]) if container else None), None
            if literal in self.entries:
                return self.entries[literal]
            m = _LOCATION_RE.fullmatch(literal)
            if m is not None and m.group("id") and self.model.is_resource(m.group("type")):
                return m.group("type"), m.group("id")
        rtype = ref.get("type")
        if isinstance(rtype, str):
            return rtype.rsplit("/", 1)[-1], None
        return None, None

    def _reference_display(self, display: str, elem: Element, target_type: str | None, target_id: str | None) -> Any:
        """The display of a reference to a person is that person's name: it becomes their label."""
        if target_type in PERSON_LABELS:
            self._add_sensitive(display)
            if target_id is not None:
                return _label(PERSON_LABELS[target_type], pseudonym(self.ctx, target_type, target_id))
            return REDACTED
        targets = elem.targets
        may_be_person = target_type is None and (
            targets is None or "Resource" in targets or any(t in PERSON_LABELS for t in targets)
        )
        if may_be_person:
            self._add_sensitive(display)
            return REDACTED
        return _Deferred(lambda s: s.text(display))

    def _location(self, url: str, where: str) -> str:
        """A reference, fullUrl, request url or location with its ids and search values pseudonymized."""
        if url.startswith("#") or self.ctx.keep_links:
            return url
        if url[:9].lower() == "urn:uuid:":
            return f"urn:uuid:{_pseudonym_uuid(self.ctx, 'uuid', url[9:].lower())}"
        if url.startswith("urn:oid:"):
            return f"urn:oid:2.25.{_pseudonym_uuid(self.ctx, 'oid', url[8:]).int}"
        m = _LOCATION_RE.fullmatch(url)
        if m is not None and self.model.is_resource(m.group("type")):
            rtype = m.group("type")
            out = (m.group("base") or "") + rtype
            if m.group("id"):
                out += "/" + pseudonym(self.ctx, rtype, m.group("id")) + (m.group("history") or "")
            out += m.group("operation") or ""
            if m.group("query") is not None:
                out += "?" + self._query(rtype, m.group("query"))
            return out
        if _ABSOLUTE_URL_RE.fullmatch(url):
            # not a FHIR RESTful URL: replaced as a whole, consistently, by an opaque urn:uuid
            return f"urn:uuid:{_pseudonym_uuid(self.ctx, 'url', url)}"
        raise DeidentificationError(
            f"{where}: cannot de-identify {url!r}: expected Type/id, an absolute URL, urn:uuid:, urn:oid:, "
            "#id or Type?search"
        )

    def _query(self, rtype: str | None, query: str) -> str:
        """Search values pseudonymized: identifiers and ids as in the resources, so conditional references match."""
        pairs: list[tuple[str, str]] = []
        for name, value in parse_qsl(query, keep_blank_values=True):
            base = name.split(":", 1)[0]
            if base in _NEUTRAL_SEARCH_PARAMETERS:
                new = value
            elif base == "_id" and rtype is not None:
                new = ",".join(pseudonym(self.ctx, rtype, v) for v in value.split(","))
            elif base.rsplit(".", 1)[-1] == "identifier":
                new = ",".join(self._identifier_token(v) for v in value.split(","))
            else:
                ref = _LOCATION_RE.fullmatch(value)
                if ref is not None and ref.group("id") and self.model.is_resource(ref.group("type")):
                    new = self._location(value, "search parameter")
                else:
                    new = pseudonym(self.ctx, f"search|{rtype}|{base}", value)
            pairs.append((name, new))
        return urlencode(pairs, safe="|,:/$")

    def _identifier_token(self, token: str) -> str:
        system, bar, value = token.partition("|")
        if not bar:
            system, value = "", token
        self._add_sensitive(value)
        return f"{system}{bar}{self._identifier_value(system or None, value)}"

    def _identifier(self, rule: Rule, elem: Element, ident: Any, path: str, where: str) -> Any:
        if not isinstance(ident, dict):
            raise DeidentificationError(f"{where}: expected an Identifier object")
        system = ident.get("system")
        if system == CONSULTATION_NUMBER:
            return ident

        def value(v: Any) -> str:
            v = _string(v, f"{where}.value")
            self._add_sensitive(v)
            return self._identifier_value(system if isinstance(system, str) else None, v)

        return self._complex(elem, ident, path, where, special={"value": value})

    def _identifier_value(self, system: str | None, value: str) -> str:
        if self.ctx.identifier_hash is not None:
            return self.ctx.identifier_hash(system or "", value)
        if value.startswith("urn:oid:"):
            return f"urn:oid:2.25.{_pseudonym_uuid(self.ctx, 'oid', value[8:]).int}"
        if value[:9].lower() == "urn:uuid:":
            return f"urn:uuid:{_pseudonym_uuid(self.ctx, 'uuid', value[9:].lower())}"
        return pseudonym(self.ctx, f"Identifier|{system or ''}", value)

    def _pseudonymize_url(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> str:
        return self._location(_string(value, where), where)

    def _pseudonymize_content_url(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> Any:
        url = _string(value, where)
        m = _LOCATION_RE.fullmatch(url)
        if m is not None and m.group("id") and self.model.is_resource(m.group("type")):
            return self._location(url, where)
        return _Deferred(lambda s: s.text(url))

    def _pseudonymize_query(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> str:
        return self._query(None, _string(value, where))

    def _pseudonymize_uid(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> str:
        return f"2.25.{_pseudonym_uuid(self.ctx, 'oid', _string(value, where)).int}"

    def _pseudonymize_value(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> str:
        value = _string(value, where)
        self._add_sensitive(value)
        return pseudonym(self.ctx, rule.target, value)

    def _replace_name(self, rule: Rule, elem: Element, name: Any, path: str, where: str) -> dict[str, str]:
        """A name becomes ``{"use": "anonymous", "text": label}`` (name-use "anonymous": a pseudonym for privacy)."""
        if not isinstance(name, dict):
            raise DeidentificationError(f"{where}: expected a HumanName object")
        self._harvest(name, "HumanName")
        owner = self.owners[-1]
        if path == f"{owner.type}.name" and owner.type in PERSON_LABELS and owner.id and not owner.contained:
            token = pseudonym(self.ctx, owner.type, owner.id)  # the label matches references' displays
        else:
            token = pseudonym(self.ctx, "HumanName", json.dumps(name, sort_keys=True, ensure_ascii=False))
        return {"use": "anonymous", "text": _label(rule.label or "人员", token)}

    def _generalize_address(self, rule: Rule, elem: Element, address: Any, path: str, where: str) -> Any:
        if not isinstance(address, dict):
            raise DeidentificationError(f"{where}: expected an Address object")
        self._harvest(address, "Address")
        kept = {k: address[k] for k in ("use", "type", "country", "state", "city", "district") if k in address}
        return kept if any(k in kept for k in ("country", "state", "city", "district")) else _REMOVED

    def _province_only(self, ext: dict[str, Any], where: str) -> dict[str, Any] | _Removed:
        address = ext.get("valueAddress")
        if not isinstance(address, dict):
            raise DeidentificationError(f"{where}: {CN_NATIVE_PLACE} must have a valueAddress")
        self._harvest(address, "Address")
        kept = {k: address[k] for k in ("country", "state") if k in address}
        return {"url": ext["url"], "valueAddress": kept} if "state" in kept else _REMOVED

    def _year_only(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> str:
        m = _YEAR_RE.match(_string(value, where))
        if m is None:
            raise DeidentificationError(f"{where}: {value!r} is not a FHIR date")
        return m.group(1)

    def _drop_broken_profile(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> Any:
        canonical = _string(value, where)
        return _REMOVED if canonical.partition("|")[0] in PROFILES_BROKEN_BY_PSEUDONYMS else canonical

    def _replace_narrative(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> dict[str, str]:
        return {"status": "generated", "div": REMOVED_NARRATIVE}

    def _scrub_narrative(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> Any:
        if not isinstance(value, dict) or not isinstance(value.get("div"), str):
            raise DeidentificationError(f"{where}: expected a Narrative with a div")
        div = value["div"]
        return {"status": value.get("status", "generated"), "div": _Deferred(lambda s: s.xhtml(div))}

    def _scrub_text(self, rule: Rule, elem: Element, value: Any, path: str, where: str) -> _Deferred:
        text = _string(value, where)
        return _Deferred(lambda s: s.text(text))

    def _scrub_attachment(self, rule: Rule, elem: Element, att: Any, path: str, where: str) -> Any:
        out = self._complex(elem, att, path, where)
        if out is _REMOVED or "data" not in out:
            return out
        assert isinstance(out, dict)
        decoded = _decode_text(att.get("contentType"), out["data"], f"{where}.data")
        if decoded is None:
            return out
        text, charset = decoded

        def finish(scrubber: _Scrubber) -> dict[str, Any]:
            scrubbed = scrubber.text(text)
            if scrubbed == text:
                return out
            raw = scrubbed.encode(charset)
            # the hash of the original would let anyone confirm a guess at it
            changed = {k: v for k, v in out.items() if k not in ("hash", "_hash")}
            changed["data"] = base64.b64encode(raw).decode("ascii")
            if "size" in changed:
                changed["size"] = len(raw)
            return changed

        return _Deferred(finish)

    def _scrub_binary(self, rule: Rule, elem: Element, data: Any, path: str, where: str) -> Any:
        decoded = _decode_text(self.owners[-1].raw.get("contentType"), data, where)
        if decoded is None:
            return data
        text, charset = decoded

        def finish(scrubber: _Scrubber) -> str:
            scrubbed = scrubber.text(text)
            return data if scrubbed == text else base64.b64encode(scrubbed.encode(charset)).decode("ascii")

        return _Deferred(finish)

    # ---- what the structured rules removed, for free-text scrubbing

    def _add_sensitive(self, value: Any) -> None:
        if isinstance(value, str) and value.strip():
            self.sensitive.add(value.strip())

    def _harvest(self, value: Any, type_name: str) -> None:
        if not isinstance(value, dict):
            if type_name in ("string", "markdown"):
                self._add_sensitive(value)
            return
        if type_name == "HumanName":
            given = [g for g in value.get("given") or () if isinstance(g, str)]
            family = value.get("family") if isinstance(value.get("family"), str) else ""
            for part in (value.get("text"), family, *given):
                self._add_sensitive(part)
            if family and given:
                self._add_sensitive(family + "".join(given))  # 王秀英
                self._add_sensitive(" ".join(given) + " " + family)  # Xiuying Wang
                self._add_sensitive(family + " " + " ".join(given))  # Wang Xiuying
        elif type_name == "Address":
            for part in (value.get("text"), value.get("postalCode"), *(value.get("line") or ())):
                self._add_sensitive(part)
        elif type_name in ("ContactPoint", "Identifier"):
            self._add_sensitive(value.get("value"))


_HANDLERS: dict[Action, Callable[..., Any]] = {
    Action.PSEUDONYMIZE_ID: _Deidentifier._pseudonymize_id,
    Action.PSEUDONYMIZE_REFERENCE: _Deidentifier._reference,
    Action.PSEUDONYMIZE_IDENTIFIER: _Deidentifier._identifier,
    Action.PSEUDONYMIZE_URL: _Deidentifier._pseudonymize_url,
    Action.PSEUDONYMIZE_CONTENT_URL: _Deidentifier._pseudonymize_content_url,
    Action.PSEUDONYMIZE_QUERY: _Deidentifier._pseudonymize_query,
    Action.PSEUDONYMIZE_UID: _Deidentifier._pseudonymize_uid,
    Action.PSEUDONYMIZE_VALUE: _Deidentifier._pseudonymize_value,
    Action.REPLACE_NAME: _Deidentifier._replace_name,
    Action.GENERALIZE_ADDRESS: _Deidentifier._generalize_address,
    Action.YEAR_ONLY: _Deidentifier._year_only,
    Action.REPLACE_NARRATIVE: _Deidentifier._replace_narrative,
    Action.SCRUB_NARRATIVE: _Deidentifier._scrub_narrative,
    Action.SCRUB_TEXT: _Deidentifier._scrub_text,
    Action.SCRUB_ATTACHMENT: _Deidentifier._scrub_attachment,
    Action.SCRUB_BINARY: _Deidentifier._scrub_binary,
    Action.DROP_BROKEN_PROFILE: _Deidentifier._drop_broken_profile,
}


def _string(value: Any, where: str) -> str:
    if not isinstance(value, str):
        raise DeidentificationError(f"{where}: expected a string, got {type(value).__name__}")
    return value


_CHARSET_RE = re.compile(r";\s*charset\s*=\s*\"?([A-Za-z0-9_\-:.]+)\"?", re.IGNORECASE)


def _decode_text(content_type: Any, data: Any, where: str) -> tuple[str, str] | None:
    """The text of a ``text/*`` payload and its charset (RFC 2046 §4.1.2), or None for other content."""
    if not isinstance(content_type, str) or not content_type.strip().lower().startswith("text/"):
        return None
    m = _CHARSET_RE.search(content_type)
    charset = m.group(1) if m else "utf-8"
    try:
        raw = base64.b64decode(_string(data, where), validate=True)
        return raw.decode(charset), charset
    except (binascii.Error, ValueError, LookupError) as exc:
        raise DeidentificationError(f"{where}: {content_type} content is not decodable text ({exc})") from exc


def _finish(node: Any, scrubber: _Scrubber) -> Any:
    """Resolve deferred free text now that every sensitive value of the run is known."""
    while isinstance(node, _Deferred):
        node = node.finish(scrubber)
    if isinstance(node, dict):
        return {k: _finish(v, scrubber) for k, v in node.items()}
    if isinstance(node, list):
        return [_finish(v, scrubber) for v in node]
    return node


def _with_label(resource: dict[str, Any]) -> dict[str, Any]:
    """Add PSEUDED to meta.security (after id, where meta belongs), keeping any labels already there."""
    meta = dict(resource.get("meta") or {})
    security = list(meta.get("security") or [])
    if not any(c.get("system") == PSEUDED["system"] and c.get("code") == PSEUDED["code"] for c in security):
        security.append(dict(PSEUDED))
    meta["security"] = security
    out: dict[str, Any] = {}
    for key, value in resource.items():
        if key == "meta":
            continue
        out[key] = value
        if key == "id" or (key == "resourceType" and "id" not in resource):
            out["meta"] = meta
    return out


# --------------------------------------------------------------------------- public entry points


def deidentify(resource: dict[str, Any], ctx: DeidContext) -> dict[str, Any]:
    """A de-identified copy of ``resource`` under :data:`RULES`; the input is never changed.

    A Bundle is handled as by :func:`deidentify_bundle`. Raises :class:`DeidentificationError` for
    input that is not FHIR R4 JSON (an unknown element could carry anything, so it is not passed on).
    """
    return _Deidentifier(ctx).run(resource)


def deidentify_bundle(bundle: dict[str, Any], ctx: DeidContext) -> dict[str, Any]:
    """A de-identified copy of a Bundle: every entry, with fullUrls and references rewritten alike.

    Values removed from any entry (the patient's name in the Patient entry) are scrubbed from the
    free text of every other entry (a note that repeats it), so one run covers the whole exchange.
    """
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise DeidentificationError("deidentify_bundle expects a Bundle resource")
    return _Deidentifier(ctx).run(bundle)
