"""Point-in-time std/var of a window whose values are identical, or nearly so, read from a real Delta
``raw_events`` through Feast's ``get_historical_features`` (fstore offline store), against the brute force of
docs/design.md §3 (1e-9 relative): the std of identical values is 0 — as online, where tiles merge exactly —
however long the history the request reads. The engine's long-double prefix sums over that history carry
rounding noise far above such a window's spread, and the square root of that noise was served instead (a
probe found three identical values with a std of 1.3e-08 once another row of the request reached back a month).
"""

from __future__ import annotations

import random
from pathlib import Path

import pandas as pd
import pytest

from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR
from tests.support.pit import BASE, Row, expected
from tests.support.plan_raw_events import append, feast_repo
from tests.support.repos import ROOT as REPOS
from tests.support.repos import compiled

pytestmark = pytest.mark.integration

PLAN = compiled("rides")
VIEW = "driver_performance"
FEATURES = ("fare_std_2d", "fare_var_2d", "fare_mean_2d")


def completed(uid: str, ts: int, distance_km: float, rate_per_km: float) -> Row:
    """A completed ride of driver d0 (fare = distance × rate × surge 1.5)."""
    return {"uid": uid, "kind": "completed", "zone_id": "z0", "ts": ts, "driver_id": "d0", "rider": "r0",
            "airport": False, "distance_km": distance_km, "rate_per_km": rate_per_km, "surge": 1.5}  # fmt: skip


def test_std_of_identical_values_is_zero_whatever_history_the_request_reads(tmp_path: Path) -> None:
    from feast import FeatureStore

    rng = random.Random(5)
    span = 30 * DAY
    # a month of widely spread fares (large prefix sums of squares), then 4 equal fares, then 4 nearly equal
    history = [completed(f"h{i}", BASE + i * (span // 800), rng.uniform(0.5, 400.0), rng.uniform(0.8, 30.0))
               for i in range(800)]  # fmt: skip
    end = BASE + span + 3 * DAY
    flat = [completed(f"f{i}", end - 5 * HOUR + i * HOUR, 12.5, 1.6) for i in range(4)]
    near = [completed(f"n{i}", end + DAY - 5 * HOUR + i * HOUR, 12.5 + i * 1e-5, 1.6) for i in range(4)]
    events = history + flat + near
    copies = [(end + 2 * DAY + i, f"c{i:06d}", e) for i, e in enumerate(events)]
    append(str(tmp_path / "data" / "raw_events"), PLAN.schema, copies)
    repo = feast_repo(REPOS / "rides", tmp_path / "repo", tmp_path / "data")
    times = [BASE + DAY, end, end + DAY, BASE + 20 * DAY, end]  # the first row reads from the month's start
    df = pd.DataFrame(
        {
            "driver_id": ["d0"] * len(times),
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
            "label": range(len(times)),
        }
    )
    got = (
        FeatureStore(repo_path=str(repo))
        .get_historical_features(entity_df=df, features=[f"{VIEW}:{n}" for n in FEATURES])
        .to_df()
    )

    assert got["label"].tolist() == list(range(len(times)))
    assert got["fare_std_2d"][1] == 0.0 and got["fare_var_2d"][1] == 0.0 and got["fare_std_2d"][4] == 0.0
    want = expected(PLAN, VIEW, events, ["d0"] * len(times), times)
    assert 0 < float(want[2]["fare_std_2d"]) < 1e-3  # type: ignore[arg-type]  # nearly equal: tiny, not 0
    for name in FEATURES:
        for i, row in enumerate(want):
            g = got[name][i]
            g = None if pd.isna(g) else float(g)
            assert isclose(g, row[name]), f"{name} row {i}: engine {g!r} != brute force {row[name]!r}"
