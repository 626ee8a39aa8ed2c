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

The terminology operations (IHE SVCM ITI-97..101; REST handlers in rest/operations/) ask more
of a CodeSystem, and must stay cheap on LOINC-sized ones:

- ``concepts``: what a concept is (inactive, abstract, searchable text) and the ``Content``
  questions the operations ask; ``table`` answers them from concept rows written with every
  CodeSystem (migration 0006), ``memory`` from parsed content (CodeSystems without rows);
- ``locate``: finding the CodeSystem, ValueSet or ConceptMap an operation names;
- ``lookup``, ``expand``, ``validate``, ``subsumes``, ``translate``: one module per operation,
  each returning the ``Parameters`` or ``ValueSet`` answer; ``parameters``: shared answer
  pieces and the status codes chosen for errors;
- ``importers``: LOINC, ICD-10 ClaML and CSV files stored as CodeSystems
  (``fhir-server terminology import``).
"""

from fhir_server.terminology.service import MAX_CODES, code_closure, codes_in_valueset

__all__ = ["MAX_CODES", "code_closure", "codes_in_valueset"]
