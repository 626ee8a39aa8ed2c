"""Roles (R23) and what each may do, per data category and interaction.

Why a table of data categories rather than of resource types: the standard sets permissions "按数据
类别、患者范围" (001 §8.1.2), and a category is also what the SQL filter can test on every row
(security/tenancy.py). The codes are those of http://fhir.telefhir.cn/CodeSystem/telemedicine-role
(terminology/), so a PractitionerRole and a user account speak of roles the same way.

Letters are SMART v2's ``cruds``. A user's token is limited twice: by its scopes
(security/scopes.py) and by the union of its account's roles (this table); the SQL filter then
limits reads to the categories the roles read, and the write check (security/tenancy.py) the
category of each row written. ``clearance`` is the security labels (security/labels.py) the role
may see in its own institution; ``cross_tenant`` the categories it reads in every institution
(the supervisor's oversight of consultations, and nothing clinical).

Least privilege, as R23 asks: administrators run their institution (directory, consultations,
consents) without clinical data; operations staff keep the platform (catalogue, ``$reindex``)
without any patient data; supervisors and auditors read oversight data only.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass, field

from fhir_server.security import categories as cat
from fhir_server.security import labels as lab

SYSTEM = "http://fhir.telefhir.cn/CodeSystem/telemedicine-role"
_CARE = cat.CLINICAL | cat.EXAMINATION | cat.IMAGING | cat.TREATMENT


@dataclass(frozen=True)
class Role:
    code: str
    display: str
    #: category bit (several bits: each of them) -> letters of "cruds"
    letters: dict[int, str]
    #: resource type -> letters, replacing the category's for that type
    types: dict[str, str] = field(default_factory=dict)
    clearance: int = 0
    minors: bool = False
    cross_tenant: int = 0
    #: operations beyond the category letters ("$reindex")
    operations: frozenset[str] = frozenset()
    #: may read the audit trail (AuditEvent)
    audit: bool = False


def _role(code: str, display: str, letters: dict[int, str], **kwargs: object) -> Role:
    expanded: dict[int, str] = {}
    for mask, granted in letters.items():
        for bit in cat.NAMES:
            if mask & bit:
                expanded[bit] = granted
    return Role(code, display, expanded, **kwargs)  # type: ignore[arg-type]


ROLES: dict[str, Role] = {
    r.code: r
    for r in (
        _role(
            "leading-institution-admin",
            "牵头机构管理员",
            {cat.PATIENT: "rs", cat.CONSULTATION: "cruds", cat.ADMINISTRATIVE: "cruds", cat.CATALOGUE: "cruds"},
        ),
        _role(
            "participating-institution-admin",
            "参与机构管理员",
            {cat.PATIENT: "rs", cat.CONSULTATION: "rus", cat.ADMINISTRATIVE: "cruds", cat.CATALOGUE: "cruds"},
        ),
        _role(
            "expert",
            "会诊专家",
            {cat.PATIENT: "rs", _CARE | cat.CONSULTATION: "crus", cat.ADMINISTRATIVE | cat.CATALOGUE: "rs"},
            clearance=lab.ALL,
            minors=True,
        ),
        _role(
            "requesting-doctor",
            "申请医生",
            {cat.PATIENT_DATA | cat.ADMINISTRATIVE: "cruds", cat.CATALOGUE: "rs"},
            clearance=lab.ALL,
            minors=True,
        ),
        _role(
            "scheduler",
            "调度员",
            {cat.PATIENT: "rs", cat.CONSULTATION: "crus", cat.CATALOGUE: "rs"},
            types={"Schedule": "cruds", "Slot": "cruds"},
        ),
        _role(
            "operator",
            "操作员",
            {cat.PATIENT_DATA | cat.ADMINISTRATIVE: "crus", cat.CATALOGUE: "rs"},
            minors=True,
        ),
        _role(
            "supervisor",
            "监管人员",
            {cat.CONSULTATION | cat.CATALOGUE: "rs"},
            cross_tenant=cat.CONSULTATION,
            audit=True,
        ),
        _role("operations", "运维人员", {cat.CATALOGUE: "cruds"}, operations=frozenset({"$reindex"})),
        _role(
            "resident",
            "居民",
            {cat.PATIENT: "rus", _CARE: "rs", cat.CONSULTATION | cat.ADMINISTRATIVE: "crus", cat.CATALOGUE: "rs"},
            types={"QuestionnaireResponse": "crus"},
            clearance=lab.ALL,
            minors=True,
        ),
        _role("auditor", "审计员", {cat.CATALOGUE: "rs"}, audit=True),
    )
}
#: R23 says "patient"; the CodeSystem's code for a person acting for themself is "resident"
ALIASES = {"patient": "resident"}


def known(code: str) -> bool:
    return ALIASES.get(code, code) in ROLES


@dataclass(frozen=True)
class Permissions:
    """The union of some roles' permissions."""

    roles: tuple[str, ...]
    letters: dict[int, str]
    types: dict[str, str]
    clearance: int
    minors: bool
    cross_tenant: int
    operations: frozenset[str]
    audit: bool

    def allows(self, res_type: str, category_mask: int, letter: str) -> bool:
        """Whether ``letter`` is allowed on some category of ``category_mask`` (or on the type)."""
        if res_type in self.types:
            return letter in self.types[res_type]
        return any(letter in granted for bit, granted in self.letters.items() if bit & category_mask)

    def categories(self, letter: str) -> int:
        """The categories on which ``letter`` is allowed."""
        mask = 0
        for bit, granted in self.letters.items():
            if letter in granted:
                mask |= bit
        return mask


def permissions(codes: Iterable[str]) -> Permissions:
    """The union of the roles named (unknown codes grant nothing)."""
    return _permissions(tuple(codes))


@functools.lru_cache(maxsize=256)
def _permissions(codes: tuple[str, ...]) -> Permissions:
    found = [ROLES[ALIASES.get(c, c)] for c in codes if ALIASES.get(c, c) in ROLES]
    letters: dict[int, str] = {}
    types: dict[str, str] = {}
    for role in found:
        for bit, granted in role.letters.items():
            letters[bit] = _union(letters.get(bit, ""), granted)
        for res_type, granted in role.types.items():
            types[res_type] = _union(types.get(res_type, ""), granted)
    return Permissions(
        roles=tuple(r.code for r in found),
        letters=letters,
        types=types,
        clearance=_or(r.clearance for r in found),
        minors=any(r.minors for r in found),
        cross_tenant=_or(r.cross_tenant for r in found),
        operations=frozenset().union(*(r.operations for r in found)),
        audit=any(r.audit for r in found),
    )


def _union(a: str, b: str) -> str:
    return "".join(c for c in "cruds" if c in a or c in b)


def _or(values: Iterable[int]) -> int:
    out = 0
    for v in values:
        out |= v
    return out
