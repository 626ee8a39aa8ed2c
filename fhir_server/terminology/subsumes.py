"""``CodeSystem/$subsumes``: how code A and code B relate in a CodeSystem's hierarchy.

See http://hl7.org/fhir/R4/codesystem-operation-subsumes.html. The hierarchy is the union of
nested concepts and parent/child properties (``concepts.edges_of``), read transitively, and
only where ``hierarchyMeaning`` allows a subsumption reading (absent, is-a, classified-with).
"If the server is unable to determine the relationship between the codes", which includes a
code the CodeSystem does not define or a Coding from another system, the answer is an error
(422), never a guessed ``not-subsumed``.
"""

from __future__ import annotations

from typing import Any

from fhir_server.errors import FhirError
from fhir_server.terminology.concepts import Content
from fhir_server.terminology.parameters import param, parameters


def relation(content: Content, code_a: str, code_b: str) -> str:
    """``equivalent``, ``subsumes`` (A is above B), ``subsumed-by`` or ``not-subsumed``."""
    info = content.info
    info.require_codes()
    info.require_subsumption()
    for name, code in (("codeA", code_a), ("codeB", code_b)):
        if content.get(code) is None:
            raise FhirError(
                "processing", f"{name}: {info.label} has no code {code!r}, so no relationship can be determined"
            )
    if code_a == code_b:
        return "equivalent"
    if content.is_ancestor(code_a, code_b):
        return "subsumes"
    if content.is_ancestor(code_b, code_a):
        return "subsumed-by"
    return "not-subsumed"


def subsumes(content: Content, code_a: str, code_b: str) -> dict[str, Any]:
    return parameters([param("outcome", valueCode=relation(content, code_a, code_b))])
