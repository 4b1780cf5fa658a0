"""Feature names with hyphens, which the compiler accepts for views, measures and features (docs/features.md),
in a ratio too: `fstore.ratio: "cancellations-2d / trips-2d"` compiles — it was refused as not naming two
aggregations of the view while listing both as known — and its point-in-time values from a real Delta
``raw_events``, through Feast's ``get_historical_features`` (fstore offline store), equal the brute force of
docs/design.md §3 (null when the denominator is 0)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fstore import plan_source
from fstore.core.aggregates import isclose
from fstore.core.plan import RatioFeature
from fstore.core.timeutil import DAY
from tests.support.pit import BASE, expected, query_times
from tests.support.plan_raw_events import append, feast_repo
from tests.support.repos import ROOT as REPOS
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.integration

VIEW = "driver_performance"
RENAMES = {"trips_2d": "trips-2d", "cancellations_2d": "cancellations-2d"}


def test_a_ratio_of_hyphenated_features_compiles_and_equals_the_brute_force(tmp_path: Path) -> None:
    from feast import FeatureStore

    source = tmp_path / "src"
    shutil.copytree(REPOS / "rides", source, ignore=shutil.ignore_patterns("data", "__pycache__"))
    text = (source / "features.py").read_text()
    for old, new in RENAMES.items():
        assert old in text
        text = text.replace(old, new)
    (source / "features.py").write_text(text)
    plan = plan_source.compile_dir(source)
    ratio = next(f for f in plan.view(VIEW).features if f.name == "cancellation_rate_2d")
    assert isinstance(ratio, RatioFeature) and (ratio.numerator, ratio.denominator) == ("cancellations-2d", "trips-2d")

    span = 10 * DAY
    events = rides(1500, BASE, span, seed=21)
    append(str(tmp_path / "data" / "raw_events"), plan.schema, [(BASE + span + i, f"{i:06d}", e)
                                                                for i, e in enumerate(events)])  # fmt: skip
    repo = feast_repo(source, tmp_path / "repo", tmp_path / "data")
    rng = np.random.default_rng(3)
    times = query_times(rng, plan, events, 200, span)
    drivers = [f"d{rng.integers(8)}" for _ in times]  # d6, d7: never seen
    df = pd.DataFrame({"driver_id": drivers, "event_timestamp": pd.to_datetime(times, unit="us", utc=True)})
    names = ["trips-2d", "cancellations-2d", "cancellation_rate_2d"]
    got = (
        FeatureStore(repo_path=str(repo))
        .get_historical_features(entity_df=df, features=[f"{VIEW}:{n}" for n in names])
        .to_df()
    )

    want = expected(plan, VIEW, events, drivers, times)
    assert sum(1 for w in want if w["cancellation_rate_2d"] is None) > 5  # denominators of 0 are exercised
    assert sum(1 for w in want if w["cancellation_rate_2d"]) > 50
    for name in names:
        for i, row in enumerate(want):
            g = got[name][i]
            g = None if pd.isna(g) else float(g)
            assert isclose(g, row[name]), f"{name} row {i}: engine {g!r} != brute force {row[name]!r}"
