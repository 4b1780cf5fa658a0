"""Vectorised tiles and feature snapshots over Arrow/pandas frames (docs/design.md §3, §4).

The same arithmetic as :mod:`tests.support.legacy.tiles` (``add_event`` / ``evaluate``), for whole partitions of
events at once: the batch job calls these functions on its executors and the point-in-time engine may
call them on one machine. Pure: pandas and pyarrow only, no engine, no clock.

Frames:

* events — one row per valid, de-duplicated event: ``<join key>`` (string), ``event_type`` (string),
  ``event_time`` (int64 UTC epoch µs), ``price`` (float64, null allowed), ``quantity`` (int).
* tiles — one row per (entity, tile size, tile start, measure): ``<join key>``, ``size`` (int64 µs),
  ``tile_start`` (int64 µs), ``measure``, ``count`` (int64), ``sum``, ``min``, ``max`` (float64).

Determinism: every sum is taken over rows sorted by value within their group, so the same events give
bit-identical tiles whatever order or partitioning they arrive in (re-running a night is reproducible).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import pandas as pd
import pyarrow as pa

from fstore.core.aggregates import Agg
from fstore.core.windows import tile_bounds, tile_start
from tests.support.legacy.features import FeatureView, RatioFeature, ValueKind
from tests.support.legacy.tiles import tile_plan

TILE_KEYS = ("size", "tile_start", "measure")
STAT_COLUMNS = ("count", "sum", "min", "max")


def tile_schema(view: FeatureView) -> pa.Schema:
    """Arrow schema of the tiles of ``view`` (times as int64 epoch µs)."""
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
        ]
    )


def snapshot_schema(view: FeatureView) -> pa.Schema:
    """Arrow schema of a feature snapshot: ``event_timestamp`` (int64 µs), the join key, every feature."""
    fields = [
        pa.field("event_timestamp", pa.int64(), nullable=False),
        pa.field(view.entity.join_key, pa.string(), nullable=False),
    ]
    for f in view.features:
        counted = not isinstance(f, RatioFeature) and f.agg is Agg.COUNT
        fields.append(pa.field(f.name, pa.int64() if counted else pa.float64(), nullable=not counted))
    return pa.schema(fields)


def _frame(data: pa.Table | pd.DataFrame) -> pd.DataFrame:
    return data.to_pandas() if isinstance(data, pa.Table) else data


def measured_values(
    view: FeatureView, events: pa.Table | pd.DataFrame, horizons: Mapping[int, int], end: int
) -> pd.DataFrame:
    """One row per (event, tile size, measure) the event feeds: the measured value of the event.

    Args:
        view: the feature view (its tile plan says which event types feed which measures per size).
        events: events frame (see module docstring); events without the view's entity key are ignored.
        horizons: tile size → first tile start to keep (tiles starting earlier are not produced).
        end: events at or after ``end`` are ignored (the cutover).

    Returns:
        Columns ``<join key>``, ``size``, ``tile_start``, ``measure``, ``value``.
    """
    ev = _frame(events)
    key = view.entity.join_key
    parts: list[pd.DataFrame] = []
    times = ev["event_time"].to_numpy(dtype=np.int64)
    has_key = ev[key].notna().to_numpy()
    for size, by_type in tile_plan(view):
        lo = horizons[size]
        in_range = has_key & (times >= lo) & (times < end)
        starts = tile_start(times, size)
        for event_type, measures in by_type.items():
            mask = in_range & (ev["event_type"] == event_type).to_numpy()
            if not mask.any():
                continue
            sub = ev.loc[mask]
            for m in measures:
                if m.value is ValueKind.REVENUE:
                    value = sub["price"].fillna(0.0).to_numpy(dtype=np.float64) * sub["quantity"].to_numpy(
                        dtype=np.float64
                    )
                else:
                    value = np.ones(len(sub), dtype=np.float64)
                parts.append(
                    pd.DataFrame(
                        {
                            key: sub[key].to_numpy(dtype=object),
                            "size": np.int64(size),
                            "tile_start": starts[mask],
                            "measure": m.name,
                            "value": value,
                        }
                    )
                )
    if not parts:
        return pd.DataFrame(
            {
                key: pd.Series(dtype=object),
                "size": pd.Series(dtype=np.int64),
                "tile_start": pd.Series(dtype=np.int64),
                "measure": pd.Series(dtype=object),
                "value": pd.Series(dtype=np.float64),
            }
        )
    return pd.concat(parts, ignore_index=True)


def build_tiles(view: FeatureView, events: pa.Table | pd.DataFrame, horizons: Mapping[int, int], end: int) -> pa.Table:
    """Tiles of ``view`` from a frame of events: the vectorised :func:`tests.support.legacy.tiles.build_tiles`.

    Every entity's events must be in ``events`` (a partition holding all events of its entities), else
    the tiles are partial. Arguments as for :func:`measured_values`.

    Returns:
        A table in :func:`tile_schema`, sorted by entity, size, tile_start, measure.
    """
    key = view.entity.join_key
    rows = measured_values(view, events, horizons, end)
    group = [key, *TILE_KEYS]
    rows = rows.sort_values([*group, "value"], kind="mergesort", ignore_index=True)
    grouped = rows.groupby(group, sort=True)["value"]
    out = grouped.agg(["count", "sum", "min", "max"]).reset_index()
    out["count"] = out["count"].astype(np.int64)
    return pa.Table.from_pandas(out[[*group, *STAT_COLUMNS]], schema=tile_schema(view), preserve_index=False)


def snapshot(view: FeatureView, tiles: pa.Table | pd.DataFrame, t: int) -> pa.Table:
    """Every feature of ``view`` at ``t`` for every entity with an event counted by any feature.

    ``t`` must be a tile boundary of every size of the view (a cutover at 00:00 UTC is): then each
    window is a whole number of tiles ``[tail(t, W), t)`` and no head tile is cut. Values follow §3:
    empty count/sum → 0, empty avg/min/max → null, ratios null when the denominator is 0.

    Args:
        view: the feature view.
        tiles: tiles frame of the view (all tiles of each entity present).
        t: evaluation time, UTC epoch µs (exclusive).

    Returns:
        A table in :func:`snapshot_schema`, one row per entity, sorted by entity.

    Raises:
        ValueError: if ``t`` is not on the tile grid of the view.
    """
    if any(t % size for size in view.hops):
        raise ValueError(f"snapshot time {t} is not a tile boundary of view {view.name}")
    tl = _frame(tiles)
    key = view.entity.join_key
    partials: dict[str, pd.DataFrame] = {}
    for f in view.windowed:
        lo, hi = tile_bounds(t, f.window, f.hop)  # hi == t: t is on the grid
        sel = tl[
            (tl["size"] == f.hop)
            & (tl["measure"] == f.measure.name)
            & (tl["tile_start"] >= lo)
            & (tl["tile_start"] < hi)
        ]
        sel = sel.sort_values([key, "tile_start"], kind="mergesort")
        agg = sel.groupby(key, sort=True).agg(
            count=("count", "sum"), total=("sum", "sum"), minimum=("min", "min"), maximum=("max", "max")
        )
        partials[f.name] = agg[agg["count"] > 0]
    entities = sorted(set().union(*(p.index for p in partials.values()))) if partials else []
    index = pd.Index(entities, dtype=object, name=key)
    cols: dict[str, pd.Series] = {}
    for f in view.windowed:
        p = partials[f.name].reindex(index)
        count = p["count"].fillna(0).astype(np.int64)
        if f.agg is Agg.COUNT:
            cols[f.name] = count
        elif f.agg is Agg.SUM:
            cols[f.name] = p["total"].fillna(0.0).astype(np.float64)
        elif f.agg is Agg.AVG:
            cols[f.name] = (p["total"] / count.where(count > 0)).astype(np.float64)
        elif f.agg is Agg.MIN:
            cols[f.name] = p["minimum"].astype(np.float64)
        else:
            cols[f.name] = p["maximum"].astype(np.float64)
    arrays: list[pa.Array] = [pa.array(np.full(len(entities), t, dtype=np.int64)), pa.array(entities, pa.string())]
    for feat in view.features:
        if isinstance(feat, RatioFeature):
            num, den = cols[feat.numerator].astype(np.float64), cols[feat.denominator].astype(np.float64)
            arrays.append(pa.array((num / den.where(den != 0)).to_numpy(), pa.float64(), from_pandas=True))
        elif feat.agg is Agg.COUNT:
            arrays.append(pa.array(cols[feat.name].to_numpy(), pa.int64()))
        else:
            arrays.append(pa.array(cols[feat.name].to_numpy(), pa.float64(), from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=snapshot_schema(view))
