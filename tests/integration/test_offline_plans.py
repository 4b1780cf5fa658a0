"""Training data for a plan that shares nothing with the example (tests/support/repos/rides), from a real
Delta ``raw_events``: the local engine, Feast's ``get_historical_features`` through the fstore offline store
and the Spark engine, against the brute force of docs/design.md §3 over the brute-force de-duplication of
everything stored — every function (std/var, exact count_distinct), the ratio, empty windows, duplicate
copies won and lost, and files written before an optional field existed (its values read as null)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fstore.core.timeutil import DAY
from fstore.offline import local as offline
from tests.support.pit import BASE, Row, assert_frame_matches, expected, query_times
from tests.support.plan_raw_events import Copy, append, feast_repo, first_ingested
from tests.support.repos import ROOT as REPOS
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.integration

PLAN = compiled("rides")
SPAN = 35 * DAY
NOW = BASE + SPAN + DAY
VIEWS = [v.name for v in PLAN.views]


@pytest.fixture(scope="module")
def stored(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[Row]]]:
    """raw_events on disk and the de-duplicated events it stands for."""
    root = tmp_path_factory.mktemp("rides")
    uri = str(root / "data" / "raw_events")
    events = rides(2000, BASE, SPAN, seed=13)
    old = [{**e, "airport": None} for e in events[:700]]  # written before `airport` was declared
    append(uri, PLAN.schema, [(NOW + i, f"a{i:06d}", e) for i, e in enumerate(old)], leave_out=["airport"])
    append(uri, PLAN.schema, [(NOW + 700 + i, f"b{i:06d}", e) for i, e in enumerate(events[700:])])
    # the raw sink's copies: changed payloads ingested before (win), at the same instant (hash decides), after
    copies: list[Copy] = []
    for i, e in enumerate(events[300:600]):
        changed = {**e, "zone_id": "z9", "tip": 1.25} if e["kind"] == "tipped" else {**e, "driver_id": "d9"}
        at = [NOW - 5, NOW + 300 + i, NOW + 10**6][i % 3]
        copies.append((at, f"{i:06d}" if i % 3 == 1 else f"z{i:05d}", changed))
    append(uri, PLAN.schema, copies)
    stored = [(NOW + i, f"a{i:06d}", e) for i, e in enumerate(old)]
    stored += [(NOW + 700 + i, f"b{i:06d}", e) for i, e in enumerate(events[700:])]
    winners = first_ingested([*stored, *copies], PLAN.schema.id_field)
    assert sum(1 for w in winners if w.get("driver_id") == "d9" or w.get("zone_id") == "z9") > 100  # copies won
    yield root, winners


def entity_frame(events: list[Row], n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = query_times(rng, PLAN, events, n, SPAN)
    drivers = [f"d{rng.integers(11)}" for _ in range(n)]  # d6..d8, d10: never seen
    zones = [f"z{rng.integers(11)}" for _ in range(n)]
    drivers[5:10], zones[5:10], times[5:10] = drivers[0:5], zones[0:5], times[0:5]  # duplicate rows
    return pd.DataFrame(
        {
            "zone_id": zones,
            "label": rng.integers(0, 2, n),
            "driver_id": drivers,
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )


def assert_brute(got: pd.DataFrame, events: list[Row], df: pd.DataFrame) -> None:
    assert len(got) == len(df)
    pd.testing.assert_frame_equal(got[list(df.columns)].reset_index(drop=True), df, check_dtype=False)
    times = [int(t.value // 1000) for t in df["event_timestamp"]]
    for view in VIEWS:
        key = PLAN.view(view).entity.join_key
        assert_frame_matches(got, PLAN, view, expected(PLAN, view, events, list(df[key]), times), f"{view}__")


def test_local_engine_and_feast_equal_brute_force(stored: tuple[Path, list[Row]], tmp_path: Path) -> None:
    from feast import FeatureStore

    root, events = stored
    df = entity_frame(events, 500, seed=1)
    uri = str(root / "data" / "raw_events")
    local = offline.get_historical_features(df, VIEWS, raw_uri=uri, plan=PLAN, full_feature_names=True)
    assert_brute(local, events, df)
    assert (local["driver_performance__fare_std_2d"].notna()).sum() > 50
    assert (local["driver_performance__riders_30d"] > 1).sum() > 50
    assert local["driver_performance__riders_30d"].dtype == np.int64

    repo = feast_repo(REPOS / "rides", tmp_path / "rides_repo", root / "data")
    refs = [f"{v.name}:{f}" for v in PLAN.views for f in v.feature_names]
    job = FeatureStore(repo_path=str(repo)).get_historical_features(
        entity_df=df, features=refs, full_feature_names=True
    )
    feast_df = job.to_df()
    assert_brute(feast_df, events, df)
    pd.testing.assert_frame_equal(feast_df[local.columns], local, check_dtype=False)


def test_spark_engine_equals_local(stored: tuple[Path, list[Row]]) -> None:
    from fstore.offline.spark import spark_session

    root, events = stored
    df = entity_frame(events, 80, seed=2)
    uri = str(root / "data" / "raw_events")
    spark = spark_session("fstore-test-offline")
    got = offline.get_historical_features(
        df, VIEWS, raw_uri=uri, engine="spark", plan=PLAN, full_feature_names=True, spark=spark, buckets=2
    )
    assert_brute(got, events, df)
    local = offline.get_historical_features(df, VIEWS, raw_uri=uri, plan=PLAN, full_feature_names=True)
    pd.testing.assert_frame_equal(got, local)
