"""``$validate-code`` on a CodeSystem or a ValueSet (IHE ITI-99): is this coded value valid?

See http://hl7.org/fhir/R4/codesystem-operation-validate-code.html and
http://hl7.org/fhir/R4/valueset-operation-validate-code.html. The answer is ``result``,
``message`` and the concept's ``display``:

- a code the CodeSystem does not define, or the value set does not contain, is ``result`` =
  false with a message saying why (a wrong system, an unknown code, a version other than the one
  stored or the one the value set uses);
- a wrong ``display`` is a warning: R4 defines ``message`` with ``result`` = true as "hints and
  warnings" and does not make a display part of what must be valid, so the answer is
  ``result`` = true, a message naming the valid displays, and ``display``. Displays are compared
  case- and accent-insensitively against the display and every designation;
- an inactive code is valid in a CodeSystem, with a warning; in a value set it is valid unless
  the value set excludes inactive codes (``compose.inactive`` = false);
- an abstract (``notSelectable``) code is valid unless ``abstract`` = false is given;
- for a ``codeableConcept``, ``result`` is true if one of its codings is valid; messages about
  the others are kept.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhir_server.errors import FhirError
from fhir_server.storage.repository import Session
from fhir_server.terminology import expand as expand_module
from fhir_server.terminology.concepts import Concept, Content, fold
from fhir_server.terminology.expand import label_of, open_included, whole_systems
from fhir_server.terminology.locate import open_codesystem
from fhir_server.terminology.parameters import param, parameters
from fhir_server.terminology.store import Matcher


@dataclass(frozen=True)
class Coded:
    """One coded value to validate (from code+system, a Coding, or one coding of a CodeableConcept)."""

    system: str | None
    code: str
    version: str | None = None
    display: str | None = None

    @property
    def label(self) -> str:
        return f"{self.system}#{self.code}" if self.system else self.code


@dataclass
class Verdict:
    valid: bool
    messages: list[str]
    display: str | None = None


def _display_check(coded: Coded, concept: Concept, language: str | None) -> str | None:
    if coded.display is None:
        return None
    names = concept.names()
    if fold(coded.display) in {fold(n) for n in names}:
        return None
    valid = ", ".join(repr(n) for n in names) or "none"
    return f"The display {coded.display!r} is not a display of {coded.label}; valid displays: {valid}"


def _concept_verdict(
    coded: Coded, concept: Concept | None, where: str, language: str | None, abstract_ok: bool
) -> Verdict:
    if concept is None:
        return Verdict(False, [f"{coded.label} is not a code of {where}"])
    if concept.abstract and not abstract_ok:
        return Verdict(False, [f"{coded.label} is abstract (not selectable) and abstract codes were not allowed"])
    messages = []
    if concept.inactive:
        messages.append(f"{coded.label} is inactive in {where}")
    wrong_display = _display_check(coded, concept, language)
    if wrong_display:
        messages.append(wrong_display)
    return Verdict(True, messages, concept.display_for(language))


def in_codesystem(content: Content, coded: Coded, *, language: str | None = None, abstract_ok: bool = True) -> Verdict:
    info = content.info
    info.require_codes()
    if coded.system and coded.system != info.url:
        return Verdict(False, [f"{coded.label} is not from {info.label} (its system is {coded.system})"])
    if coded.version and info.version and coded.version != info.version:
        return Verdict(
            False, [f"{coded.label}: version {coded.version} is not the stored version {info.version} of {info.url}"]
        )
    return _concept_verdict(coded, content.get(coded.code), info.label, language, abstract_ok)


def in_valueset(
    session: Session,
    valueset: dict[str, Any],
    coded: Coded,
    *,
    reference: str | None = None,
    language: str | None = None,
    abstract_ok: bool = True,
    search: Matcher | None = None,
) -> Verdict:
    label = label_of(valueset)
    if not coded.system:
        raise FhirError(
            "invalid-param", f"{coded.code}: a system is needed to validate a code against a value set", "system"
        )
    parts = whole_systems(valueset)
    if parts is not None:
        versions = [v for s, v in parts if s == coded.system]
        if not versions:
            return Verdict(False, [f"{coded.label} is not in {label} (it does not include {coded.system})"])
        content = open_included(session, coded.system, versions[0], label, search)
        if coded.version and content.info.version and coded.version != content.info.version:
            return Verdict(
                False,
                [f"{coded.label}: version {coded.version} is not the version {content.info.version} {label} uses"],
            )
        concept = content.get(coded.code)
        if concept is not None and concept.inactive and valueset["compose"].get("inactive") is False:
            return Verdict(False, [f"{coded.label} is inactive, and {label} excludes inactive codes"])
        verdict = _concept_verdict(coded, concept, label, language, abstract_ok)
        return verdict
    limit = expand_module.MAX_EXPANSION
    pairs = expand_module.composed_pairs(session, valueset, label, limit, search, reference)
    if (coded.system, coded.code) not in pairs:
        return Verdict(False, [f"{coded.label} is not in {label}"])
    try:
        concept = open_codesystem(session, coded.system, search=search).get(coded.code)
    except FhirError:
        concept = None  # listed in the value set, from a code system this server does not hold
    if concept is None:
        return Verdict(True, [], None)
    return _concept_verdict(coded, concept, label, language, abstract_ok)


def answer(verdicts: list[Verdict]) -> dict[str, Any]:
    """The ``Parameters`` answer for one coded value or the codings of a CodeableConcept."""
    valid = [v for v in verdicts if v.valid]
    result = bool(valid)
    messages = [m for v in verdicts for m in v.messages]
    out = [param("result", valueBoolean=result)]
    if messages:
        out.append(param("message", valueString="; ".join(messages)))
    display = next((v.display for v in valid if v.display), None)
    if display:
        out.append(param("display", valueString=display))
    return parameters(out)
