"""``Content`` over a CodeSystem parsed into memory: for CodeSystems that have no concept rows.

Why it still exists beside the rows (``table.py``): a CodeSystem stored before migration 0006,
or one given in a request body, has no rows; it is read once per stored version and kept in
the bounded parsed-resource cache (``cache.py``), as the search modifiers already do.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhir_server.terminology.concepts import (
    Concept,
    SystemInfo,
    detail_of,
    edges_of,
    header_of,
    is_inactive,
    matches,
    searchable,
    walk,
)


class MemoryContent:
    """Concepts, hierarchy and search text of one CodeSystem held in memory."""

    def __init__(self, resource: dict[str, Any], res_id: str | None = None) -> None:
        header = header_of(resource)
        concepts: dict[str, Concept] = {}
        parents: dict[str, list[str]] = {}
        children: dict[str, list[str]] = {}
        provisional = SystemInfo.from_header(header, res_id, 0)
        links: dict[tuple[str, str], None] = {}
        for concept, nest_parent in walk(resource):
            code = concept["code"]
            if code not in concepts:  # codes are unique (csd-1); a repeated one adds only its links
                concepts[code] = Concept(
                    code,
                    concept.get("display") if isinstance(concept.get("display"), str) else None,
                    is_inactive(concept),
                    len(concepts),
                    detail_of(concept),
                )
            for link in edges_of(concept, nest_parent, provisional.parent_property, provisional.child_property):
                links[link] = None
        for parent, child in links:
            if parent in concepts and child in concepts and parent != child:
                children.setdefault(parent, []).append(child)
                parents.setdefault(child, []).append(parent)
        self.info = SystemInfo.from_header(header, res_id, len(concepts))
        self._concepts = concepts
        self._parents = parents
        self._children = children
        self._texts: dict[str, str] | None = None

    def get(self, code: str) -> Concept | None:
        return self._concepts.get(code)

    def get_many(self, codes: Iterable[str]) -> dict[str, Concept]:
        return {c: self._concepts[c] for c in codes if c in self._concepts}

    def parents(self, code: str) -> list[str]:
        return list(self._parents.get(code, ()))

    def children(self, code: str) -> list[str]:
        return list(self._children.get(code, ()))

    def is_ancestor(self, ancestor: str, code: str) -> bool:
        seen = {code}
        todo = [code]
        while todo:
            for parent in self._parents.get(todo.pop(), ()):
                if parent == ancestor:
                    return True
                if parent not in seen:
                    seen.add(parent)
                    todo.append(parent)
        return False

    def _matching(self, words: list[str], active_only: bool) -> list[Concept]:
        if words and self._texts is None:
            self._texts = {c.code: searchable(c.detail) for c in self._concepts.values()}
        texts = self._texts or {}
        return [
            c
            for c in self._concepts.values()
            if not (active_only and c.inactive) and (not words or matches(texts[c.code], words))
        ]

    def count(self, words: list[str], active_only: bool) -> int:
        if not words and not active_only:
            return len(self._concepts)
        return len(self._matching(words, active_only))

    def page(self, words: list[str], active_only: bool, offset: int, limit: int) -> tuple[int, list[Concept]]:
        found = self._matching(words, active_only)
        return len(found), found[offset : offset + max(limit, 0)]

    def edges(self) -> list[tuple[str, str]]:
        return [(p, c) for c, ps in self._parents.items() for p in ps]
