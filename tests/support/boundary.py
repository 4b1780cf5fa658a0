"""One table of boundary cases that every implementation of the window arithmetic runs (issue 10, point 1).

Each row is a view, an entity, an evaluation time ``t`` and the copies of some events in arrival order
(an event_id may repeat with another payload: the first copy wins). The expected value of every feature of
the view comes from the brute force (:mod:`tests.support.bruteforce`, which shares no code with
``fstore.core``); ``point`` restates by hand the few values the row is about, and a test checks that the
brute force agrees with it, so a row cannot silently test nothing.

The rows are driven through every implementation: the core (:func:`tests.support.legacy.tiles.evaluate`), the pandas
tiles (:mod:`tests.support.legacy.tiles_frame`), the point-in-time kernels (:mod:`fstore.core.pit`), the online
merge (:mod:`fstore.online.merge`), the Lua script through a real Redis and the batch job's Spark tiles
(``tests/unit/core/test_boundary.py``, ``tests/unit/online/test_merge_boundary.py``,
``tests/integration/test_boundary.py``).

Times are written out by hand from the hop table, not computed with ``fstore.core.windows``. Negative
measured values (row ``negatives``) are below the event contract (price >= 0), so they enter the engines
below validation, where a value can be negative.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa

from fstore.core.aggregates import Agg, Partial, Value, isclose
from fstore.core.timeutil import DAY, HOUR, MINUTE, parse_timestamp
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import (
    CLICK,
    PRODUCT_ENGAGEMENT,
    PURCHASE,
    USER,
    USER_ACTIVITY,
    FeatureView,
    RatioFeature,
    WindowedFeature,
)
from tests.support.legacy.tiles import Tile, TileKey

T0 = parse_timestamp("2026-11-20T00:00:00Z")  # on every grid (5 min, 1 h, 1 day)
INGESTED = parse_timestamp("2027-01-01T00:00:00Z")  # ingested_at of the first copy; later copies 1 µs apart

#: Windows of 12 h, 12 h + 1 µs, 12 d and 12 d + 1 µs: the edges of the hop table (5 min | 1 h | 1 day),
#: with count, sum, avg, min, max and a ratio over the one measure that carries a value (revenue).
EDGE_VIEW = FeatureView(
    "boundary_edges",
    USER,
    (
        WindowedFeature("clicks_12h", CLICK, Agg.COUNT, 12 * HOUR),
        WindowedFeature("clicks_12h_1us", CLICK, Agg.COUNT, 12 * HOUR + 1),
        WindowedFeature("clicks_12d", CLICK, Agg.COUNT, 12 * DAY),
        WindowedFeature("clicks_12d_1us", CLICK, Agg.COUNT, 12 * DAY + 1),
        WindowedFeature("purchases_12h", PURCHASE, Agg.COUNT, 12 * HOUR),
        WindowedFeature("min_order_12h", PURCHASE, Agg.MIN, 12 * HOUR),
        WindowedFeature("max_order_12h", PURCHASE, Agg.MAX, 12 * HOUR),
        WindowedFeature("revenue_12h_1us", PURCHASE, Agg.SUM, 12 * HOUR + 1),
        WindowedFeature("avg_order_12d", PURCHASE, Agg.AVG, 12 * DAY),
        WindowedFeature("min_order_12d_1us", PURCHASE, Agg.MIN, 12 * DAY + 1),
        WindowedFeature("max_order_12d_1us", PURCHASE, Agg.MAX, 12 * DAY + 1),
        RatioFeature("orders_per_click_12h", "purchases_12h", "clicks_12h"),
    ),
)


@dataclass(frozen=True)
class Case:
    """One row: the features of ``view`` for ``entity`` at ``t`` over ``copies`` (arrival order)."""

    id: str
    view: FeatureView
    entity: str
    t: int
    copies: tuple[Event, ...]
    point: Mapping[str, Value] = field(default_factory=dict)

    @property
    def winners(self) -> list[Event]:
        """The first copy of each event_id, in arrival order (brute force)."""
        return bruteforce.dedupe((i, "", ev) for i, ev in enumerate(self.copies))

    def expected(self) -> dict[str, Value]:
        """Every feature of the view at ``t`` by brute force over the winners."""
        return bruteforce.values(self.view, self.winners, self.entity, self.t)

    def tileable(self) -> list[Event]:
        """Winners that a tile store evaluated at ``t`` may hold: those before ``t`` and those whose every
        tile starts at or after ``t`` (a reader must leave those out). A winner at or after ``t`` inside a
        tile that starts before ``t`` would be counted by any tile read at ``t``; the stream keeps such an
        event out of the tiles while the clock is before it (docs/design.md §5), which the Lua test's
        "clock at t" mode drives with every copy."""
        sizes = {bruteforce.hop_by_table(f.window) for f in self.view.windowed}
        return [e for e in self.winners if e.event_time < self.t or all(e.event_time // s * s >= self.t for s in sizes)]

    def tileable_copies(self) -> list[Event]:
        """The copies (arrival order) of the event_ids whose winner is :meth:`tileable`."""
        ids = {e.event_id for e in self.tileable()}
        return [e for e in self.copies if e.event_id in ids]

    def on_grid(self) -> bool:
        """``t`` lies on the grid of every tile size of the view (snapshots need it)."""
        return all(self.t % bruteforce.hop_by_table(f.window) == 0 for f in self.view.windowed)


_ids = itertools.count(1)


def ev(
    etype: str,
    at: int,
    user: str = "u1",
    product: str | None = "p1",
    price: float | None = None,
    qty: int = 1,
    event_id: str | None = None,
) -> Event:
    """An event (purchases get price 10.0 unless given); ``event_id`` repeats an id to make a copy."""
    if etype == "purchase" and price is None:
        price = 10.0
    return Event(event_id or f"b{next(_ids)}", etype, user, product, at, price, qty, None)


def _t(days: int = 0, hours: int = 0, minutes: int = 0, us: int = 0) -> int:
    return T0 + days * DAY + hours * HOUR + minutes * MINUTE + us


# -- the table -------------------------------------------------------------------------------------------
# Tails are written out by hand: tail(t) = floor(t - W, hop(W)), hop 5 min (W <= 12 h), 1 h (W <= 12 d), 1 day.

_t1 = _t(hours=1, minutes=7, us=250_000)  # 1h: tail T0+5m | 24h: tail T0-23h | 7d: tail T0-7d+1h
_th = _t(hours=3, minutes=17)  # inside a 5-min and a 1-h tile
_e = _t(days=13, hours=2, minutes=33)  # 12h: T0+12d14h30m | 12h+1us: T0+12d14h | 12d: T0+1d2h | 12d+1us: T0+1d

CASES: tuple[Case, ...] = (
    Case(
        "tail: event exactly at the tail counts, 1 us before does not (5-min and 1-h grids)",
        USER_ACTIVITY,
        "u1",
        _t1,
        (
            ev("click", _t(minutes=5)),
            ev("click", _t(minutes=5, us=-1)),
            ev("page_view", _t(hours=-23)),
            ev("page_view", _t(hours=-23, us=-1)),
            ev("purchase", _t(days=-7, hours=1), price=3.0),
            ev("purchase", _t(days=-7, hours=1, us=-1), price=50.0),
        ),
        {"clicks_1h": 1, "clicks_24h": 2, "page_views_24h": 1, "page_views_1h": 0, "purchases_7d": 1},
    ),
    Case(
        "head: t - 1 us counts, t does not (t inside a tile)",
        USER_ACTIVITY,
        "u1",
        _th,
        (
            ev("click", _th - 1),
            ev("click", _th),
            ev("click", _th + 1),
            ev("purchase", _th - 1, price=7.5, qty=2),
            ev("purchase", _th, price=100.0),
        ),
        {"clicks_1h": 1, "purchases_7d": 1, "revenue_7d": 15.0, "avg_order_value_7d": 15.0},
    ),
    Case(
        "head: t on every grid of the view, its head tile is empty; events at t lie in the next tile",
        USER_ACTIVITY,
        "u1",
        _t(hours=5),
        (
            ev("click", _t(hours=5, us=-1)),
            ev("click", _t(hours=5)),
            ev("click", _t(hours=5, minutes=1)),
            ev("add_to_cart", _t(hours=5, us=-1)),
            ev("add_to_cart", _t(hours=5)),
            ev("purchase", _t(hours=5), price=9.0),
        ),
        {"clicks_1h": 1, "clicks_24h": 1, "add_to_carts_24h": 1, "purchases_7d": 0, "max_order_value_7d": None},
    ),
    Case(
        "12 h edge: W = 12 h aligns to 5 min, W = 12 h + 1 us to 1 h",
        EDGE_VIEW,
        "u1",
        _e,
        (
            ev("click", _t(days=12, hours=14, minutes=30)),
            ev("click", _t(days=12, hours=14, minutes=30, us=-1)),
            ev("click", _t(days=12, hours=14)),
            ev("click", _t(days=12, hours=14, us=-1)),
            ev("purchase", _t(days=12, hours=14, minutes=30), price=2.0),
            ev("purchase", _t(days=12, hours=14, minutes=10), price=1.0),
        ),
        {"clicks_12h": 1, "clicks_12h_1us": 3, "min_order_12h": 2.0, "revenue_12h_1us": 3.0},
    ),
    Case(
        "12 d edge: W = 12 d aligns to 1 h, W = 12 d + 1 us to 1 day (t inside a tile)",
        EDGE_VIEW,
        "u1",
        _e,
        (
            ev("click", _t(days=1, hours=2)),
            ev("click", _t(days=1, hours=2, us=-1)),
            ev("click", _t(days=1)),
            ev("click", _t(days=1, us=-1)),
            ev("purchase", _t(days=1), price=4.0),
            ev("purchase", _t(days=1, hours=2), price=8.0),
        ),
        {
            "clicks_12d": 1,
            "clicks_12d_1us": 3,
            "avg_order_12d": 8.0,
            "min_order_12d_1us": 4.0,
            "max_order_12d_1us": 8.0,
        },
    ),
    Case(
        "12 d edge with t on the day grid (tails T0+1d and T0)",
        EDGE_VIEW,
        "u1",
        _t(days=13),
        (
            ev("click", _t(days=1)),
            ev("click", _t(days=1, us=-1)),
            ev("click", T0),
            ev("click", T0 - 1),
            ev("click", _t(days=13, us=-1)),
            ev("click", _t(days=13)),
            ev("purchase", T0, price=6.0),
        ),
        {"clicks_12d": 2, "clicks_12d_1us": 4, "clicks_12h": 1, "min_order_12d_1us": 6.0, "avg_order_12d": None},
    ),
    Case(
        "empty windows: count and sum 0, avg/min/max null, ratio null (edge view)",
        EDGE_VIEW,
        "u1",
        _e,
        (
            ev("click", _e - MINUTE, user="u2"),
            ev("purchase", _e - MINUTE, user="u2", price=5.0),
            ev("purchase", _e, price=5.0),
            ev("click", _t(days=-30)),
        ),
        {
            "clicks_12h": 0,
            "clicks_12d_1us": 0,
            "revenue_12h_1us": 0.0,
            "avg_order_12d": None,
            "min_order_12h": None,
            "max_order_12d_1us": None,
            "orders_per_click_12h": None,
        },
    ),
    Case(
        "empty windows of the example view: revenue 0.0, avg and max null",
        USER_ACTIVITY,
        "u1",
        _th,
        (ev("purchase", _th - MINUTE, user="u2"), ev("purchase", _t(days=-8))),
        {"purchases_7d": 0, "revenue_7d": 0.0, "avg_order_value_7d": None, "max_order_value_7d": None},
    ),
    Case(
        "zero denominators: ctr null without impressions; conversion null without clicks",
        PRODUCT_ENGAGEMENT,
        "p1",
        _t(hours=6),
        (
            ev("click", _t(hours=5, minutes=50)),
            ev("impression", _t(hours=3)),
            ev("impression", _t(hours=3, minutes=5)),
            ev("purchase", _t(hours=2), product="p2", price=5.0),
            ev("impression", _t(hours=5, minutes=59), product="p2"),
        ),
        {"ctr_1h": None, "ctr_24h": 0.5, "conversion_rate_7d": 0.0, "impressions_1h": 0},
    ),
    Case(
        "zero denominators: a numerator of 0 over a positive denominator is 0.0; purchases without clicks",
        PRODUCT_ENGAGEMENT,
        "p2",
        _t(hours=6),
        (
            ev("purchase", _t(hours=2), product="p2", price=5.0),
            ev("impression", _t(hours=5, minutes=59), product="p2"),
            ev("page_view", _t(hours=5, minutes=59), product=None),
        ),
        {"ctr_1h": 0.0, "ctr_24h": 0.0, "conversion_rate_7d": None, "purchases_7d": 1, "revenue_24h": 5.0},
    ),
    Case(
        "min/max of negatives: the max of negative values is negative, not 0 or null",
        EDGE_VIEW,
        "u1",
        _e,
        (
            ev("purchase", _e - 3 * MINUTE, price=-0.5),
            ev("purchase", _e - 2 * MINUTE, price=-12.25, qty=2),
            ev("purchase", _e - 2 * HOUR, price=-5.0),
            ev("purchase", _e - 3 * DAY, price=-1.0, qty=3),
        ),
        {
            "min_order_12h": -24.5,
            "max_order_12h": -0.5,
            "revenue_12h_1us": -30.0,
            "max_order_12d_1us": -0.5,
            "min_order_12d_1us": -24.5,
            "avg_order_12d": -8.25,
            "orders_per_click_12h": None,
        },
    ),
    Case(
        "duplicates with other payloads: the first copy wins (its event_time, its price)",
        USER_ACTIVITY,
        "u1",
        _th,
        (
            ev("purchase", _th - 10 * MINUTE, price=5.0, event_id="dupA"),
            ev("purchase", _th - 8 * DAY, price=1.0, event_id="dupB"),
            ev("click", _th - 30 * MINUTE, event_id="dupC"),
            ev("purchase", _th - 2 * DAY, price=500.0, qty=3, event_id="dupA"),
            ev("purchase", _th - HOUR, price=70.0, event_id="dupB"),
            ev("click", _th - 3 * MINUTE, event_id="dupC"),
            ev("click", _th - 2 * HOUR, event_id="dupC"),
            ev("click", _th + HOUR, event_id="dupD"),
            ev("click", _th - 1, event_id="dupD"),
        ),
        {"purchases_7d": 1, "revenue_7d": 5.0, "max_order_value_7d": 5.0, "clicks_1h": 1, "clicks_24h": 1},
    ),
    Case(
        "a day boundary (the cutover of the online merge): events at T0 and T0 - 1 us",
        USER_ACTIVITY,
        "u1",
        _t(minutes=20),
        (
            ev("click", T0),
            ev("click", T0 - 1),
            ev("purchase", T0, price=2.0),
            ev("purchase", T0 - 1, price=4.0),
        ),
        {"clicks_1h": 2, "purchases_7d": 2, "revenue_7d": 6.0, "max_order_value_7d": 4.0},
    ),
)


def case_ids() -> list[str]:
    """pytest ids of :data:`CASES`."""
    return [c.id for c in CASES]


# -- inputs in the engines' forms ------------------------------------------------------------------------


def raw_table(copies: Sequence[Event]) -> pa.Table:
    """``raw_events``-like rows of the copies in arrival order: ``ingested_at`` increases by 1 µs per copy, so
    every reader's first-ingested rule picks the first copy (``payload_hash`` differs per copy)."""
    cols: list[tuple[Any, ...]] = list(zip(*copies, strict=True)) if copies else [() for _ in range(8)]
    ts = pa.timestamp("us", tz="UTC")
    return pa.table(
        {
            "event_id": pa.array(cols[0], pa.string()),
            "event_type": pa.array(cols[1], pa.string()),
            "user_id": pa.array(cols[2], pa.string()),
            "product_id": pa.array(cols[3], pa.string()),
            "event_time": pa.array(cols[4], pa.int64()).cast(ts),
            "price": pa.array(cols[5], pa.float64()),
            "quantity": pa.array(cols[6], pa.int32()),
            "ingested_at": pa.array([INGESTED + i for i in range(len(copies))], pa.int64()).cast(ts),
            "payload_hash": pa.array([hashlib.sha256(repr(c).encode()).hexdigest() for c in copies], pa.string()),
        }
    )


def batches(copies: Sequence[Event]) -> Iterator[list[Event]]:
    """The copies cut into batches in arrival order, a new batch at each repeated event_id (a stream batch
    holds each event_id once: the worker keeps the first copy of a batch before the script sees it)."""
    batch: list[Event] = []
    ids: set[str] = set()
    for c in copies:
        if c.event_id in ids:
            yield batch
            batch, ids = [], set()
        batch.append(c)
        ids.add(c.event_id)
    if batch:
        yield batch


def mismatches(got: Mapping[str, Value], want: Mapping[str, Value]) -> list[str]:
    """Features whose values differ (counts exactly, as ints; floats to 1e-9 relative; nulls as nulls)."""
    bad = []
    for name, w in want.items():
        g = got.get(name, "missing")
        if g == "missing" or not isinstance(g, int | float | None):
            bad.append(f"{name}: got {g!r}, want {w!r}")
        elif isinstance(w, int):
            if not isinstance(g, int) or g != w:
                bad.append(f"{name}: got {g!r}, want {w!r}")
        elif not isclose(g, w):
            bad.append(f"{name}: got {g!r}, want {w!r}")
    return bad


def assert_expected(case: Case, got: Mapping[str, Value], engine: str) -> None:
    """``got`` holds every feature of the row's view, each equal to the brute force."""
    assert set(got) == set(case.view.feature_names), engine
    bad = mismatches(got, case.expected())
    assert not bad, f"{engine} disagrees with the brute force: {bad}"


def tiles_from_rows(view: FeatureView, rows: Iterable[Mapping[str, Any]]) -> dict[TileKey, Tile]:
    """Rows of a tiles frame (:func:`tests.support.legacy.tiles_frame.tile_schema`: pandas or Spark) in the core's
    dict form, for :func:`tests.support.legacy.tiles.evaluate`."""
    out: dict[TileKey, Tile] = {}
    for r in rows:
        key = TileKey(r[view.entity.join_key], r["size"], r["tile_start"])
        out.setdefault(key, {})[r["measure"]] = Partial(r["count"], r["sum"], r["min"], r["max"])
    return out
