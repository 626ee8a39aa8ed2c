"""Terminology over stored resources, for the token modifiers ``:in``, ``:not-in``, ``:above``, ``:below``.

Why a package of its own: search needs only two answers (the codes of a value set, the codes
under or over a code), but getting them right means reading ValueSets and CodeSystems the way
http://hl7.org/fhir/R4/valueset.html and http://hl7.org/fhir/R4/codesystem.html define them,
and caching the result without ever serving a stale one. One module per job:

- ``canonical``: ``url|version`` and ``ValueSet/id`` references;
- ``store``: finding the stored resource (``SearchEngine.match``) and a cheap fingerprint probe;
- ``codesystem``: a CodeSystem's codes, hierarchy (nested and parent/child) and properties;
- ``filters``: ``compose.include.filter`` operators;
- ``expansion``: codes of a stored ``expansion``;
- ``compose``: include/exclude/import set algebra;
- ``cache``: bounded LRUs, one set per repository;
- ``service``: the two public functions below.
"""

from fhir_server.terminology.service import MAX_CODES, code_closure, codes_in_valueset

__all__ = ["MAX_CODES", "code_closure", "codes_in_valueset"]
