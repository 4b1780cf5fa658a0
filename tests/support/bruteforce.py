"""An independent, deliberately naive implementation of the docs/design.md §3 contract.

It shares nothing with fstore.core's window/tile code: hop classes are restated from the table in the
design, and each value is a direct scan over the events. Tests of every engine compare against it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

from tests.support.legacy.events_example import Event
from tests.support.legacy.features import FeatureView, RatioFeature, WindowedFeature

MIN = 60_000_000
HOUR = 60 * MIN
DAY = 24 * HOUR
TileKey = tuple[str, int, int, str]  # (entity, tile size, tile start, measure)


def hop_by_table(window: int) -> int:
    """docs/design.md §3 hop table."""
    if window <= 12 * HOUR:
        return 5 * MIN
    if window <= 12 * DAY:
        return HOUR
    return DAY


def window_events(events: Iterable[Event], key: str, entity: str, t: int, window: int) -> list[Event]:
    """Events of the entity with tail(t) <= event_time < t."""
    h = hop_by_table(window)
    lo = ((t - window) // h) * h
    return [e for e in events if getattr(e, key) == entity and lo <= e.event_time < t]


def measure(f: WindowedFeature, e: Event) -> float:
    if f.measure.value == "revenue":
        return (e.price or 0.0) * e.quantity
    return 1.0


def value(view: FeatureView, name: str, events: list[Event], entity: str, t: int) -> int | float | None:
    """value(entity, t) of one feature by brute force."""
    f = view.feature(name)
    if isinstance(f, RatioFeature):
        num = value(view, f.numerator, events, entity, t)
        den = value(view, f.denominator, events, entity, t)
        return None if not den or num is None else float(num) / float(den)
    evs = [
        e
        for e in window_events(events, view.entity.join_key, entity, t, f.window)
        if e.event_type == f.measure.event_type
    ]
    xs = [measure(f, e) for e in evs]
    agg = str(f.agg)
    if agg == "count":
        return len(xs)
    if agg == "sum":
        return float(sum(xs))
    if not xs:
        return None
    if agg == "avg":
        return sum(xs) / len(xs)
    return min(xs) if agg == "min" else max(xs)


def values(view: FeatureView, events: list[Event], entity: str, t: int) -> dict[str, int | float | None]:
    """Every feature of the view."""
    return {n: value(view, n, events, entity, t) for n in view.feature_names}


def dedupe(copies: Iterable[tuple[int, str, Event]]) -> list[Event]:
    """(ingested_at, payload_hash, event) copies → the winning event per event_id, by a full sort."""
    out: dict[str, Event] = {}
    for _, _, ev in sorted(copies, key=lambda c: (c[0], c[1])):
        out.setdefault(ev.event_id, ev)
    return list(out.values())


def batch_tiles(view: FeatureView, events: list[Event], cutover: int) -> dict[TileKey, tuple[int, float, float, float]]:
    """The batch job's tiles before ``cutover`` by a direct scan: ``(entity, size, tile start, measure) →
    (count, sum, min, max)``; per size, the longest window served by it sets how far back tiles go."""
    key = view.entity.join_key
    longest: dict[int, int] = {}
    for f in view.windowed:
        size = hop_by_table(f.window)
        longest[size] = max(longest.get(size, 0), f.window)
    pairs = {(hop_by_table(f.window), f.measure.name): f for f in view.windowed}
    out: dict[TileKey, list[float]] = defaultdict(list)
    for (size, name), f in pairs.items():
        horizon = cutover - longest[size] - size
        for e in events:
            ent = getattr(e, key)
            if ent is not None and e.event_type == f.measure.event_type and horizon <= e.event_time < cutover:
                out[(getattr(e, key), size, e.event_time // size * size, name)].append(measure(f, e))
    return {k: (len(v), sum(v), min(v), max(v)) for k, v in out.items()}
