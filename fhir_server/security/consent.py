"""Reading a patient's Consents: may an institution collect, or be shown, which of their data?

Why we evaluate Consent resources rather than keep a table of permissions: the Consent *is* the
record the law asks for (个人信息保护法; 001 §8.3.2 "采集患者数据前需获得患者或其监护人的明示同意"),
written by whatever system the institution captures it with, so the decision follows it exactly,
and changes the moment it is revoked (status no longer ``active``).

The rules (http://hl7.org/fhir/R4/consent.html#provision): only ``active`` Consents with scope
``patient-privacy`` or ``treatment`` count. A provision applies to a question when each of its
constraints it states matches: ``period`` (now), ``actor.reference`` (the institution, as
``Organization/<id>``), ``action`` (``collect``, ``access``, ``use``, ``disclose``, ``correct``),
``class`` (our data categories, http://fhir.telefhir.cn/CodeSystem/data-category) and
``securityLabel``. An applying provision gives its ``type`` (``permit`` when absent); a nested
provision that applies overrides its parent (an exception). Across Consents the most specific
answer counts (:func:`decision`).

Sensitive data needs to be named: a provision with no ``securityLabel`` covers only unlabelled
data, so a minor's or an infectious-disease patient's data crosses only where the consent
lists the label (security/labels.py) — the "额外隐私保护措施" of 001 §8.3.2.
"""

from __future__ import annotations

from typing import Any

from fhir_server.security import categories as cat
from fhir_server.security import labels as lab
from fhir_server.util.fhirdate import parse_range

SCOPES = frozenset({"patient-privacy", "treatment"})
ACTION_SYSTEM = "http://terminology.hl7.org/CodeSystem/consentaction"


def _codes(concepts: Any, system: str | None = None) -> set[str]:
    out = set()
    for concept in concepts if isinstance(concepts, list) else []:
        for coding in concept.get("coding", []) if isinstance(concept, dict) else []:
            if isinstance(coding, dict) and (system is None or coding.get("system") == system):
                if isinstance(coding.get("code"), str):
                    out.add(coding["code"])
    return out


def _in_period(period: Any, now_us: int) -> bool:
    if not isinstance(period, dict):
        return True
    try:
        if isinstance(period.get("start"), str) and parse_range(period["start"])[0] > now_us:
            return False
        if isinstance(period.get("end"), str) and parse_range(period["end"])[1] < now_us:
            return False
    except ValueError:
        return False  # an unreadable period does not permit anything
    return True


def _actors(provision: dict[str, Any]) -> set[str] | None:
    actors = provision.get("actor")
    if not isinstance(actors, list) or not actors:
        return None
    found = set()
    for actor in actors:
        ref = actor.get("reference", {}).get("reference") if isinstance(actor, dict) else None
        if isinstance(ref, str):
            found.add(ref.split("/_history")[0])
    return found


def _classes(provision: dict[str, Any]) -> int | None:
    """The data categories a provision names in ``class`` (None: it does not restrict)."""
    classes = provision.get("class")
    if not isinstance(classes, list) or not classes:
        return None
    mask = 0
    for coding in classes:
        if isinstance(coding, dict) and coding.get("system") == cat.SYSTEM:
            mask |= cat.CODES.get(coding.get("code"), 0)  # type: ignore[arg-type]
    return mask


def _applies(provision: dict[str, Any], action: str, actor: str, category: int, label: int, now_us: int) -> bool:
    if not _in_period(provision.get("period"), now_us):
        return False
    actors = _actors(provision)
    if actors is not None and actor not in actors:
        return False
    actions = _codes(provision.get("action"))
    if actions and action not in actions:
        return False
    classes = _classes(provision)
    if classes is not None and not classes & category:
        return False
    named = lab.of_security(provision.get("securityLabel"))
    if named:  # about the data carrying those labels only
        return bool(named & label)
    # unlabelled: about unlabelled data, and a deny about all data; a permit never reaches
    # sensitive data without naming its label
    return not label or provision.get("type") == "deny"


_CONSTRAINTS = ("period", "actor", "action", "class", "securityLabel", "purpose", "code", "data", "dataPeriod")


def _decide(provision: Any, action: str, actor: str, category: int, label: int, now_us: int) -> tuple[str, bool] | None:
    """(``permit``/``deny``, explicit) for one question, None when the provision does not apply.

    Explicit: decided by a provision that states some constraint (a nested exception, or a top
    provision with an actor, action, class, …); a bare top provision is only a default."""
    if not isinstance(provision, dict) or not _applies(provision, action, actor, category, label, now_us):
        return None
    verdict = provision.get("type") if provision.get("type") in ("permit", "deny") else "permit"
    decided = (verdict, any(provision.get(k) for k in _CONSTRAINTS))
    for nested in provision.get("provision") or []:
        inner = _decide(nested, action, actor, category, label, now_us)
        if inner is not None:
            decided = (inner[0], True)
    return decided


def counts(consent: dict[str, Any]) -> bool:
    """Whether a Consent is in force at all (active, of a scope we honour)."""
    return consent.get("status") == "active" and bool(_codes([consent.get("scope")]) & SCOPES)


def decision(consents: list[dict[str, Any]], action: str, actor: str, category: int, label: int, now_us: int) -> bool:
    """Whether the consents permit ``action`` by ``actor`` ("Organization/<id>") on data of one
    category bit carrying one label bit (0: unlabelled).

    Across a patient's Consents the most specific answer counts, a deny over a permit at the same
    level: an explicit deny anywhere refuses; else an explicit permit permits; else a default
    permit (a Consent that permits everything) permits. So several opt-in Consents ("deny,
    except collection"; "deny, except disclosure to B") add up, as the patient meant them to."""
    found = set()
    for consent in consents:
        if not counts(consent):
            continue
        provision = consent.get("provision")
        verdict = _decide(provision if isinstance(provision, dict) else {}, action, actor, category, label, now_us)
        if verdict is not None:
            found.add(verdict)
    if ("deny", True) in found:
        return False
    return ("permit", True) in found or ("permit", False) in found


def permitted_categories(consents: list[dict[str, Any]], action: str, actor: str, now_us: int) -> int:
    """The data categories (unlabelled data) the consents permit ``action`` on for ``actor``."""
    mask = 0
    for bit in cat.NAMES:
        if decision(consents, action, actor, bit, 0, now_us):
            mask |= bit
    return mask


def permitted_labels(consents: list[dict[str, Any]], action: str, actor: str, categories: int, now_us: int) -> int:
    """The labels whose data the consents permit ``action`` on, in every one of ``categories``."""
    mask = 0
    for label in lab.NAMES:
        bits = [bit for bit in cat.NAMES if bit & categories]
        if bits and all(decision(consents, action, actor, bit, label, now_us) for bit in bits):
            mask |= label
    return mask


def shares(consent: dict[str, Any]) -> list[tuple[str, dict[str, Any] | None]]:
    """The institutions a Consent names as actors of a permit provision, with the period of that
    provision: who it shares the patient's data with (a share grant, security/grants.py)."""
    if not counts(consent):
        return []
    found: list[tuple[str, dict[str, Any] | None]] = []

    def walk(provision: Any) -> None:
        if not isinstance(provision, dict):
            return
        if provision.get("type", "permit") == "permit":
            for actor in sorted(_actors(provision) or ()):
                if actor.startswith("Organization/"):
                    period = provision.get("period")
                    found.append((actor, period if isinstance(period, dict) else None))
        for nested in provision.get("provision") or []:
            walk(nested)

    walk(consent.get("provision"))
    return found
