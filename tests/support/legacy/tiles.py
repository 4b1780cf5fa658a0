"""Tiles: partial aggregates of one entity's events over one hop-sized interval (docs/design.md §4).

A tile is addressed by ``(entity key, size, start)`` and holds one :class:`Partial` per measure that the
view needs at that size. Both layers build tiles with :func:`add_event` and every reader turns tiles into
feature values with :func:`evaluate`, so stream, batch and serving cannot disagree on the arithmetic.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from functools import cache
from typing import NamedTuple

from fstore.core.aggregates import Partial, Stats, Value, merge_stats, ratio
from fstore.core.windows import tile_bounds, tile_start
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import FeatureView, Measure, RatioFeature, WindowedFeature

Tile = dict[str, Partial]  # measure name -> partial


class TileKey(NamedTuple):
    """Address of one tile."""

    entity: str
    size: int
    start: int


TileLookup = Callable[[int, int], Mapping[str, Partial] | None]  # (size, start) -> tile or None


@cache
def tile_plan(view: FeatureView) -> tuple[tuple[int, dict[str, tuple[Measure, ...]]], ...]:
    """Per tile size of the view: event_type → the measures that event type feeds."""
    plan = []
    for size in view.hops:
        by_type: dict[str, list[Measure]] = {}
        for m in view.measures_for_hop(size):
            by_type.setdefault(m.event_type, []).append(m)
        plan.append((size, {k: tuple(v) for k, v in by_type.items()}))
    return tuple(plan)


def entity_of(view: FeatureView, ev: Event) -> str | None:
    """The entity key of ``ev`` for ``view`` (``None``: the event does not concern this view)."""
    return ev.user_id if view.entity.join_key == "user_id" else ev.product_id


def add_event(tiles: dict[TileKey, Tile], view: FeatureView, ev: Event) -> None:
    """Fold one valid, de-duplicated event into the tiles of ``view``."""
    key = entity_of(view, ev)
    if key is None:
        return
    for size, by_type in tile_plan(view):
        measures = by_type.get(ev.event_type)
        if not measures:
            continue
        tkey = TileKey(key, size, tile_start(ev.event_time, size))
        tile = tiles.get(tkey)
        if tile is None:
            tile = tiles[tkey] = {}
        for m in measures:
            p = tile.get(m.name)
            if p is None:
                p = tile[m.name] = Partial()
            p.add(m.of(ev.price, ev.quantity))


def build_tiles(view: FeatureView, events: Iterable[Event]) -> dict[TileKey, Tile]:
    """All tiles of ``view`` for the given events."""
    tiles: dict[TileKey, Tile] = {}
    for ev in events:
        add_event(tiles, view, ev)
    return tiles


def merge_tiles(into: dict[TileKey, Tile], other: Mapping[TileKey, Mapping[str, Partial]]) -> None:
    """Merge tile sets (e.g. per-batch tiles into a running state)."""
    for k, tile in other.items():
        dst = into.setdefault(k, {})
        for name, p in tile.items():
            dst.setdefault(name, Partial()).merge(p)


def window_partial(lookup: TileLookup, f: WindowedFeature, t: int) -> Partial:
    """Merge the tiles that make up ``f``'s window at ``t``.

    The caller guarantees that the head tile (the one containing ``t``) holds only events before ``t``.
    """
    size = f.hop
    lo, hi = tile_bounds(t, f.window, size)
    out = Partial()
    for start in range(lo, hi, size):
        tile = lookup(size, start)
        if tile:
            p = tile.get(f.measure.name)
            if p is not None:
                out.merge(p)
    return out


def merge_series(acc: Stats, starts: Sequence[int], stats: Sequence[Stats], lo: int, hi: int) -> Stats:
    """``acc`` merged with the tiles of one series that start in ``[lo, hi)`` (bounds from
    :func:`fstore.core.windows.tile_bounds`), in ascending start order.

    A series is one measure's tiles of one size as parallel sequences, ``starts`` ascending; it holds only
    the tiles that exist, so a window visits the few tiles an entity has instead of probing every slot.
    Merged in the order of :func:`window_partial`, so sums are bit-identical to it.
    """
    i = bisect_left(starts, lo)
    j = bisect_left(starts, hi, i)
    return merge_stats(acc, stats[i:j]) if i < j else acc


def evaluate(view: FeatureView, lookup: TileLookup, t: int, names: Iterable[str] | None = None) -> dict[str, Value]:
    """Feature values of one entity at ``t`` from its tiles.

    Args:
        view: the feature view.
        lookup: returns the entity's tile for ``(size, start)``, or ``None``.
        t: evaluation time (UTC epoch microseconds), exclusive.
        names: features to return (default: all of the view), in the order given.
    """
    wanted = list(names) if names is not None else list(view.feature_names)
    needed: set[str] = set()
    for n in wanted:
        f = view.feature(n)
        needed.update((f.numerator, f.denominator) if isinstance(f, RatioFeature) else (f.name,))
    windowed: dict[str, Value] = {}
    for f in view.windowed:
        if f.name in needed:
            windowed[f.name] = window_partial(lookup, f, t).result(f.agg)
    out: dict[str, Value] = {}
    for n in wanted:
        f = view.feature(n)
        out[n] = ratio(windowed[f.numerator], windowed[f.denominator]) if isinstance(f, RatioFeature) else windowed[n]
    return out


def lookup_in(tiles: Mapping[TileKey, Mapping[str, Partial]], entity: str) -> TileLookup:
    """A :data:`TileLookup` over an in-memory tile dict for one entity."""
    return lambda size, start: tiles.get(TileKey(entity, size, start))


def values_at(view: FeatureView, events: Iterable[Event], entity: str, t: int) -> dict[str, Value]:
    """value(entity, t) for every feature of ``view`` via tiles (reference path for the other engines)."""
    before = [ev for ev in events if ev.event_time < t and entity_of(view, ev) == entity]
    return evaluate(view, lookup_in(build_tiles(view, before), entity), t)
