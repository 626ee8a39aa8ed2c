"""The spool lines of an interaction's audit events, filled into a template of their shape.

Why templates: every request writes at least one AuditEvent, and building its dict
(:func:`balp.build_events`), serialising it and walking it again for its search columns cost a
worker ~45 µs a read, a third of what auth and audit added to a read (docs/performance.md). Yet
the events of one client's reads differ only in a few values: when, which resource, which
patient, which request. So the first event of a *shape* (kind, requester, server, outcome and
which optional parts are present) is built by :mod:`balp` itself with a marker in place of each
varying value and serialised once; later events of that shape are the template's bytes with the
markers replaced. The stored JSON and the columns are those :mod:`balp` and
:func:`store.columns` give (``tests/unit/test_audit_templates.py`` compares them over every kind).

Markers are random per process (``secrets``), alphanumeric, so that they fit wherever a value
goes (an operation name, a path) and no requester's or server's text can contain one by chance.
A value put in is JSON-escaped unless :func:`balp._check` has already held it to a pattern
without characters JSON escapes (types, ids, versions, operations, patients).
"""

from __future__ import annotations

import base64
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.audit import balp
from fhir_server.audit.store import COLUMNS, LIMITS, columns, serialize

_NONCE = secrets.token_hex(6)


def _marker(name: str) -> str:
    return f"Zq{_NONCE}{name}"


_TYPE, _ID, _VERSION, _OPERATION = _marker("type"), _marker("id"), _marker("version"), _marker("op")
_PATIENT, _REQUEST, _DETAIL = f"Patient/{_marker('patient')}", _marker("request"), _marker("detail")
#: a query whose base64 is a marker too (its length a multiple of 3: no padding, no shared bits)
_QUERY = _marker("query") + "x" * (-len(_marker("query")) % 3)
_WHEN = datetime(2001, 2, 3, 4, 5, 6, 78901, tzinfo=UTC)
_RECORDED = balp._recorded(_WHEN)


def _plain(value: str) -> bytes:
    return value.encode("ascii")


def _escaped(value: str) -> bytes:
    return orjson.dumps(value)[1:-1]


#: marker → (the value it stands for, how it is written into the JSON)
_SLOTS: dict[str, tuple[Callable[[balp.Interaction, str | None], str], Callable[[str], bytes]]] = {
    _RECORDED: (lambda i, p: balp._recorded(i.recorded), _plain),
    _TYPE: (lambda i, p: i.resource_type or "", _plain),
    _ID: (lambda i, p: i.resource_id or "", _plain),
    _VERSION: (lambda i, p: i.version or "", _plain),
    _OPERATION: (lambda i, p: (i.operation or "").lstrip("$"), _plain),
    _PATIENT: (lambda i, p: p or "", _plain),
    _REQUEST: (lambda i, p: i.request_id or "", _escaped),
    _DETAIL: (lambda i, p: i.detail or "", _escaped),
    base64.b64encode(_QUERY.encode()).decode(): (
        lambda i, p: base64.b64encode((i.query or "").encode("utf-8")).decode("ascii"),
        _plain,
    ),
}
_SPLIT = re.compile("(" + "|".join(re.escape(m) for m in _SLOTS) + ")")


@dataclass(frozen=True)
class _Marked:
    """A text with markers, as a %-format (``%b`` or ``%s`` where a value goes) and the slots of
    the values in the order they go in: one C-level formatting puts them all in."""

    format: str | bytes
    order: tuple[int, ...]

    @staticmethod
    def of(text: str, slots: dict[str, int], encode: bool) -> _Marked:
        split = _SPLIT.split(text)
        for marker in split[1::2]:
            slots.setdefault(marker, len(slots))
        literals = [part.replace("%", "%%") for part in split[0::2]]
        if encode:
            return _Marked("%b".join(literals).encode("utf-8"), tuple(slots[m] for m in split[1::2]))
        return _Marked("%s".join(literals), tuple(slots[m] for m in split[1::2]))

    def fill(self, values: list[Any]) -> Any:
        return self.format % tuple([values[i] for i in self.order])


@dataclass(frozen=True)
class _Template:
    #: the markers used, in slot order
    markers: tuple[str, ...]
    #: the stored JSON
    content: _Marked
    #: the columns, ``_Marked`` where a value goes (cut to the store's limits once filled)
    columns: tuple[Any, ...]
    #: (place, limit) of each ``_Marked`` column
    marked_columns: tuple[tuple[int, int | None], ...]


def _shape(interaction: balp.Interaction, patient: str | None) -> tuple[Any, ...]:
    """What decides an event's JSON apart from the marked values."""
    failed = interaction.status >= 400
    return (
        interaction.kind,
        balp.outcome_code(interaction.status),
        interaction.status if failed and not interaction.detail else None,  # its phrase is written
        bool(interaction.detail),
        interaction.resource_type is not None,
        interaction.resource_id is not None,
        interaction.version is not None,
        interaction.operation is not None,
        bool(interaction.query),
        patient is not None,
        bool(interaction.request_id),
        interaction.http_method,
    )


def _template(
    interaction: balp.Interaction, requester: balp.Requester, server: balp.Server, patient: str | None
) -> _Template:
    """The event of this shape built by :mod:`balp` with markers for the values."""
    marked = balp.Interaction(
        kind=interaction.kind,
        status=interaction.status,
        recorded=_WHEN,
        resource_type=_TYPE if interaction.resource_type is not None else None,
        resource_id=_ID if interaction.resource_id is not None else None,
        version=_VERSION if interaction.version is not None else None,
        operation=_OPERATION if interaction.operation is not None else None,
        query=_QUERY if interaction.query else None,
        detail=_DETAIL if interaction.detail else None,
        request_id=_REQUEST if interaction.request_id else None,
        http_method=interaction.http_method,
    )
    event = balp._event(balp._RULES[interaction.kind], marked, requester, server, _PATIENT if patient else None)
    slots: dict[str, int] = {}
    content = _Marked.of(serialize(event).decode("utf-8"), slots, encode=True)
    cols = tuple(
        _Marked.of(c, slots, encode=False) if isinstance(c, str) and _SPLIT.search(c) else c for c in columns(event, 0)
    )
    marked_columns = tuple((i, LIMITS.get(COLUMNS[i])) for i, c in enumerate(cols) if isinstance(c, _Marked))
    return _Template(tuple(slots), content, cols, marked_columns)


class EventTemplates:
    """The templates of one worker, by shape, requester and server (both are in every event);
    bounded, as requesters come and go."""

    def __init__(self, max_templates: int = 4096) -> None:
        self._templates: dict[tuple[Any, ...], _Template] = {}
        self.max_templates = max_templates

    def lines(self, interaction: balp.Interaction, requester: balp.Requester, server: balp.Server) -> bytes:
        """The spool lines (columns as JSON, a tab, the stored JSON, a newline) of the
        interaction's events, one per patient as :func:`balp.build_events` makes them;
        ``ValueError`` for an input it refuses."""
        balp._check(interaction, requester, server)
        recorded_us = (interaction.recorded - balp._EPOCH) // balp._MICROSECOND
        patients = tuple(dict.fromkeys(interaction.patients)) or (None,)
        return b"".join(self._line(interaction, requester, server, p, recorded_us) for p in patients)

    def _line(
        self,
        interaction: balp.Interaction,
        requester: balp.Requester,
        server: balp.Server,
        patient: str | None,
        recorded_us: int,
    ) -> bytes:
        key = (_shape(interaction, patient), requester, server)
        template = self._templates.get(key)
        if template is None:
            if len(self._templates) >= self.max_templates:
                self._templates.clear()
            template = self._templates[key] = _template(interaction, requester, server, patient)
        values = [_SLOTS[m][0](interaction, patient) for m in template.markers]
        content = template.content.fill([_SLOTS[m][1](v) for m, v in zip(template.markers, values, strict=True)])
        cols = [recorded_us, *template.columns[1:]]
        for i, limit in template.marked_columns:
            cols[i] = template.columns[i].fill(values)[:limit]
        return b"%b\t%b\n" % (orjson.dumps(cols), content)
