"""Daily feature snapshots of any plan (the batch job's ``feature_snapshots``) equal the reference
evaluation over the scalar tiles, for every function (docs/design.md §3)."""

from __future__ import annotations

import math
from datetime import UTC, datetime

import pytest

from fstore.core.plan import Plan
from fstore.core.tile_state import Value
from fstore.core.timeutil import DAY, to_micros
from fstore.core.view_snapshot import snapshot
from fstore.core.view_tiles import ViewTiler, evaluate, lookup_in
from fstore.core.view_tiles_frame import build_tiles
from tests.support.plan_rows import arrow_table
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.unit

T0 = to_micros(datetime(2026, 3, 1, tzinfo=UTC))


def same(a: Value, b: Value) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-12, abs_tol=1e-12)


def check(plan: Plan, rows: list[dict[str, object]], t: int) -> int:
    checked = 0
    ts = plan.schema.timestamp_field
    before = [r for r in rows if r[ts] < t]  # type: ignore[operator]
    for view in plan.views:
        key = view.entity.join_key
        snap = snapshot(view, build_tiles(view, plan.schema, arrow_table(plan.schema, before)), t).to_pylist()
        tiles = ViewTiler(view, ts).build(before)
        entities = sorted({k.entity for k in tiles})
        got = {r[key]: r for r in snap}
        assert list(got) == sorted(got) and set(got) <= set(entities)
        for entity in entities:
            want = evaluate(view, lookup_in(tiles, entity), t)
            if entity not in got:  # no event in any window: every count 0, nothing else
                assert all(v in (0, 0.0, None) for v in want.values()), (entity, want)
                continue
            row = got[entity]
            assert row["event_timestamp"] == t
            for name, v in want.items():
                assert same(row[name], v), (view.name, entity, name, row[name], v)
                assert type(row[name]) is type(v) or row[name] is None or v is None, (name, row[name], v)
                checked += 1
    return checked


def test_rides_snapshot_equals_the_reference_for_every_function() -> None:
    rows = rides(3_000, T0, 40 * DAY, seed=5)
    plan = compiled("rides")
    assert check(plan, rows, T0 + 35 * DAY) > 100
    assert check(plan, rows, T0 + 41 * DAY) > 100  # past the last event: short windows empty


def test_snapshot_off_the_grid_is_refused() -> None:
    plan = compiled("rides")
    view = plan.view("driver_performance")
    tiles = build_tiles(view, plan.schema, arrow_table(plan.schema, rides(10, T0, DAY, seed=1)))
    with pytest.raises(ValueError, match="tile boundary"):
        snapshot(view, tiles, T0 + 7)
