"""Table-driven tests of the window/tile contract (docs/design.md §3), checked against the brute force."""

from __future__ import annotations

import random
from datetime import UTC, datetime

import pytest

from fstore.core.aggregates import Agg, Partial, isclose, ratio
from fstore.core.events import Event
from fstore.core.features import (
    CLICK,
    PRODUCT_ENGAGEMENT,
    PURCHASE,
    USER,
    USER_ACTIVITY,
    VIEWS,
    FeatureView,
    WindowedFeature,
    resolve,
)
from fstore.core.tiles import build_tiles, evaluate, lookup_in, values_at
from fstore.core.timeutil import DAY, HOUR, MINUTE, to_micros
from fstore.core.windows import hop, span, tail
from tests.support import bruteforce

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


LONG_VIEW = FeatureView(
    "long_view",
    USER,
    (
        WindowedFeature("clicks_30d", CLICK, Agg.COUNT, 30 * DAY),
        WindowedFeature("clicks_12h", CLICK, Agg.COUNT, 12 * HOUR),
        WindowedFeature("clicks_12h_1us", CLICK, Agg.COUNT, 12 * HOUR + 1),
        WindowedFeature("clicks_12d", CLICK, Agg.COUNT, 12 * DAY),
        WindowedFeature("clicks_12d_1us", CLICK, Agg.COUNT, 12 * DAY + 1),
        WindowedFeature("min_order_30d", PURCHASE, Agg.MIN, 30 * DAY),
    ),
)

t1 = T0 + HOUR + 7 * MINUTE  # 1h window: tail = T0 + 5 min
t24 = T0 + 30 * HOUR + 30 * MINUTE  # 24h window: tail = T0 + 6 h
t7 = T0 + 8 * DAY + 1  # 7d window: tail = T0 + 1 d
t30 = T0 + 40 * DAY + 5 * HOUR  # 30d window: tail = T0 + 10 d

CASES = [
    # (id, view, events, entity, t, expected subset)
    (
        "5min-hop: event at tail in, just before tail out, at t out",
        USER_ACTIVITY,
        [ev("click", T0 + 5 * MINUTE), ev("click", T0 + 5 * MINUTE - 1), ev("click", t1 - 1), ev("click", t1)],
        "u1",
        t1,
        {"clicks_1h": 2, "clicks_24h": 3},
    ),
    (
        "1h-hop: 24h window boundaries",
        USER_ACTIVITY,
        [
            ev("page_view", T0 + 6 * HOUR),
            ev("page_view", T0 + 6 * HOUR - 1),
            ev("page_view", t24 - 1),
            ev("page_view", t24),
        ],
        "u1",
        t24,
        {"page_views_24h": 2, "page_views_1h": 1},
    ),
    (
        "1h-hop: 7d window with revenue avg/max",
        USER_ACTIVITY,
        [
            ev("purchase", T0 + DAY, price=5.0, qty=2),
            ev("purchase", T0 + DAY - 1, price=100.0),
            ev("purchase", t7 - 1, price=2.5),
            ev("purchase", t7, price=1000.0),
        ],
        "u1",
        t7,
        {"purchases_7d": 2, "revenue_7d": 12.5, "avg_order_value_7d": 6.25, "max_order_value_7d": 10.0},
    ),
    (
        "1-day hop: 30d window",
        LONG_VIEW,
        [
            ev("click", T0 + 10 * DAY),
            ev("click", T0 + 10 * DAY - 1),
            ev("click", t30 - 1),
            ev("click", t30),
            ev("purchase", T0 + 11 * DAY, price=3.0),
            ev("purchase", T0 + 12 * DAY, price=1.5, qty=3),
        ],
        "u1",
        t30,
        {"clicks_30d": 2, "min_order_30d": 3.0},
    ),
    (
        "hop class boundaries at 12h and 12d",
        LONG_VIEW,
        # t = T0+13d+2h33m. 12h tail: 5-min grid T0+12d+14h30m, 1-h grid (12h+1us) T0+12d+14h.
        # 12d tail: 1-h grid T0+1d+2h, 1-day grid (12d+1us) T0+1d.
        [
            ev("click", T0 + 12 * DAY + 14 * HOUR + 40 * MINUTE),
            ev("click", T0 + 12 * DAY + 14 * HOUR + 10 * MINUTE),
            ev("click", T0 + 12 * DAY + 13 * HOUR + 59 * MINUTE),
            ev("click", T0 + DAY + 1 * HOUR),
        ],
        "u1",
        T0 + 13 * DAY + 2 * HOUR + 33 * MINUTE,
        {"clicks_12h": 1, "clicks_12h_1us": 2, "clicks_12d": 3, "clicks_12d_1us": 4},
    ),
    (
        "empty window: count/sum 0, avg/min/max null",
        USER_ACTIVITY,
        [ev("click", T0, user="other")],
        "u1",
        t7,
        {"clicks_1h": 0, "revenue_7d": 0.0, "avg_order_value_7d": None, "max_order_value_7d": None},
    ),
    (
        "ratio with zero denominator is null; zero numerator is 0.0",
        PRODUCT_ENGAGEMENT,
        [ev("click", t1 - MINUTE), ev("impression", t24 - 2 * HOUR)],
        "p1",
        t24,
        {"ctr_1h": None, "ctr_24h": 0.0, "impressions_24h": 1, "clicks_7d": 1, "conversion_rate_7d": 0.0},
    ),
    (
        "ratio and conversion",
        PRODUCT_ENGAGEMENT,
        [
            ev("impression", t1 - MINUTE),
            ev("impression", t1 - 2 * MINUTE),
            ev("click", t1 - 30 * MINUTE),
            ev("purchase", t1 - 10, price=4.0, qty=2),
        ],
        "p1",
        t1,
        {"ctr_1h": 0.5, "conversion_rate_7d": 1.0, "revenue_24h": 8.0, "purchases_24h": 1},
    ),
    (
        "t on the hop grid: head tile empty",
        USER_ACTIVITY,
        [ev("click", T0 + 2 * HOUR), ev("click", T0 + 2 * HOUR - 1), ev("click", T0 + HOUR)],
        "u1",
        T0 + 2 * HOUR,
        {"clicks_1h": 2, "clicks_24h": 2},
    ),
    (
        "page_view without product does not feed product views",
        PRODUCT_ENGAGEMENT,
        [ev("page_view", t1 - 1, product=None), ev("click", t1 - 1, product="p2")],
        "p2",
        t1,
        {"clicks_1h": 1, "impressions_1h": 0},
    ),
]


@pytest.mark.parametrize(
    ("view", "events", "entity", "t", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_window_cases(view: FeatureView, events: list[Event], entity: str, t: int, expected: dict[str, object]) -> None:
    got_tiles = values_at(view, events, entity, t)
    got_brute = bruteforce.values(view, events, entity, t)
    for name, want in expected.items():
        assert got_tiles[name] == want, (name, got_tiles[name], want)
        assert got_brute[name] == want, (name, "brute force disagrees with the table", got_brute[name])
    assert set(got_tiles) == set(view.feature_names)


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
