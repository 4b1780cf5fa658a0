"""The boundary table (tests/support/boundary.py) through the core's implementations: the scalar tiles,
the pandas tiles and snapshots, and the point-in-time kernels, each against the brute force."""

from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pytest

from fstore.core import pit
from fstore.core.aggregates import Value
from fstore.core.dedupe import first_ingested_arrow
from fstore.core.plan import Plan
from jobs.batch.plan import size_horizons
from tests.support.boundary import CASES, Case, assert_expected, case_ids, mismatches, raw_table, tiles_from_rows
from tests.support.legacy import tiles, tiles_frame
from tests.support.legacy.features import RatioFeature
from tests.support.legacy_view import plan_view
from tests.support.repos import compiled

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_the_brute_force_agrees_with_the_point_of_each_row(case: Case) -> None:
    bad = mismatches(case.expected(), case.point)
    assert case.point and not bad, f"the row's stated values are not what the brute force computes: {bad}"


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_core_tiles(case: Case) -> None:
    assert_expected(case, tiles.values_at(case.view, case.winners, case.entity, case.t), "tiles.values_at")
    # every tile a store may hold at t, also the ones from t on: evaluate must leave those out
    stored = tiles.build_tiles(case.view, case.tileable())
    assert_expected(case, tiles.evaluate(case.view, tiles.lookup_in(stored, case.entity), case.t), "tiles.evaluate")


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_pandas_tiles_and_snapshot(case: Case) -> None:
    """Tiles of [horizon, t) from all copies, as the batch job builds them (first-ingested copies, the
    batch plan's horizons, ``end`` = t), evaluated at t; on the grid, the snapshot too."""
    events = first_ingested_arrow(raw_table(case.copies))
    events = events.set_column(
        events.schema.get_field_index("event_time"), "event_time", events.column("event_time").cast(pa.int64())
    )
    table = tiles_frame.build_tiles(case.view, events, size_horizons(case.view, case.t), case.t)  # type: ignore[arg-type]
    lookup = tiles.lookup_in(tiles_from_rows(case.view, table.to_pylist()), case.entity)
    assert_expected(case, tiles.evaluate(case.view, lookup, case.t), "tiles_frame.build_tiles")
    if case.on_grid():
        rows = tiles_frame.snapshot(case.view, table, case.t).to_pylist()
        row = next((r for r in rows if r[case.view.entity.join_key] == case.entity), None)
        empty: dict[str, Value] = {
            f.name: 0 if f.dtype == "int64" else (0.0 if getattr(f, "agg", None) == "sum" else None)
            for f in case.view.features
        }
        got = {n: row[n] for n in case.view.feature_names} if row else empty
        assert_expected(case, got, "tiles_frame.snapshot")


def _python(values: np.ndarray[Any, Any], null: np.ndarray[Any, Any] | None, dtype: str) -> Value:
    if null is not None and bool(null[0]):
        return None
    return int(values[0]) if dtype == "int64" else float(values[0])


@pytest.mark.parametrize("case", CASES, ids=case_ids())
def test_point_in_time_kernels(case: Case) -> None:
    """pit.dedupe of all copies, then the kernels for one entity row at t."""
    view = plan_view(case.view)
    plan = Plan(compiled("ecommerce").schema, (view.entity,), (view,))
    request = pit.resolve(plan, [view.name])
    rows = pa.table({view.entity.join_key: [case.entity], "event_timestamp": pa.array([case.t], pa.timestamp("us"))})
    cols = pit.compute(rows, request, pit.dedupe(raw_table(case.copies), plan.schema.id_field))
    got = {f.name: _python(*cols[f.name], "float64" if isinstance(f, RatioFeature) else f.dtype) for f in view.features}
    assert_expected(case, got, "pit kernels")
