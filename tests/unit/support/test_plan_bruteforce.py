"""The plan brute force on hand-computed cases (docs/design.md §3), then against the core's brute force.

Every expected number below is worked out by hand from the contract; the last test checks that the
example repository's plan, evaluated by :mod:`tests.support.plan_bruteforce`, gives exactly the values
of today's definitions evaluated by :mod:`tests.support.bruteforce` on random traffic.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import pytest

from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR, MINUTE, SECOND, to_micros
from tests.support import bruteforce
from tests.support import plan_bruteforce as pb
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import VIEWS
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

NOON = to_micros(datetime(2026, 3, 10, 12, 0, tzinfo=UTC))
_n = 0


def ride(kind: str, at: int, driver: str | None = "d1", zone: str = "z1", **fields: Any) -> dict[str, Any]:
    """One valid ride event (``fields`` override or add fields)."""
    global _n
    _n += 1
    return {"uid": f"e{_n}", "kind": kind, "driver_id": driver, "zone_id": zone, "ts": at} | fields


def trip(at: int, fare: float, **fields: Any) -> dict[str, Any]:
    """A completed trip whose fare (distance × rate × surge) is ``fare``."""
    return ride("completed", at, **{"distance_km": fare, "rate_per_km": 1.0, "surge": 1.0, **fields})


def dp(events: list[dict[str, Any]], t: int = NOON, driver: str = "d1") -> dict[str, pb.Value]:
    return pb.values(compiled("rides"), "driver_performance", events, driver, t)


def test_sample_variance_and_std_use_n_minus_one() -> None:
    evs = [trip(NOON - (i + 1) * HOUR, x) for i, x in enumerate([2, 4, 4, 4, 5, 5, 7, 9])]
    v = dp(evs)
    assert v["fare_mean_2d"] == 5.0
    assert v["fare_var_2d"] == pytest.approx(32 / 7)  # squared deviations 9+1+1+1+0+0+4+16 = 32
    assert v["fare_std_2d"] == pytest.approx(math.sqrt(32 / 7))
    assert v["trips_2d"] == 8
    assert v["fare_3h"] == 2 + 4 + 4  # the trips 1, 2 and 3 h before noon: 09:00 is the tail, included


def test_one_value_has_a_mean_but_no_spread_and_an_empty_window_gives_zero_or_null() -> None:
    v = dp([trip(NOON - HOUR, 12.5)])
    assert (v["fare_mean_2d"], v["fare_std_2d"], v["fare_var_2d"]) == (12.5, None, None)
    empty = dp([trip(NOON - 3 * DAY, 12.5), ride("rated", NOON - 31 * DAY - DAY, stars=5)])
    assert empty == {
        "trips_10m": 0,
        "fare_3h": 0.0,
        "trips_2d": 0,
        "cancellations_2d": 0,
        "cancellation_rate_2d": None,
        "fare_mean_2d": None,
        "fare_std_2d": None,
        "fare_var_2d": None,
        "airport_trips_2d": 0,
        "stars_min_30d": None,
        "stars_max_30d": None,
        "stars_mean_30d": None,
        "riders_30d": 0,
    }


def test_count_distinct_counts_each_filtered_value_once() -> None:
    evs = [
        trip(NOON - DAY, 10, rider="r1"),
        trip(NOON - 2 * DAY, 10, rider="r2"),
        trip(NOON - 3 * DAY, 10, rider="r1"),
        trip(NOON - 4 * DAY, 10, rider="r3"),
        trip(NOON - 5 * DAY, 10),  # no rider: null values do not count
        ride("cancelled", NOON - DAY, rider="r4"),  # filtered out
        trip(NOON - DAY, 10, rider="r5", driver_id="d2"),  # another driver
    ]
    assert dp(evs)["riders_30d"] == 3


def test_ratio_is_null_when_the_denominator_is_zero() -> None:
    cancels = [ride("cancelled", NOON - k * HOUR) for k in (1, 2)]
    assert dp(cancels)["cancellation_rate_2d"] is None
    four = [trip(NOON - k * HOUR, 5) for k in (1, 2, 3, 4)]
    assert dp(cancels[:1] + four)["cancellation_rate_2d"] == 0.25
    assert dp(four)["cancellation_rate_2d"] == 0.0  # zero numerator: a real 0


def test_tail_is_aligned_down_to_the_hop_and_the_head_is_exact() -> None:
    t = NOON + 7 * MINUTE + 30 * SECOND  # 12:07:30; trips_10m: tail = floor(11:57:30, 5 min) = 11:55
    at = {
        "before_tail": NOON - 5 * MINUTE - 1,
        "tail": NOON - 5 * MINUTE,
        "last": t - 1,
        "at_t": t,
    }
    for name, when in at.items():
        expected = 1 if name in ("tail", "last") else 0
        assert dp([trip(when, 1)], t)["trips_10m"] == expected, name


def test_a_declared_hop_moves_the_tail() -> None:
    t = NOON + 7 * MINUTE  # fare_3h declares a 15-minute hop: tail = floor(09:07, 15 min) = 09:00
    assert dp([trip(NOON - 3 * HOUR, 4)], t)["fare_3h"] == 4.0
    assert dp([trip(NOON - 3 * HOUR - 1, 4)], t)["fare_3h"] == 0.0
    # riders_30d declares 6 h: at 12:07 the tail is floor(t - 30 d, 6 h) = 12:00 thirty days before
    assert dp([trip(NOON - 30 * DAY, 1, rider="r")], t)["riders_30d"] == 1
    assert dp([trip(NOON - 30 * DAY - 1, 1, rider="r")], t)["riders_30d"] == 0
    # stars_*_30d take the default daily hop: tail = 00:00 thirty days before
    assert dp([ride("rated", NOON - 30 * DAY - 12 * HOUR, stars=2)], t)["stars_min_30d"] == 2.0


def test_filters_on_strings_and_booleans_and_raw_field_measures() -> None:
    evs = [
        trip(NOON - HOUR, 10, airport=True),
        trip(NOON - HOUR, 10, airport=False),
        trip(NOON - HOUR, 10, airport=None),
        ride("cancelled", NOON - HOUR, airport=True),
        ride("rated", NOON - HOUR, stars=4),
        ride("rated", NOON - 2 * HOUR, stars=1),
        ride("rated", NOON - 2 * HOUR, stars=None),  # a raw field measure skips nulls
        trip(NOON - HOUR, 10, surge=None),  # a null factor makes the fare null: the trip still counts
    ]
    v = dp(evs)
    assert v["airport_trips_2d"] == 1
    assert (v["stars_min_30d"], v["stars_max_30d"], v["stars_mean_30d"]) == (1.0, 4.0, 2.5)
    assert v["trips_2d"] == 4
    assert v["fare_mean_2d"] == 10.0
    assert v["fare_var_2d"] == 0.0


def test_zone_view_counts_distinct_drivers_and_sums_tips() -> None:
    plan = compiled("rides")
    evs = [
        ride("requested", NOON - MINUTE, driver=None),
        ride("requested", NOON - 2 * MINUTE, driver=None),
        trip(NOON - HOUR, 5),
        ride("completed", NOON - HOUR, driver="d2", distance_km=1.0, rate_per_km=1.0, surge=1.0),
        ride("tipped", NOON - 20 * DAY, tip=3.5),
        ride("tipped", NOON - 2 * DAY, tip=1.5, zone="z2"),
    ]
    v = pb.values(plan, "zone_demand", evs, "z1", NOON)
    assert v == {
        "requests_10m": 2,
        "requests_3h": 2,
        "trips_3h": 2,
        "fill_rate_3h": 1.0,
        "drivers_3h": 2,
        "tips_30d": 3.5,
        "tip_max_30d": 3.5,
    }


def test_the_example_plan_gives_todays_values() -> None:
    """The ecommerce repository's plan reproduces the core definitions' brute force, feature by feature."""
    plan = compiled("ecommerce")
    rng = random.Random(13)
    t0 = to_micros(datetime(2026, 11, 20, tzinfo=UTC))
    events = []
    for i in range(600):
        etype = rng.choice(["page_view", "impression", "click", "add_to_cart", "purchase"])
        product = None if etype == "page_view" and rng.random() < 0.5 else rng.choice(["p1", "p2"])
        price = round(rng.uniform(1, 50), 2) if etype == "purchase" else None
        events.append(
            Event(
                f"x{i}",
                etype,
                rng.choice(["u1", "u2"]),
                product,
                t0 - rng.randrange(9 * DAY),
                price,
                rng.randint(1, 3),
                None,
            )
        )
    rows = [e._asdict() for e in events]
    for _ in range(25):
        t = t0 - rng.randrange(2 * DAY)
        for view in VIEWS.values():
            for entity in ("u1", "u2") if view.entity.join_key == "user_id" else ("p1", "p2"):
                want = bruteforce.values(view, events, entity, t)
                got = pb.values(plan, view.name, rows, entity, t)
                assert set(got) == set(want)
                assert all(isclose(got[k], want[k]) for k in want), (view.name, entity, t, got, want)
