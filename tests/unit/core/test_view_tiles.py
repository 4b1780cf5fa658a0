"""Tiles of any compiled plan give the contract's values (docs/design.md §3, §4).

The ``rides`` repository (every function, declared hops, filters, a product measure, ratios) and the
shipped ``ecommerce`` one, on random traffic, at random times on and off the hop grids: the tile path of
:mod:`fstore.core.view_tiles` must equal the scan of :mod:`tests.support.plan_bruteforce`.
"""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime

import pytest

from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, MINUTE, to_micros
from fstore.core.view_tiles import ViewTiler, evaluate, lookup_in, values_at
from tests.support import plan_bruteforce as pb
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

T0 = to_micros(datetime(2026, 3, 1, tzinfo=UTC))


def close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]


def check(plan: Plan, rows: list[dict[str, object]], times: list[int]) -> int:
    """Compare every view and entity at every time; returns the number of values compared."""
    ts = plan.schema.timestamp_field
    compared = 0
    for view in plan.views:
        key = view.entity.join_key
        entities = sorted({str(r[key]) for r in rows if r.get(key) is not None})
        for t in times:
            tiles = ViewTiler(view, ts).build(r for r in rows if r[ts] < t)  # type: ignore[operator]
            for e in entities:
                got = evaluate(view, lookup_in(tiles, e), t)
                want = pb.values(plan, view.name, rows, e, t)
                assert got.keys() == want.keys()
                bad = {k: (got[k], want[k]) for k in want if not close(got[k], want[k])}
                assert not bad, (view.name, e, t, bad)
                compared += len(want)
    return compared


def test_rides_plan_through_tiles_equals_the_brute_force() -> None:
    rows = rides(800, T0, 35 * DAY, seed=5)
    rng = random.Random(5)
    times = [T0 + rng.randrange(36 * DAY) for _ in range(5)]
    times += [T0 + 31 * DAY, T0 + 33 * DAY + 15 * MINUTE, T0 + 34 * DAY + 6 * 60 * MINUTE]  # on the grids
    assert check(compiled("rides"), rows, times) == 8 * (6 * 13 + 4 * 7)


def test_example_plan_through_tiles_equals_the_brute_force() -> None:
    rng = random.Random(7)
    rows: list[dict[str, object]] = []
    for i in range(800):
        etype = rng.choice(["page_view", "impression", "click", "add_to_cart", "purchase"])
        rows.append(
            {
                "event_id": f"x{i}",
                "event_type": etype,
                "user_id": rng.choice(["u1", "u2", "u3"]),
                "product_id": None if etype == "page_view" else rng.choice(["p1", "p2"]),
                "event_time": T0 + rng.randrange(9 * DAY),
                "price": round(rng.uniform(1, 50), 2) if etype == "purchase" else None,
                "quantity": rng.randint(1, 3),
            }
        )
    times = [T0 + rng.randrange(10 * DAY) for _ in range(10)] + [T0 + 8 * DAY]
    assert check(compiled("ecommerce"), rows, times) == 11 * (3 * 9 + 2 * 12)


def test_values_at_keeps_events_at_and_after_t_out() -> None:
    plan = compiled("rides")
    view = plan.view("driver_performance")
    t = T0 + DAY
    trip = {"uid": "a", "kind": "completed", "driver_id": "d1", "zone_id": "z", "distance_km": 2.0,
            "rate_per_km": 1.0, "surge": 1.0}  # fmt: skip
    rows = [trip | {"ts": t - 1}, trip | {"uid": "b", "ts": t}, trip | {"uid": "c", "ts": t + MINUTE}]
    v = values_at(view, "ts", rows, "d1", t)
    assert (v["trips_10m"], v["fare_3h"], v["fare_var_2d"]) == (1, 2.0, None)
