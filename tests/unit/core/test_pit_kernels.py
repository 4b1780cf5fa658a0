"""Edge cases of the point-in-time kernels (fstore/core/pit_kernels.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fstore.core.pit_kernels import SortedMeasure

pytestmark = pytest.mark.unit


def test_a_measure_without_events_gives_empty_ranges_for_every_statistic() -> None:
    """No event of a measure in the range read (e.g. a filter nothing passed): std/var/min/max/sum see
    empty windows (0 and null by the caller's rules), never an error."""
    none = np.empty(0, np.int64)
    sm = SortedMeasure(none, none, np.empty(0, np.float64), 3)
    lo = hi = np.zeros(4, np.int64)
    assert sm.m2(lo, hi).tolist() == [0.0] * 4
    assert sm.sums(lo, hi).tolist() == [0.0] * 4
    values, null = sm.extreme(lo, hi, minimum=True)
    assert null.all() and np.isnan(values).all()
    assert sm.position(np.array([0, 1, -1]), np.array([5, 6, 7])).tolist() == [0, 0, 0]
    assert sm.distinct(lo, hi, np.empty(0, np.int64)).tolist() == [0] * 4


def test_no_events_at_all_gives_every_row_its_empty_window_values(tmp_path: Path) -> None:
    """raw_events missing or empty: every row kept, counts/sums 0, count_distinct 0, the rest null — for
    every function of the rides repository (std/var and count_distinct crashed here)."""
    import pandas as pd

    from fstore.core.functions import Function
    from fstore.core.pit import point_in_time
    from fstore.offline.local import read_events
    from tests.support.repos import compiled

    plan = compiled("rides")
    events = read_events(str(tmp_path / "none"), (0, 1), plan=plan)
    for view in plan.views:
        key = view.entity.join_key
        rows = pd.DataFrame({key: ["a", "b", "a"], "event_timestamp": pd.to_datetime([1, 2, 3], unit="D", utc=True)})
        out = point_in_time(plan, rows, [view.name], events)
        assert list(out[key]) == ["a", "b", "a"]
        for f in view.windowed:
            zero = f.function in (Function.COUNT, Function.SUM, Function.COUNT_DISTINCT)
            assert [None if pd.isna(x) else x for x in out[f.name]] == ([0, 0, 0] if zero else [None] * 3), f.name


@pytest.mark.parametrize("block", [1, 7, 64])
def test_blocked_search_equals_numpy_searchsorted(monkeypatch: pytest.MonkeyPatch, block: int) -> None:
    """Ascending needles with repeats, below and above every key, blocks cut inside runs of equal keys; and
    needles out of order (searched the plain way)."""
    from fstore.core import pit_kernels

    monkeypatch.setattr(pit_kernels, "SEARCH_BLOCK", block)
    rng = np.random.default_rng(block)
    keys = np.sort(rng.integers(0, 300, 2000))  # many equal keys
    for needles in (np.sort(rng.integers(-20, 320, 3001)), rng.integers(-20, 320, 3001), np.full(600, 150)):
        got = pit_kernels.search_sorted(keys, needles)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, np.searchsorted(keys, needles))


def brute_m2(values: list[float]) -> float:
    mean = sum(values) / len(values)
    return sum((v - mean) ** 2 for v in values)


def test_std_var_of_an_entity_after_one_whose_squares_overflow_stay_exact() -> None:
    """One entity's deviations past ~1e154 overflow the shared prefix of squares to inf: the ranges of every
    entity sorted after it must still get their own m2 (they were NaN), as online and the brute force give."""
    codes = np.array([0, 0, 1, 1, 1], np.int64)
    times = np.array([1, 2, 1, 2, 3], np.int64)
    values = np.array([0.0, 1e160, 3.0, 3.0, 4.0])
    sm = SortedMeasure(codes, times, values, 2)
    got = sm.m2(np.array([2, 2, 3]), np.array([5, 4, 5]))
    assert np.isfinite(got).all(), got
    assert got.tolist() == pytest.approx([brute_m2([3.0, 3.0, 4.0]), 0.0, brute_m2([3.0, 4.0])], rel=1e-12)


def test_std_var_ranges_recomputed_in_many_chunks_equal_the_brute_force(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ranges of a tiny spread next to a large prefix are recomputed directly, a chunk of values at a time: with
    chunks of 3 values each range still gets its own exact m2."""
    import fstore.core.pit_kernels as kernels

    monkeypatch.setattr(kernels, "_DIRECT_CHUNK", 3)
    rng = np.random.default_rng(5)
    big = list(rng.normal(0.0, 1e6, 50))  # entity 0: a wide spread makes the shared prefix large
    small = [[100.0 + 1e-4 * float(x) for x in rng.normal(size=6)] for _ in range(8)]  # entities 1..8: tiny
    codes = np.array([0] * 50 + [1 + i for i in range(8) for _ in range(6)], np.int64)
    times = np.array(list(range(50)) + list(range(6)) * 8, np.int64)
    sm = SortedMeasure(codes, times, np.array(big + [v for s in small for v in s]), 9)
    lo = np.array([50 + 6 * i + a for i in range(8) for a in (0, 1)], np.int64)
    hi = np.array([50 + 6 * i + b for i in range(8) for b in (6, 4)], np.int64)
    want = [brute_m2((big + [v for s in small for v in s])[a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    assert sm.m2(lo, hi).tolist() == pytest.approx(want, rel=1e-9)


def test_sums_of_small_windows_after_an_entity_of_huge_values_stay_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The prefix sums run over every entity's events: after one entity's values of 9e14 and a product of 1e30
    (both valid events), the windows of small values sorted later read a difference of two prefixes near 1e30,
    which has no correct digit left (probe-repo2: a 12-day sum of 1750.26 came out 0.0, and a -1e15 score put
    a sum of -134.086 at -134.0859375). Each must be its own exact sum, also when recomputed in small chunks."""
    import math

    import fstore.core.pit_kernels as kernels

    monkeypatch.setattr(kernels, "_DIRECT_CHUNK", 3)
    rng = np.random.default_rng(11)
    huge = [9e14, 1e30, -1e15, 3.5]  # entity 0
    small = [[round(float(x), 2) for x in rng.uniform(-500, 900, 5)] for _ in range(6)]  # entities 1..6
    values = huge + [v for s in small for v in s]
    codes = np.array([0] * 4 + [1 + i for i in range(6) for _ in range(5)], np.int64)
    times = np.array(list(range(4)) + list(range(5)) * 6, np.int64)
    sm = SortedMeasure(codes, times, np.array(values), 7)
    lo = np.array([4 + 5 * i + a for i in range(6) for a in (0, 2, 4)] + [0, 4, 7], np.int64)
    hi = np.array([4 + 5 * i + b for i in range(6) for b in (5, 4, 4)] + [4, 4, 9], np.int64)
    want = [math.fsum(values[a:b]) for a, b in zip(lo.tolist(), hi.tolist(), strict=True)]
    got = sm.sums(lo, hi).tolist()
    assert got == pytest.approx(want, rel=1e-12, abs=0.0), [(g, w) for g, w in zip(got, want, strict=True) if g != w]
