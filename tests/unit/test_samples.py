"""Served-response samples: the sampling rate, the files, reading a window back, retention."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from fstore.core.timeutil import DAY, SECOND
from fstore.samples import ResponseSampler, prune, read_samples

pytestmark = pytest.mark.unit

T0 = 1_764_201_600 * SECOND  # 2025-11-27 00:00:00 UTC


def body(as_of: int, users: list[str]) -> dict[str, object]:
    return {
        "as_of_us": as_of,
        "batch_version": "v1",
        "rows": [{"entity": {"user_id": u}, "values": {"user_activity:clicks_1h": i}} for i, u in enumerate(users)],
    }


@pytest.mark.parametrize("rate", [0.5, 0.1, 0.01])
def test_the_share_kept_is_the_rate(rate: float, tmp_path: Path) -> None:
    s = ResponseSampler(tmp_path, rate, seed=3)
    n = 200_000
    kept = sum(s.tick() for _ in range(n))
    expected = n * rate
    assert abs(kept - expected) < 5 * (expected * (1 - rate)) ** 0.5  # 5 sigma of a binomial


def test_gaps_are_not_periodic(tmp_path: Path) -> None:
    s = ResponseSampler(tmp_path, 0.1, seed=1)
    hits = [i for i in range(20_000) if s.tick()]
    gaps = {b - a for a, b in itertools.pairwise(hits)}
    assert len(gaps) > 20 and min(gaps) == 1


def test_rate_one_keeps_everything_and_bad_rates_are_refused(tmp_path: Path) -> None:
    s = ResponseSampler(tmp_path, 1.0)
    assert all(s.tick() for _ in range(100))
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="sample rate"):
            ResponseSampler(tmp_path, bad)


def test_rows_round_trip_by_day_and_window(tmp_path: Path) -> None:
    s = ResponseSampler(tmp_path, 1.0, max_rows=2)
    late = T0 + DAY - 1
    s.add(body(T0 - 1, ["u1"]))  # the day before
    s.add(body(T0 + 5, ["u2", "u3", "u4"]))  # u4 is beyond max_rows
    s.add(body(late, ["u5"]))
    assert s.kept == 4
    assert s.flush() == 4 and s.flush() == 0
    files = sorted(p.relative_to(tmp_path).parts[0] for p in tmp_path.rglob("*.jsonl"))
    assert files == ["2025-11-26", "2025-11-27"]
    got = list(read_samples(tmp_path, T0, T0 + DAY))
    assert [(x.as_of_us, x.entity["user_id"]) for x in got] == [(T0 + 5, "u2"), (T0 + 5, "u3"), (late, "u5")]
    assert got[0].values == {"user_activity:clicks_1h": 0} and got[0].batch_version == "v1"
    assert [x.entity["user_id"] for x in read_samples(tmp_path, T0 - DAY, T0)] == ["u1"]


def test_a_torn_line_is_skipped_and_files_of_every_process_are_read(tmp_path: Path) -> None:
    a, b = ResponseSampler(tmp_path, 1.0), ResponseSampler(tmp_path, 1.0)
    b._name = "other-host-1.jsonl"  # a second worker process writes its own file
    a.add(body(T0 + 1, ["u1"]))
    b.add(body(T0 + 2, ["u2"]))
    a.flush()
    b.flush()
    with open(next(tmp_path.rglob(a._name)), "ab") as f:
        f.write(b'{"as_of_us": 17642016')  # a crash in the middle of a write
    assert sorted(x.entity["user_id"] for x in read_samples(tmp_path, T0, T0 + DAY)) == ["u1", "u2"]


def test_prune_keeps_recent_days(tmp_path: Path) -> None:
    s = ResponseSampler(tmp_path, 1.0)
    for d in range(5):
        s.add(body(T0 + d * DAY, [f"u{d}"]))
    s.flush()
    assert prune(tmp_path, 2, T0 + 4 * DAY) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["2025-11-29", "2025-11-30", "2025-12-01"]
