"""Windows, tiles and partial aggregates of the core (docs/design.md §3, §4), checked against the brute force."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import numpy as np
import pytest

from fstore.core.aggregates import EMPTY, Agg, Partial, fold, isclose, merge_all, merge_stats, ones, ratio, result
from fstore.core.timeutil import DAY, HOUR, MINUTE, ceil_to, to_micros
from fstore.core.windows import hop, span, tail, tile_bounds, tile_start
from tests.support import bruteforce
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import (
    PRODUCT_ENGAGEMENT,
    VIEWS,
    resolve,
)
from tests.support.legacy.tiles import build_tiles, evaluate, lookup_in, merge_series, values_at

pytestmark = pytest.mark.unit

T0 = to_micros(datetime(2026, 11, 20, tzinfo=UTC))
_n = 0


def ev(
    etype: str, at: int, user: str = "u1", product: str | None = "p1", price: float | None = None, qty: int = 1
) -> Event:
    global _n
    _n += 1
    if etype == "purchase" and price is None:
        price = 10.0
    return Event(f"e{_n}", etype, user, product, at, price, qty, None)


t1 = T0 + HOUR + 7 * MINUTE  # 1h window: tail = T0 + 5 min

# The window cases (tails, heads, hop edges, empty windows, ratios, duplicates) are the boundary table of
# tests/support/boundary.py, run through every implementation by tests/unit/core/test_boundary.py and others.


@pytest.mark.parametrize(
    ("window", "expected"),
    [
        (HOUR, 5 * MINUTE),
        (12 * HOUR, 5 * MINUTE),
        (12 * HOUR + 1, HOUR),
        (12 * DAY, HOUR),
        (12 * DAY + 1, DAY),
        (30 * DAY, DAY),
        (1, 5 * MINUTE),
    ],
)
def test_hop_table(window: int, expected: int) -> None:
    assert hop(window) == expected == bruteforce.hop_by_table(window)


def test_hop_rejects_non_positive_window() -> None:
    with pytest.raises(ValueError, match="positive"):
        hop(0)


def test_span_decomposition() -> None:
    sp = span(t1, HOUR)
    assert sp.full_start == tail(t1, HOUR) == T0 + 5 * MINUTE
    assert sp.head_start == T0 + HOUR + 5 * MINUTE
    assert list(sp.all_tiles())[-1] == sp.head_start
    aligned = span(T0 + 2 * HOUR, HOUR)
    assert aligned.head_start == T0 + 2 * HOUR not in aligned.all_tiles()


@pytest.mark.parametrize("size", [5 * MINUTE, HOUR, DAY])
@pytest.mark.parametrize("window", [HOUR, 12 * HOUR, 12 * HOUR + 1, 7 * DAY, 12 * DAY + 1])
def test_tile_bounds_are_the_tail_and_the_head_tile(window: int, size: int) -> None:
    """tile_bounds (its own arithmetic, for the online merge) agrees with tail and ceil_to, on and off the
    grid and before 1970; tail and tile_start give the same on int64 arrays (the vectorised engines)."""
    times = [T0 + d for d in (0, 1, size - 1, size, size + 1, 7 * size + 3)] + [-size - 1, -size, -1, 0, 1]
    for t in times:
        lo, hi = tile_bounds(t, window, size)
        assert lo == tail(t, window, size) == (t - window) // size * size
        assert hi == ceil_to(t, size) == -((-t) // size) * size
        assert tile_bounds(t, window) == (tail(t, window), ceil_to(t, hop(window)))
    arr = np.array(times, dtype=np.int64)
    assert tail(arr, window, size).tolist() == [tail(t, window, size) for t in times]
    assert arr.tolist() == times  # aligned in place on a copy, never on the caller's array
    assert tile_start(arr, size).tolist() == [tile_start(t, size) for t in times]


def test_fold_merge_and_result_on_tuples() -> None:
    xs = [3.5, -2.0, 7.25, -2.0]
    stats = fold(EMPTY, xs)
    assert stats == (4, 6.75, -2.0, 7.25)
    assert merge_stats(fold(EMPTY, xs[:1]), [EMPTY, fold(EMPTY, xs[1:]), EMPTY]) == stats
    assert merge_stats(EMPTY, []) == EMPTY and fold(EMPTY, []) == EMPTY
    assert ones(3) == fold(EMPTY, [1.0, 1.0, 1.0]) and ones(0) == EMPTY
    assert [result(a, stats) for a in Agg] == [4, 6.75, 6.75 / 4, -2.0, 7.25]
    assert [result(a, EMPTY) for a in Agg] == [0, 0.0, None, None, None]
    p = Partial()
    for x in xs:
        p.add(x)
    assert p.to_tuple() == stats and merge_all([p, Partial(), p]).to_tuple() == merge_stats(stats, [stats])


def test_merge_series_takes_the_tiles_starting_in_the_bounds() -> None:
    starts = (0, 300, 900, 1200)
    stats = tuple(fold(EMPTY, [float(s), -float(s)]) for s in starts)
    assert merge_series(EMPTY, starts, stats, 300, 1200) == merge_stats(EMPTY, stats[1:3])
    assert merge_series(EMPTY, starts, stats, 301, 900) == EMPTY
    assert merge_series(stats[0], starts, stats, 1200, 1201) == merge_stats(stats[0], stats[3:])


@pytest.mark.parametrize(
    ("xs", "agg", "want"),
    [
        ([], Agg.COUNT, 0),
        ([], Agg.SUM, 0.0),
        ([], Agg.AVG, None),
        ([], Agg.MIN, None),
        ([], Agg.MAX, None),
        ([2.0, 4.0, 9.0], Agg.COUNT, 3),
        ([2.0, 4.0, 9.0], Agg.SUM, 15.0),
        ([2.0, 4.0, 9.0], Agg.AVG, 5.0),
        ([2.0, 4.0, 9.0], Agg.MIN, 2.0),
        ([2.0, 4.0, 9.0], Agg.MAX, 9.0),
    ],
)
def test_partial_results(xs: list[float], agg: Agg, want: object) -> None:
    p = Partial()
    for x in xs:
        p.add(x)
    assert p.result(agg) == want


def test_partial_merge_is_associative_and_commutative() -> None:
    rng = random.Random(3)
    xs = [rng.uniform(0, 100) for _ in range(50)]
    parts = [Partial() for _ in range(5)]
    for i, x in enumerate(xs):
        parts[i % 5].add(x)
    a, b = Partial(), Partial()
    for p in parts:
        a.merge(p)
    for p in reversed(parts):
        b.merge(p)
    b.merge(Partial())
    for agg in Agg:
        assert isclose(a.result(agg), b.result(agg))
    assert a.count == 50 and a.minimum == min(xs) and a.maximum == max(xs)
    assert Partial.from_tuple(a.to_tuple()) == a


def test_ratio_rules() -> None:
    assert ratio(1, 0) is None and ratio(None, 3) is None and ratio(3, None) is None
    assert ratio(0, 4) == 0.0 and ratio(1, 4) == 0.25


def test_resolve_references() -> None:
    refs = resolve(["user_activity:clicks_1h", "product_engagement", "user_activity:clicks_1h"])
    assert next((v.name, f.name) for v, f in refs) == ("user_activity", "clicks_1h")
    assert len(refs) == 1 + len(PRODUCT_ENGAGEMENT.features)
    with pytest.raises(KeyError, match="nope"):
        resolve(["user_activity:nope"])
    with pytest.raises(KeyError, match="unknown feature view 'x'"):
        resolve(["x"])


def test_public_feature_names() -> None:
    assert VIEWS["user_activity"].feature_names == (
        "page_views_1h",
        "page_views_24h",
        "clicks_1h",
        "clicks_24h",
        "add_to_carts_24h",
        "purchases_7d",
        "revenue_7d",
        "avg_order_value_7d",
        "max_order_value_7d",
    )
    assert VIEWS["product_engagement"].feature_names == (
        "impressions_1h",
        "impressions_24h",
        "clicks_1h",
        "clicks_24h",
        "ctr_1h",
        "ctr_24h",
        "add_to_carts_24h",
        "purchases_24h",
        "revenue_24h",
        "clicks_7d",
        "purchases_7d",
        "conversion_rate_7d",
    )


def test_randomised_tiles_equal_brute_force() -> None:
    rng = random.Random(11)
    types = ["page_view", "impression", "click", "add_to_cart", "purchase"]
    events = [
        ev(
            rng.choice(types),
            T0 + rng.randrange(0, 10 * DAY // MINUTE) * MINUTE + rng.choice([0, 1, 999_999]),
            user=f"u{rng.randrange(4)}",
            product=f"p{rng.randrange(4)}",
            price=round(rng.uniform(0, 50), 2),
            qty=rng.randint(1, 3),
        )
        for _ in range(2000)
    ]
    times = [T0 + rng.randrange(0, 11 * DAY) for _ in range(40)]
    times += [T0 + 9 * DAY, T0 + 9 * DAY + 5 * MINUTE, events[0].event_time, events[1].event_time + 1]
    checked = 0
    for view in VIEWS.values():
        tiles_all = build_tiles(view, events)
        for t in times:
            for entity in ("u1", "u3", "p0", "p2"):
                want = bruteforce.values(view, events, entity, t)
                got = values_at(view, events, entity, t)
                for name in view.feature_names:
                    assert isclose(got[name], want[name]), (view.name, name, entity, t, got[name], want[name])
                    checked += 1
                # With t on the grid of every tile size no tile straddles t, so the complete tile set gives the same.
                if t % HOUR == 0:
                    assert evaluate(view, lookup_in(tiles_all, entity), t) == got
    assert checked > 1000
