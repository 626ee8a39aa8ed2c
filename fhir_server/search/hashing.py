"""64-bit hashes shared by the indexer (storage side) and the query builder (search side).

Why: index tables are keyed by ``sp``, a hash of ``"<ResourceType>.<code>"``, and token rows carry
hashes of (sp, code), (sp, system, code) and (sp, system), so that a token predicate such as
``code=http://loinc.org|1234-5`` becomes a single indexed integer comparison (the approach HAPI
FHIR uses for ``HFJ_SPIDX_TOKEN``). Both sides must compute *exactly* the same numbers, so the
functions live here and nowhere else.

Hashes are the first 8 bytes of BLAKE2b (``digest_size=8``), read big-endian as a *signed* 64-bit
integer so they fit a SQL ``BIGINT`` on PostgreSQL and SQLite alike.

Token hashing rules (http://hl7.org/fhir/R4/search.html#token):

- ``system=None`` means "the value has no system" (e.g. a Coding without ``system``, a boolean, a
  ContactPoint value). It is what ``[param]=|[code]`` searches for. It hashes *differently* from
  the empty string ``""`` (which is never a valid FHIR system, so ``""`` would only appear through a
  bug; keeping the two distinct means such a bug cannot silently match "no system").
- ``code=None`` means "the value has no code" (e.g. an Identifier with a system and no value, or a
  CodeableConcept that only has ``text``). Such rows can match ``[system]|`` and ``:text`` /
  ``:missing`` searches but never a code.
- ``None`` is encoded as ``"\\x00"``, a character FHIR strings cannot contain
  (http://hl7.org/fhir/R4/datatypes.html#string forbids control characters), so no real value can
  collide with it.
"""

from __future__ import annotations

from hashlib import blake2b

_NONE = "\x00"


def hash64(text: str) -> int:
    """Signed 64-bit integer from the BLAKE2b-64 digest of ``text`` (UTF-8)."""
    return int.from_bytes(blake2b(text.encode("utf-8"), digest_size=8).digest(), "big", signed=True)


def sp_hash(resource_type: str, code: str) -> int:
    """``sp`` column value for search parameter ``code`` on ``resource_type``.

    Parameters inherited from ``Resource``/``DomainResource`` (``_tag``, ``_profile``, ...) are
    hashed with the concrete type, e.g. ``sp_hash("Patient", "_tag")``.
    """
    return hash64(f"{resource_type}.{code}")


def modifier_sp(resource_type: str, code: str, modifier: str) -> int:
    """``sp`` of the extra token rows that serve a modifier: ``sp_hash(type, f"{code}:{modifier}")``.

    Used for ``identifier:of-type`` (rows with no system and code ``"<type system>|<type code>|
    <value>"``) and for reference ``:identifier`` (rows with the (system, value) of
    ``Reference.identifier``); see :mod:`fhir_server.search.index`.
    """
    return hash64(f"{resource_type}.{code}:{modifier}")


def _enc(value: str | None) -> str:
    return _NONE if value is None else value


def h_code(sp: int, code: str | None) -> int:
    """``hash64(f"{sp}|{code}")`` — matches ``[param]=[code]`` whatever the system."""
    return hash64(f"{sp}|{_enc(code)}")


def h_sys_code(sp: int, system: str | None, code: str | None) -> int:
    """``hash64(f"{sp}|{system}|{code}")`` — matches ``[system]|[code]`` and, with
    ``system=None``, ``|[code]`` (value without a system)."""
    return hash64(f"{sp}|{_enc(system)}|{_enc(code)}")


def h_sys(sp: int, system: str | None) -> int:
    """``hash64(f"{sp}|{system}|")`` — matches ``[system]|`` (any code in that system)."""
    return hash64(f"{sp}|{_enc(system)}|")


def token_hashes(sp: int, system: str | None, code: str | None) -> tuple[int, int, int]:
    """``(h_code, h_sys_code, h_sys)`` for one token value; see the module docstring for ``None``."""
    c = _enc(code)
    s = _enc(system)
    return hash64(f"{sp}|{c}"), hash64(f"{sp}|{s}|{c}"), hash64(f"{sp}|{s}|")
