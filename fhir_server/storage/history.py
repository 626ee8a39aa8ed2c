"""SQL for the history interactions (instance, type, system), newest first, keyset-paged.

Why keyset paging: a history page is addressed by the (time, rid, version) of the last entry
shown, so deep pages cost the same as the first and stay correct while new versions arrive
(http://hl7.org/fhir/R4/http.html#history).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Select, func, literal_column, or_, select, tuple_, union_all

from fhir_server.storage.schema import resource_history, resources

_FAR_FUTURE = 2**62


def _versions(res_type: str | None, res_id: str | None, since_us: int | None):  # type: ignore[no-untyped-def]
    parts = []
    for t in (resources, resource_history):
        q = select(t.c.rid, t.c.res_type, t.c.res_id, t.c.version, t.c.updated_us, t.c.deleted, t.c.method, t.c.content)
        if res_type is not None:
            q = q.where(t.c.res_type == res_type)
        if res_id is not None:
            q = q.where(t.c.res_id == res_id)
        if since_us is not None:
            q = q.where(t.c.updated_us >= since_us)
        parts.append(q)
    return union_all(*parts).subquery("v")


def history_query(
    res_type: str | None,
    res_id: str | None,
    since_us: int | None,
    at_range: tuple[int, int] | None,
    before: tuple[int, int, int] | None,
    count: int,
    visible: Any = None,
) -> Select:  # type: ignore[type-arg]
    """``visible``: the access predicate on ``resources`` (security/tenancy.py); a version is
    shown when the resource's current row passes it, so a deleted resource's history stays
    guarded by the columns its deletion marker kept."""
    if at_range is None:
        v = _versions(res_type, res_id, since_us)
    else:
        # A version was current from its own time until the next version's time.
        allv = _versions(res_type, res_id, None)
        ends = select(
            *allv.c,
            func.coalesce(
                func.lead(allv.c.updated_us).over(partition_by=allv.c.rid, order_by=allv.c.version),
                literal_column(str(_FAR_FUTURE)),
            ).label("valid_to"),
        ).subquery("w")
        lo, hi = at_range
        v = (
            select(
                *[
                    ends.c[c]
                    for c in ("rid", "res_type", "res_id", "version", "updated_us", "deleted", "method", "content")
                ]
            )
            .where(ends.c.updated_us <= hi, ends.c.valid_to > lo)
            .subquery("v")
        )
        if since_us is not None:
            v = select(*v.c).where(v.c.updated_us >= since_us).subquery("vs")
    q = select(v.c.rid, v.c.res_type, v.c.res_id, v.c.version, v.c.updated_us, v.c.deleted, v.c.method, v.c.content)
    if visible is not None:
        q = q.where(v.c.rid.in_(select(resources.c.rid).where(visible)))
    if before is not None:
        b_upd, b_rid, b_ver = before
        q = q.where(
            or_(
                v.c.updated_us < b_upd,
                (v.c.updated_us == b_upd) & (tuple_(v.c.rid, v.c.version) < tuple_(b_rid, b_ver)),
            )
        )
    return q.order_by(v.c.updated_us.desc(), v.c.rid.desc(), v.c.version.desc()).limit(count)
