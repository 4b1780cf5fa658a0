"""Feature values of every entity of a compiled plan's view at one time, vectorised over its tiles
(docs/design.md §3, §4): the batch job's daily feature snapshots.

The input is the tiles frame of :func:`fstore.core.view_tiles_frame.build_tiles` (all tiles of each
entity present); the values are those of :func:`fstore.core.view_tiles.evaluate` for every function:
count, sum, mean, min, max, std and var (the tiles' variance states merged with the parallel formula
``m2 = Σ m2_i + Σ n_i (mean_i - mean)²``, equal to Chan's pairwise merge up to rounding) and exact
count_distinct (the union of the tiles' members). Empty windows follow §3. Pure: numpy, pandas, pyarrow.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa

from fstore.core.functions import Function
from fstore.core.plan import RatioFeature, View, WindowedFeature
from fstore.core.windows import tile_bounds

_COUNTS = (Function.COUNT, Function.COUNT_DISTINCT)

#: The snapshot's time column (no feature may be named like it, nor like the join key, up to case).
SNAPSHOT_TIME = "event_timestamp"


def snapshot_schema(view: View) -> pa.Schema:
    """Arrow schema of a feature snapshot: ``event_timestamp`` (int64 µs), the join key, every feature
    (counts int64 and never null, everything else float64)."""
    fields = [
        pa.field(SNAPSHOT_TIME, pa.int64(), nullable=False),
        pa.field(view.entity.join_key, pa.string(), nullable=False),
    ]
    for f in view.features:
        counted = isinstance(f, WindowedFeature) and f.function in _COUNTS
        fields.append(pa.field(f.name, pa.int64() if counted else pa.float64(), nullable=not counted))
    return pa.schema(fields)


def snapshot(view: View, tiles: pa.Table | pd.DataFrame, t: int) -> pa.Table:
    """Every feature of ``view`` at ``t`` for every entity with an event counted by any feature.

    ``t`` must be a tile boundary of every size of the view (a cutover at 00:00 UTC is): then each window
    is a whole number of tiles ``[tail(t, W), t)`` and no head tile is cut.

    Returns:
        A table in :func:`snapshot_schema`, one row per entity, sorted by entity.

    Raises:
        ValueError: if ``t`` is not on the tile grid of the view.
    """
    if any(t % size for size in view.hops):
        raise ValueError(f"snapshot time {t} is not a tile boundary of view {view.name}")
    tl = tiles.to_pandas() if isinstance(tiles, pa.Table) else tiles
    key = view.entity.join_key
    partials = {f.name: _window(tl, key, f, t) for f in view.windowed}
    entities = sorted(set().union(*(p.index for p in partials.values()))) if partials else []
    index = pd.Index(entities, dtype=object, name=key)
    cols = {f.name: _result(f.function, partials[f.name].reindex(index)) for f in view.windowed}
    arrays: list[pa.Array] = [pa.array(np.full(len(entities), t, dtype=np.int64)), pa.array(entities, pa.string())]
    for feat in view.features:
        if isinstance(feat, RatioFeature):
            num, den = cols[feat.numerator].astype(np.float64), cols[feat.denominator].astype(np.float64)
            arrays.append(pa.array((num / den.where(den != 0)).to_numpy(), pa.float64(), from_pandas=True))
        elif feat.function in _COUNTS:
            arrays.append(pa.array(cols[feat.name].to_numpy(), pa.int64()))
        else:
            arrays.append(pa.array(cols[feat.name].to_numpy(), pa.float64(), from_pandas=True))
    return pa.Table.from_arrays(arrays, schema=snapshot_schema(view))


def _window(tl: pd.DataFrame, key: str, f: WindowedFeature, t: int) -> pd.DataFrame:
    """Per entity, the merged partial of ``f``'s window: count, total, minimum, maximum, m2, distinct."""
    lo, hi = tile_bounds(t, f.window, f.hop)  # hi == t: t is on the grid
    sel = tl[(tl["size"] == f.hop) & (tl["measure"] == f.measure) & (tl["tile_start"] >= lo) & (tl["tile_start"] < hi)]
    sel = sel[sel["count"] > 0].sort_values([key, "tile_start"], kind="mergesort")
    agg = sel.groupby(key, sort=True).agg(
        count=("count", "sum"), total=("sum", "sum"), minimum=("min", "min"), maximum=("max", "max")
    )
    if f.function in (Function.STD, Function.VAR):
        n = sel["count"].to_numpy(np.float64)
        mean = sel[key].map(agg["total"] / agg["count"]).to_numpy(np.float64)
        spread = n * (sel["sum"].to_numpy(np.float64) / n - mean) ** 2
        parts = pd.DataFrame({key: sel[key].to_numpy(), "m2": sel["m2"].to_numpy(np.float64) + spread})
        agg["m2"] = parts.groupby(key, sort=True)["m2"].sum()
    if f.function is Function.COUNT_DISTINCT:
        members = sel[[key, "distinct"]].explode("distinct").dropna(subset=["distinct"])
        agg["distinct"] = members.drop_duplicates().groupby(key, sort=True)["distinct"].size()
    return agg


def _result(function: Function, p: pd.DataFrame) -> pd.Series:
    """The value of ``function`` from merged partials (absent entity = empty window, §3)."""
    count = p["count"].fillna(0).astype(np.int64)
    if function is Function.COUNT:
        return count
    if function is Function.COUNT_DISTINCT:
        return p["distinct"].fillna(0).astype(np.int64)
    if function is Function.SUM:
        return p["total"].fillna(0.0).astype(np.float64)
    if function is Function.MEAN:
        return (p["total"] / count.where(count > 0)).astype(np.float64)
    if function is Function.MIN:  # + 0.0: -0.0 as 0.0, as every engine answers a min or max of zeros
        return p["minimum"].astype(np.float64) + 0.0
    if function is Function.MAX:
        return p["maximum"].astype(np.float64) + 0.0
    var = p["m2"].clip(lower=0.0) / (count - 1).where(count > 1)
    return (var if function is Function.VAR else np.sqrt(var)).astype(np.float64)
