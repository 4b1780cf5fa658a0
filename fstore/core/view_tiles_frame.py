"""Vectorised tiles of a compiled plan's feature view over an Arrow table of events (docs/design.md §3, §4).

The same tiles as :class:`fstore.core.view_tiles.ViewTiler`, for whole partitions of events at once —
what the batch job's executors and the point-in-time engine call. Pure: numpy, pandas and pyarrow only.

Input: one row per valid, de-duplicated event, columns named as the plan's event fields, the timestamp
field as int64 UTC epoch µs (fields the table lacks — optional fields added after it was written — are
null). Output, one row per (entity, tile size, tile start, measure): ``<join key>``, ``size``,
``tile_start``, ``measure``, ``count``, ``sum``, ``min``, ``max``, ``m2`` (the variance state:
squared deviations from the tile's mean) and ``distinct`` (the sorted distinct members as text, only
for measures a count_distinct reads; else null). A string measure fills only ``count`` and ``distinct``.

Determinism: each tile's sum and ``m2`` are taken over its values sorted ascending, so the same events
give bit-identical tiles whatever their order or partitioning (re-running a night is reproducible).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.event_schema import EventSchema
from fstore.core.expr import Kind
from fstore.core.expr_eval import measure_arrow
from fstore.core.functions import State
from fstore.core.plan import View
from fstore.core.windows import tile_start

TILE_KEYS = ("size", "tile_start", "measure")


def tile_schema(view: View) -> pa.Schema:
    """Arrow schema of the tiles of ``view``."""
    return pa.schema(
        [
            pa.field(view.entity.join_key, pa.string(), nullable=False),
            pa.field("size", pa.int64(), nullable=False),
            pa.field("tile_start", pa.int64(), nullable=False),
            pa.field("measure", pa.string(), nullable=False),
            pa.field("count", pa.int64(), nullable=False),
            pa.field("sum", pa.float64(), nullable=False),
            pa.field("min", pa.float64()),
            pa.field("max", pa.float64()),
            pa.field("m2", pa.float64(), nullable=False),
            pa.field("distinct", pa.list_(pa.string())),
        ]
    )


def member(value: object) -> str:
    """A distinct member as text: strings as they are, numbers by their double's repr (-0.0 as 0.0: one
    number, as the point-in-time engine counts it)."""
    return value if isinstance(value, str) else repr(float(value) + 0.0)  # type: ignore[arg-type]


def build_tiles(
    view: View, schema: EventSchema, events: pa.Table, horizons: Mapping[int, int] | None = None, end: int | None = None
) -> pa.Table:
    """Tiles of ``view`` from ``events`` (every event of an entity must be in the table).

    Args:
        view: the feature view.
        schema: the plan's event schema (names the timestamp field, types missing columns).
        events: the events (see the module docstring).
        horizons: tile size → first tile start to keep (default: all).
        end: events at or after ``end`` are left out (the cutover; default: none).

    Returns:
        A table in :func:`tile_schema`, sorted by entity, size, tile start, measure.
    """
    key = view.entity.join_key
    times = events.column(schema.timestamp_field).to_numpy().astype(np.int64)
    keys = events.column(key) if key in events.column_names else pa.nulls(events.num_rows, pa.string())
    has_key = pc.is_valid(keys).to_numpy(zero_copy_only=False)
    key_values = keys.to_numpy(zero_copy_only=False)
    columns = schema.columns()
    parts: list[pd.DataFrame] = []
    for group in view.tiles:
        size = group.hop
        keep = has_key.copy()
        if horizons is not None:
            keep &= times >= horizons[size]
        if end is not None:
            keep &= times < end
        starts = tile_start(times, size)
        for tm in group.measures:
            m = view.measure(tm.measure)
            mask, values = measure_arrow(m.value, m.where, events, columns)
            rows = keep & mask.to_numpy(zero_copy_only=False)
            if not rows.any():
                continue
            vals = values.to_numpy(zero_copy_only=False)[rows]
            frame = pd.DataFrame({key: key_values[rows], "tile_start": starts[rows], "value": vals})
            parts.append(_tiles(frame, key, size, tm.measure, m.kind, State.DISTINCT in tm.states))
    if not parts:
        return tile_schema(view).empty_table()
    out = pd.concat(parts, ignore_index=True).sort_values([key, *TILE_KEYS], kind="mergesort", ignore_index=True)
    return pa.Table.from_pandas(out, schema=tile_schema(view), preserve_index=False)


def _tiles(frame: pd.DataFrame, key: str, size: int, measure: str, kind: Kind, distinct: bool) -> pd.DataFrame:
    group = [key, "tile_start"]
    numeric = kind is Kind.NUMBER
    if numeric:
        frame["value"] = frame["value"].astype(np.float64)
    frame = frame.sort_values([*group, "value"], kind="mergesort", ignore_index=True)
    by = frame.groupby(group, sort=True)["value"]
    if numeric:
        out = by.agg(["count", "sum", "min", "max"]).reset_index()
        mean = by.transform("sum") / by.transform("count")
        dev = (frame["value"] - mean) ** 2
        out["m2"] = dev.groupby([frame[key], frame["tile_start"]], sort=True).sum().to_numpy()
    else:
        out = by.agg(["count"]).reset_index()
        out["sum"], out["min"], out["max"], out["m2"] = 0.0, np.nan, np.nan, 0.0
    members = by.agg(lambda s: sorted({member(v) for v in s})).to_numpy() if distinct else None
    out["distinct"] = pd.Series(members if distinct else [None] * len(out), dtype=object)
    out["size"] = np.int64(size)
    out["measure"] = measure
    return out[[key, "size", "tile_start", "measure", "count", "sum", "min", "max", "m2", "distinct"]]
