"""Tiles of a compiled plan's feature view, and feature values from them (docs/design.md §3, §4).

The reference tile path for any plan: events (mappings of field → value, the timestamp in UTC epoch
microseconds, already valid and de-duplicated) are folded into tiles addressed by ``(entity key, hop,
start)``, each holding one :class:`~fstore.core.tile_state.Acc` per measure that the view's features at
that hop read (:attr:`fstore.core.plan.View.tiles`). :func:`evaluate` merges the tiles of each feature's
window — bounds from :func:`fstore.core.windows.tile_bounds` — and applies its function; ratios divide two
windowed values. The engines (stream, batch, point-in-time, online merge) are held to these values.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from fstore.core.expr_eval import measure_fn
from fstore.core.plan import RatioFeature, View
from fstore.core.tile_state import Acc, Value
from fstore.core.windows import tile_bounds, tile_start

Row = Mapping[str, Any]
Tile = dict[str, Acc]  # measure name -> partial


class TileKey(NamedTuple):
    """Address of one tile."""

    entity: str
    size: int
    start: int


Tiles = dict[TileKey, Tile]
TileLookup = Callable[[int, int], Mapping[str, Acc] | None]  # (size, start) -> the entity's tile or None


class ViewTiler:
    """Folds events into the tiles of one view (measures compiled once)."""

    def __init__(self, view: View, timestamp_field: str) -> None:
        self.view = view
        self.ts = timestamp_field
        self.key = view.entity.join_key
        self.groups = [
            (g.hop, [(tm.measure, tm.states, measure_fn(view.measure(tm.measure).value, view.measure(tm.measure).where))
                     for tm in g.measures])
            for g in view.tiles
        ]  # fmt: skip

    def add(self, tiles: Tiles, row: Row) -> None:
        """Fold one event into ``tiles`` (no-op for an event without this view's entity key)."""
        entity = row.get(self.key)
        if entity is None:
            return
        at = row[self.ts]
        for size, measures in self.groups:
            tile: Tile | None = None
            for name, states, measure in measures:
                x = measure(row)
                if x is None:
                    continue
                if tile is None:
                    tile = tiles.setdefault(TileKey(str(entity), size, tile_start(at, size)), {})
                acc = tile.get(name)
                if acc is None:
                    acc = tile[name] = Acc.for_states(states)
                acc.add(x)

    def build(self, rows: Iterable[Row]) -> Tiles:
        """The tiles of every event of ``rows``."""
        tiles: Tiles = {}
        for row in rows:
            self.add(tiles, row)
        return tiles


def evaluate(view: View, lookup: TileLookup, t: int, names: Iterable[str] | None = None) -> dict[str, Value]:
    """Feature values of one entity at ``t`` (exclusive) from its tiles; the caller guarantees the head
    tile holds only events before ``t``.

    Args:
        view: the feature view.
        lookup: the entity's tile for ``(size, start)``, or ``None``.
        t: evaluation time, UTC epoch µs.
        names: features to return (default: all of the view), in the order given.
    """
    wanted = list(names) if names is not None else list(view.feature_names)
    windowed: dict[str, Value] = {}

    def value(name: str) -> Value:
        if name not in windowed:
            f = view.feature(name)
            assert not isinstance(f, RatioFeature)
            acc = Acc.for_states(f.states)
            lo, hi = tile_bounds(t, f.window, f.hop)
            for start in range(lo, hi, f.hop):
                tile = lookup(f.hop, start)
                part = tile.get(f.measure) if tile else None
                if part is not None:
                    acc.merge(part)
            windowed[name] = acc.result(f.function)
        return windowed[name]

    out: dict[str, Value] = {}
    for n in wanted:
        f = view.feature(n)
        if isinstance(f, RatioFeature):
            num, den = value(f.numerator), value(f.denominator)
            out[n] = None if num is None or den is None or den == 0 else float(num) / float(den)
        else:
            out[n] = value(n)
    return out


def lookup_in(tiles: Mapping[TileKey, Mapping[str, Acc]], entity: str) -> TileLookup:
    """A :data:`TileLookup` over an in-memory tile dict for one entity."""
    return lambda size, start: tiles.get(TileKey(entity, size, start))


def values_at(view: View, timestamp_field: str, rows: Iterable[Row], entity: str, t: int) -> dict[str, Value]:
    """``value(entity, t)`` of every feature of ``view`` through tiles (the reference path)."""
    before = [r for r in rows if r[timestamp_field] < t and r.get(view.entity.join_key) == entity]
    return evaluate(view, lookup_in(ViewTiler(view, timestamp_field).build(before), entity), t)
