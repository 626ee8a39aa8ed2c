"""FHIRPath invariants (``ElementDefinition.constraint.expression``) evaluated with fhirpathpy.

Why a wrapper: each expression is parsed once and kept (parsing costs more than evaluating),
the R4 model is passed so choice elements (``value`` for ``valueQuantity``) resolve, the
element's path is given as the evaluation base so typed navigation works below the root, and
``%resource``/``%rootResource`` are set as http://hl7.org/fhir/R4/fhirpath.html defines them.
fhirpathpy annotates what it evaluates in place; invariants are evaluated on the parsed request
body, which is serialised afterwards from the same dicts, so results are read as booleans only
and nothing is returned into the resource.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import fhirpathpy
from antlr4 import CommonTokenStream, InputStream, Token
from antlr4.error.ErrorListener import ErrorListener
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser


class FhirPathError(ValueError):
    """An expression that does not parse or fails while evaluating."""


_MODEL = models["r4"]


def _quiet(*_args: Any) -> None:
    """``trace()`` in an invariant (bdl-7 has one) prints by default."""


class _Strict(ErrorListener):  # type: ignore[misc]
    """fhirpathpy's parser recovers from syntax errors silently; an invariant must not."""

    def syntaxError(self, _recognizer: Any, _symbol: Any, _line: int, column: int, msg: str, _e: Any) -> None:  # noqa: N802
        raise FhirPathError(f"syntax error at character {column + 1}: {msg}")


def check_syntax(expression: str) -> None:
    lexer = FHIRPathLexer(InputStream(expression))
    lexer.removeErrorListeners()
    lexer.addErrorListener(_Strict())
    tokens = CommonTokenStream(lexer)
    parser = FHIRPathParser(tokens)
    parser.removeErrorListeners()
    parser.addErrorListener(_Strict())
    parser.expression()
    if tokens.LA(1) != Token.EOF:
        raise FhirPathError(f"syntax error: unexpected {tokens.LT(1).text!r} after the expression")


@functools.lru_cache(maxsize=4096)
def compiled(expression: str) -> Callable[..., Any]:
    """The parsed expression (kept: parsing costs more than evaluating)."""
    check_syntax(expression)
    try:
        return fhirpathpy.compile(expression, _MODEL, {"traceFn": _quiet})  # type: ignore[no-any-return]
    except Exception as exc:  # noqa: BLE001 - the parser raises several unrelated types
        raise FhirPathError(f"{expression!r} does not parse: {exc}") from None


def evaluate(
    expression: str, focus: Any, base_path: str, resource: dict[str, Any], root: dict[str, Any] | None = None
) -> list[Any]:
    """The collection ``expression`` gives on ``focus`` (an element at ``base_path``) inside
    ``resource`` (``root``: its container, for a contained resource)."""
    fn = compiled(expression)
    node = ResourceNode.create_node(focus, base_path) if isinstance(focus, dict) and "." in base_path else focus
    try:
        result = fn(node, {"resource": resource, "rootResource": root if root is not None else resource})
    except Exception as exc:  # noqa: BLE001 - fhirpathpy raises assorted errors for type mismatches
        raise FhirPathError(f"{expression!r}: {exc}") from None
    return list(result) if isinstance(result, list) else [result]


def holds(
    expression: str, focus: Any, base_path: str, resource: dict[str, Any], root: dict[str, Any] | None = None
) -> bool:
    """Whether an invariant holds: true, or empty (nothing to check); false or a non-boolean fails."""
    result = evaluate(expression, focus, base_path, resource, root)
    if not result:
        return True
    if len(result) == 1 and isinstance(result[0], bool):
        return result[0]
    raise FhirPathError(f"{expression!r} gave {result!r}, not a boolean")
