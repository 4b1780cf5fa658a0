"""Vectorised tiles of any plan equal the scalar reference tiles (docs/design.md §3, §4), and are
reproducible whatever the order of the events."""

from __future__ import annotations

import math
import random
from datetime import UTC, datetime
from typing import Any

import pandas as pd
import pytest

from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, to_micros
from fstore.core.view_tiles import TileKey, ViewTiler
from fstore.core.view_tiles_frame import build_tiles, member
from tests.support.plan_rows import arrow_table
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

T0 = to_micros(datetime(2026, 3, 1, tzinfo=UTC))
table = arrow_table


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def compare(plan: Plan, rows: list[dict[str, Any]]) -> int:
    compared = 0
    for view in plan.views:
        want = ViewTiler(view, plan.schema.timestamp_field).build(rows)
        got = build_tiles(view, plan.schema, table(plan.schema, rows)).to_pylist()
        key = view.entity.join_key
        assert len(got) == sum(len(t) for t in want.values())
        for r in got:
            acc = want[TileKey(r[key], r["size"], r["tile_start"])][r["measure"]]
            assert r["count"] == acc.count
            assert close(r["sum"], acc.total) and close(r["min"], acc.minimum) and close(r["max"], acc.maximum)
            assert math.isclose(r["m2"], acc.m2, rel_tol=1e-9, abs_tol=1e-6), (r, acc)
            if acc.distinct is None:
                assert r["distinct"] is None
            else:
                assert r["distinct"] == sorted({member(v) for v in acc.distinct})
            compared += 1
    return compared


def test_rides_tiles_equal_the_scalar_tiles() -> None:
    assert compare(compiled("rides"), rides(2_000, T0, 40 * DAY, seed=9)) > 1_000


def test_example_tiles_equal_the_scalar_tiles() -> None:
    rng = random.Random(4)
    rows = []
    for i in range(1_000):
        etype = rng.choice(["page_view", "impression", "click", "add_to_cart", "purchase"])
        rows.append({"event_id": f"x{i}", "event_type": etype, "user_id": rng.choice(["u1", "u2"]),
                     "product_id": None if etype == "page_view" else rng.choice(["p1", "p2", "p3"]),
                     "event_time": T0 + rng.randrange(9 * DAY), "quantity": rng.randint(1, 3),
                     "price": round(rng.uniform(1, 50), 2) if etype == "purchase" else None})  # fmt: skip
    assert compare(compiled("ecommerce"), rows) > 100


def test_tiles_are_bit_identical_whatever_the_order_and_horizons_and_end_cut() -> None:
    plan = compiled("rides")
    rows = rides(1_500, T0, 10 * DAY, seed=2)
    view = plan.view("driver_performance")
    a = build_tiles(view, plan.schema, table(plan.schema, rows))
    shuffled = rows[:]
    random.Random(1).shuffle(shuffled)
    assert build_tiles(view, plan.schema, table(plan.schema, shuffled)).equals(a)
    end, horizon = T0 + 5 * DAY, T0 + 2 * DAY
    cut = build_tiles(view, plan.schema, table(plan.schema, rows), {g.hop: horizon for g in view.tiles}, end)
    kept = [r for r in rows if horizon <= r["ts"] < end]
    assert cut.equals(build_tiles(view, plan.schema, table(plan.schema, kept)))
    assert 0 < cut.num_rows < a.num_rows


def test_a_column_missing_from_older_data_reads_as_null() -> None:
    plan = compiled("rides")
    rows = rides(300, T0, 3 * DAY, seed=3)
    view = plan.view("driver_performance")
    old = table(plan.schema, rows).drop_columns(["airport"])  # written before 'airport' was declared
    tiles = build_tiles(view, plan.schema, old).to_pylist()
    assert not [r for r in tiles if r["measure"] == "airport_trip"]
    assert [r for r in tiles if r["measure"] == "trip"]


def test_minus_zero_and_zero_are_one_distinct_member() -> None:
    """-0.0 == 0.0: the tiles' members (batch, stream and the online reader's future events all use
    ``member``) count them once, as the point-in-time engine and the brute force do."""
    from fstore.core import pit
    from tests.support.meters_traffic import values

    plan = compiled("meters")
    view = plan.view("meter_stats")
    base = {"phase": "reset", "meter_id": "m0"}
    rows = [dict(base, reading_no=f"z{i}", read_at=T0 + i, delta=d) for i, d in enumerate((-0.0, 0.0, 1.0, -1.0 * 0.0))]
    assert member(-0.0) == member(0.0) == "0.0"
    tiles = build_tiles(view, plan.schema, table(plan.schema, rows)).to_pylist()
    assert {tuple(r["distinct"]) for r in tiles if r["measure"] == "delta"} == {("0.0", "1.0")}
    t = T0 + DAY
    df = pd.DataFrame({"meter_id": ["m0"], "event_timestamp": pd.to_datetime([t], unit="us", utc=True)})
    got = pit.point_in_time(plan, df, ["meter_stats:deltas_12d"], table(plan.schema, rows))
    assert got["deltas_12d"].tolist() == [values(rows, "m0", t)["deltas_12d"]] == [2]
    # the online reader's future-stamped events: a due -0.0 joins the tile's 0.0
    from fstore.online.merge import fold_future

    fold = fold_future((1, 0.0, 0.0, 0.0, 0.0, frozenset({"0.0"})), [(T0, {"delta": -0.0})], "delta", 0, t, True)
    assert fold[5] == frozenset({"0.0"})


@pytest.mark.parametrize("zeros", [(0.0, -0.0), (-0.0, 0.0)])
def test_min_and_max_over_both_zeros_are_the_same_zero_in_every_engine(zeros: tuple[float, float]) -> None:
    """-0.0 and 0.0 tie, so which one a tile keeps depends on the events' order: every engine answers +0.0
    (bit-equal min and max between online and point in time)."""
    from fstore.core import pit
    from fstore.core.functions import Function
    from fstore.core.view_tiles import ViewTiler, evaluate, lookup_in
    from fstore.online.merge import value_of

    plan = compiled("meters")
    view = plan.view("meter_stats")
    rows = [
        {"reading_no": f"z{i}", "phase": "sample", "meter_id": "m0", "read_at": T0 + i, "kwh": 1.0, "volts": v}
        for i, v in enumerate(zeros)
    ]
    t = T0 + DAY // 24  # within both windows
    names = ["volts_min_12h5m", "volts_max_12d"]
    tiles = evaluate(view, lookup_in(ViewTiler(view, "read_at").build(rows), "m0"), t)
    df = pd.DataFrame({"meter_id": ["m0"], "event_timestamp": pd.to_datetime([t], unit="us", utc=True)})
    got = pit.point_in_time(plan, df, [f"meter_stats:{n}" for n in names], table(plan.schema, rows))
    fold = (2, 0.0, zeros[0], zeros[0], 0.0, None)  # a tile keeps the first of two equal values
    values = [tiles[n] for n in names] + [got[n][0] for n in names]
    values += [value_of(Function.MIN, fold), value_of(Function.MAX, fold)]
    from fstore.core.view_snapshot import snapshot

    day = (T0 // DAY + 1) * DAY  # the batch job's daily snapshot (a day boundary; only the 12-day max covers it)
    snap = snapshot(view, build_tiles(view, plan.schema, table(plan.schema, rows)), day).to_pylist()
    values.append(snap[0]["volts_max_12d"])
    assert [math.copysign(1.0, v) for v in values] == [1.0] * 7, values
