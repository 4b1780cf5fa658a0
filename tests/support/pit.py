"""Random events and query times for the point-in-time tests, with their brute-force expectation."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fstore.core.aggregates import Value, isclose
from fstore.core.events import EVENT_TYPES, Event
from fstore.core.features import VIEWS, FeatureView
from fstore.core.timeutil import DAY, HOUR, MINUTE
from tests.support import bruteforce

BASE = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, on every hop grid
WINDOWS = sorted({f.window for v in VIEWS.values() for f in v.windowed})
HOPS = {w: bruteforce.hop_by_table(w) for w in WINDOWS}


def events_table(events: list[Event]) -> pa.Table:
    """The engine's input columns, built directly (no Delta, no fstore adapter)."""
    cols: list[tuple[Any, ...]] = list(zip(*events, strict=True)) if events else [() for _ in range(8)]
    return pa.table(
        {
            "event_id": pa.array(cols[0], pa.string()),
            "event_type": pa.array(cols[1], pa.string()),
            "user_id": pa.array(cols[2], pa.string()),
            "product_id": pa.array(cols[3], pa.string()),
            "event_time": pa.array(cols[4], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
            "price": pa.array(cols[5], pa.float64()),
            "quantity": pa.array(cols[6], pa.int32()),
        }
    )


def random_events(rng: np.random.Generator, n: int, users: int, products: int, span: int) -> list[Event]:
    """Events on and next to hop boundaries (±1 µs), and anywhere in between."""
    out = []
    for i in range(n):
        etype = EVENT_TYPES[int(rng.integers(len(EVENT_TYPES)))]
        if rng.random() < 0.5:
            grid = [5 * MINUTE, HOUR, DAY][int(rng.integers(3))]
            t = BASE + int(rng.integers(span // grid)) * grid + int(rng.choice([-1, 0, 0, 1]))
        else:
            t = BASE + int(rng.integers(span))
        product = None if etype == "page_view" and rng.random() < 0.4 else f"p{rng.integers(products)}"
        price = round(float(rng.uniform(0, 300)), 2) if etype == "purchase" or rng.random() < 0.1 else None
        out.append(Event(f"e{i}", etype, f"u{rng.integers(users)}", product, t, price, int(rng.integers(1, 4)), None))
    return out


def query_times(rng: np.random.Generator, events: list[Event], n: int, span: int) -> list[int]:
    """Times exactly at events, one µs after, on tail boundaries of each window, random, before all data."""
    times = []
    for _ in range(n):
        kind = int(rng.integers(6))
        e = events[int(rng.integers(len(events)))].event_time
        if kind == 0:
            times.append(e)  # the event at exactly t is excluded
        elif kind == 1:
            times.append(e + 1)
        elif kind in (2, 3):  # make tail(t) land exactly on (or 1 µs after) the event
            w = WINDOWS[int(rng.integers(len(WINDOWS)))]
            h = HOPS[w]
            times.append(e - e % h + w + (0 if kind == 2 else int(rng.integers(h))))
        elif kind == 4:
            times.append(BASE - int(rng.integers(1, 3 * DAY)))  # before any data
        else:
            times.append(BASE + int(rng.integers(span + 8 * DAY)))
    return times


def expected(
    view: FeatureView, events: list[Event], keys: Sequence[str | None], times: list[int]
) -> list[dict[str, Value]]:
    by_entity: dict[str, list[Event]] = defaultdict(list)
    for e in events:
        k = getattr(e, view.entity.join_key)
        if k is not None:
            by_entity[k].append(e)
    return [
        bruteforce.values(view, by_entity.get(k, []) if k else [], k or "", t) for k, t in zip(keys, times, strict=True)
    ]


def assert_frame_matches(got: pd.DataFrame, view: FeatureView, want: list[dict[str, Value]], prefix: str = "") -> None:
    for name in view.feature_names:
        col = got[prefix + name].tolist()
        for i, (g, w) in enumerate(zip(col, (row[name] for row in want), strict=True)):
            g = None if isinstance(g, float) and np.isnan(g) else g
            assert isclose(g, w), f"{view.name}:{name} row {i}: engine {g!r} != brute force {w!r}"
