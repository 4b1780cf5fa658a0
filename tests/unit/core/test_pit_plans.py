"""The point-in-time engine on a plan that shares nothing with the example (tests/support/repos/rides):
every function (count, sum, mean, min, max, std, var, exact count_distinct), a ratio, filters on a string
and a boolean field, a product measure and declared hops, against the brute force of docs/design.md §3."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from fstore.core import pit
from fstore.core.functions import Function
from fstore.core.pit_kernels import RangeCounter
from fstore.core.plan import WindowedFeature
from fstore.core.tile_state import Acc, result
from fstore.core.timeutil import DAY
from tests.support.pit import BASE, assert_frame_matches, events_table, expected, query_times
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

PLAN = compiled("rides")
SPAN = 40 * DAY


def test_rides_every_function_equals_brute_force() -> None:
    functions = {f.function for v in PLAN.views for f in v.windowed if isinstance(f, WindowedFeature)}
    assert functions == set(Function)  # the repo declares every function
    events = rides(3000, BASE, SPAN, seed=4)
    rng = np.random.default_rng(4)
    n = 700
    times = query_times(rng, PLAN, events, n, SPAN)
    drivers = [f"d{rng.integers(8)}" if rng.random() > 0.02 else None for _ in range(n)]  # d6, d7: no events
    zones = [f"z{rng.integers(5)}" for _ in range(n)]
    drivers[10:20], zones[10:20], times[10:20] = drivers[0:10], zones[0:10], times[0:10]  # duplicate rows
    df = pd.DataFrame(
        {
            "driver_id": drivers,
            "zone_id": zones,
            "label": np.arange(n) % 3,
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )
    table = events_table(events[::-1], PLAN.schema)  # not in time order: the comparison sort
    got = pit.point_in_time(PLAN, df, ["driver_performance", "zone_demand"], table, full_feature_names=True)
    pd.testing.assert_frame_equal(got[df.columns], df)
    for view in ("driver_performance", "zone_demand"):
        keys = drivers if view == "driver_performance" else zones
        assert_frame_matches(got, PLAN, view, expected(PLAN, view, events, keys, times), f"{view}__")
    assert got["driver_performance__riders_30d"].dtype == np.int64
    assert got["driver_performance__fare_std_2d"].notna().sum() > 100  # windows with 2+ fares were tested
    assert (got["zone_demand__drivers_3h"] > 1).sum() > 50


def test_a_missing_optional_column_is_null() -> None:
    """An events table written before an optional field existed (no ``tip`` column): tips count nothing."""
    events = [e for e in rides(400, BASE, 3 * DAY, seed=8) if e["kind"] != "tipped"]
    table = events_table(events, PLAN.schema).drop_columns(["tip", "airport"])
    df = pd.DataFrame({"zone_id": ["z0", "z1"], "event_timestamp": pd.to_datetime([BASE + 3 * DAY] * 2, unit="us")})
    got = pit.point_in_time(PLAN, df, ["zone_demand:tips_30d", "zone_demand:tip_max_30d"], table)
    assert got["tips_30d"].tolist() == [0.0, 0.0] and got["tip_max_30d"].isna().all()
    full = pit.point_in_time(PLAN, df, ["zone_demand:requests_3h"], events_table(events, PLAN.schema))
    part = pit.point_in_time(PLAN, df, ["zone_demand:requests_3h"], table)
    pd.testing.assert_frame_equal(full, part)


def test_variance_of_large_close_values_is_exact() -> None:
    """Values near 1e9 that differ by units: the textbook Σx² - (Σx)²/n form cancels catastrophically; the
    engine's centred form stays within 1e-12 of the exact value (``statistics`` computes it with fractions)
    and within 1e-7 of the tile state's one-value-at-a-time Chan merge (whose own error is ~1e-8 here)."""
    rng = np.random.default_rng(3)
    fares = 1e9 + rng.normal(0, 3, 200)
    events = [
        {"uid": f"e{i}", "kind": "completed", "driver_id": "d0", "zone_id": "z0", "ts": BASE + i * 1000,
         "distance_km": float(x), "rate_per_km": 1.0, "surge": 1.0}
        for i, x in enumerate(fares)
    ]  # fmt: skip
    t = BASE + 200 * 1000
    df = pa.table({"driver_id": ["d0"], "event_timestamp": pa.array([t], pa.timestamp("us"))})
    got = pit.point_in_time(PLAN, df, ["driver_performance:fare_var_2d", "driver_performance:fare_std_2d"],
                            events_table(events, PLAN.schema))  # fmt: skip
    exact = statistics.variance([float(x) for x in fares])
    assert got.column("fare_var_2d")[0].as_py() == pytest.approx(exact, rel=1e-12)
    assert got.column("fare_std_2d")[0].as_py() == pytest.approx(math.sqrt(exact), rel=1e-12)
    acc = Acc()
    for x in fares:
        acc.add(float(x))
    assert got.column("fare_var_2d")[0].as_py() == pytest.approx(result(Function.VAR, acc), rel=1e-7)


@pytest.mark.parametrize("n", [1, 7, 1000])
def test_range_counter_equals_a_scan(n: int) -> None:
    rng = np.random.default_rng(n)
    keys = rng.integers(-1, n, n).astype(np.int64)
    lo = rng.integers(0, n + 1, 500).astype(np.int64)
    hi = np.minimum(lo + rng.integers(0, n + 1, 500), n).astype(np.int64)
    bound = rng.integers(-2, n + 2, 500).astype(np.int64)
    got = RangeCounter(keys).count_below(lo, hi, bound)
    want = [int((keys[a:b] < c).sum()) for a, b, c in zip(lo, hi, bound, strict=True)]
    assert got.tolist() == want
