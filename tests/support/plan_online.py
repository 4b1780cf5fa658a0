"""Online views of any compiled plan written to Redis as the layers write them (tests of the serving layer).

Tiles come from the reference tiler (:class:`fstore.core.view_tiles.ViewTiler`): those before the cutover
in the batch view's packed form with the variance state and distinct-member fields (as the batch job
publishes them), those from the cutover on in the speed view's per-statistic form (``c s n x v`` and
member fields, as the stream worker's script writes them), and chosen events as future-event fields (JSON
of their measured values) instead of tiles.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import redis

from fstore.core.expr_eval import measure_fn
from fstore.core.plan import Plan
from fstore.core.tile_state import Acc
from fstore.core.view_tiles import ViewTiler
from fstore.core.view_tiles_frame import member
from fstore.redis.layout import (
    POINTER_KEY,
    BatchPointer,
    acc_fields,
    batch_key,
    distinct_field,
    field,
    future_field,
    future_value,
    speed_key,
)

Row = Mapping[str, Any]


def speed_fields(size: int, start: int, measure: str, acc: Acc) -> dict[str, str]:
    """The per-statistic fields of one tile measure, with its members (the stream worker's form)."""
    out = {
        field(size, start, measure, "c"): str(acc.count),
        field(size, start, measure, "s"): repr(acc.total),
        field(size, start, measure, "n"): repr(acc.minimum),
        field(size, start, measure, "x"): repr(acc.maximum),
        field(size, start, measure, "v"): repr(acc.m2),
    }
    for x in acc.distinct or ():
        out[distinct_field(size, start, measure, member(x))] = "1"
    return out


def load_plan(
    client: redis.Redis,
    plan: Plan,
    rows: Sequence[Row],
    version: str | None,
    cutover: int,
    future_ids: Collection[str] = (),
) -> int:
    """Write every view of ``plan`` for ``rows`` (valid, de-duplicated); events whose id is in ``future_ids``
    (and at or after ``cutover``) become future-event fields. Returns the number of such fields."""
    ts, idf = plan.schema.timestamp_field, plan.schema.id_field
    pipe = client.pipeline(transaction=False)
    held = 0
    for view in plan.views:
        key = view.entity.join_key
        future = [r for r in rows if r[idf] in future_ids and r[ts] >= cutover and r.get(key) is not None]
        tiled = [r for r in rows if not (r[idf] in future_ids and r[ts] >= cutover)]
        measures = [(m.name, measure_fn(m.value, m.where)) for m in view.measures]
        for (entity, size, start), tile in ViewTiler(view, ts).build(tiled).items():
            for name, acc in tile.items():
                if start < cutover:
                    if version is not None:
                        pipe.hset(batch_key(view.name, entity, version), mapping=acc_fields(size, start, name, acc))  # type: ignore[arg-type]
                    continue
                fields = speed_fields(size, start, name, acc)
                pipe.hset(speed_key(view.name, entity, start), mapping=dict[Any, Any](fields))
        for r in future:
            values = {name: x for name, fn in measures if (x := fn(r)) is not None}
            if values:
                pipe.hset(
                    speed_key(view.name, str(r[key]), r[ts]),
                    future_field(r[ts], str(r[idf])),
                    future_value({m: x if isinstance(x, str) else float(x) for m, x in values.items()}),
                )
                held += 1
    pipe.execute()
    if version is not None:
        client.set(POINTER_KEY, BatchPointer(version, cutover).dumps())
    return held
