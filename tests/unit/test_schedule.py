"""The job scheduler: slots, retries decided by exit code, state across restarts, exported metrics."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from datetime import time as dtime
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from fstore.schedule import JobMetrics, Policy, Scheduler, Slots, State, expand, run_process

pytestmark = pytest.mark.unit

T0 = datetime(2026, 11, 27, 0, 30, tzinfo=UTC).timestamp()  # 00:30 UTC


class Fake:
    """Clock, sleep and runner: each attempt takes 10 s and returns the next scripted exit code."""

    def __init__(self, codes: list[int], now: float = T0) -> None:
        self.codes = list(codes)
        self.now = now
        self.sleeps: list[float] = []
        self.commands: list[list[str]] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    def run(self, command: list[str], _timeout: float | None) -> int:
        self.commands.append(command)
        self.now += 10
        return self.codes.pop(0)


def scheduler(fake: Fake, tmp_path: Path, **kw: object) -> Scheduler:
    args: dict[str, object] = {
        "job": "batch",
        "command": ["fstore", "batch", "--date", "{yesterday}"],
        "slots": Slots(at=(dtime(1, 0),)),
        "policy": Policy(retries=3, retry_delay_s=300),
        "state_path": tmp_path / "state.json",
        "clock": fake.clock,
        "sleep": fake.sleep,
        "runner": fake.run,
        "log": lambda _m: None,
        "catch_up": False,
        **kw,
    }
    return Scheduler(**args)  # type: ignore[arg-type]


def value(s: Scheduler, name: str, **labels: str) -> float | None:
    assert s.metrics is not None
    return s.metrics.registry.get_sample_value(name, {"task": "batch", **labels})


def test_slots() -> None:
    daily = Slots(at=(dtime(1, 0), dtime(13, 0)))
    assert daily.next(T0, None) == T0 + 1800
    assert daily.next(T0 + 1800, None) == T0 + 1800 + 12 * 3600  # strictly after
    assert daily.next(T0 + 23 * 3600, None) == T0 + 24.5 * 3600  # tomorrow 01:00
    assert daily.latest(T0) == T0 - 11.5 * 3600  # yesterday 13:00
    every = Slots(every_s=900)
    assert every.next(T0, None) == T0 and every.next(T0, T0 - 100) == T0 + 800 and every.latest(T0) is None
    for bad in ({}, {"at": (dtime(1, 0),), "every_s": 60.0}):
        with pytest.raises(ValueError, match="either"):
            Slots(**bad)  # type: ignore[arg-type]


def test_placeholders_take_the_slot_date() -> None:
    assert expand(["x", "--date", "{yesterday}", "{date}"], T0) == ["x", "--date", "2026-11-26", "2026-11-27"]


def test_exit_code_1_is_retried_with_backoff_until_success(tmp_path: Path) -> None:
    fake = Fake([1, 1, 0])
    s = scheduler(fake, tmp_path)
    s.run(max_slots=1)
    assert fake.commands == [["fstore", "batch", "--date", "2026-11-26"]] * 3
    assert fake.sleeps == [60.0] * 30 + [300, 600]  # until 01:00 (a clock check a minute), then the backoff
    assert value(s, "fstore_schedule_runs_total", outcome="retry") == 2
    assert value(s, "fstore_schedule_runs_total", outcome="success") == 1
    assert value(s, "fstore_schedule_last_exit_code") == 0 and value(s, "fstore_schedule_attempts") == 3
    assert s.state.last_success == fake.now == value(s, "fstore_schedule_last_success_timestamp_seconds")


@pytest.mark.parametrize("code", [2, 64, 78])
def test_a_data_quality_or_usage_failure_is_not_retried(code: int, tmp_path: Path) -> None:
    fake = Fake([code])
    s = scheduler(fake, tmp_path)
    s.run(max_slots=1)
    assert len(fake.commands) == 1
    assert value(s, "fstore_schedule_runs_total", outcome="failed") == 1
    assert value(s, "fstore_schedule_last_exit_code") == code
    assert s.state.last_success is None and s.state.last_slot == T0 + 1800


def test_retries_are_bounded_and_signals_are_retried(tmp_path: Path) -> None:
    fake = Fake([-9, 124, 1, 1])
    s = scheduler(fake, tmp_path)
    assert s.run_slot(T0) == 1
    assert len(fake.commands) == 4 and fake.sleeps == [300, 600, 1200]
    assert value(s, "fstore_schedule_runs_total", outcome="failed") == 1
    assert value(s, "fstore_schedule_runs_total", outcome="retry") == 3


def test_state_survives_a_restart_and_a_missed_slot_is_caught_up(tmp_path: Path) -> None:
    fake = Fake([0, 0])
    s = scheduler(fake, tmp_path)
    s.run(max_slots=1)  # the 01:00 slot
    done = s.state.last_success
    fake.now = T0 + 25 * 3600  # down through the next 01:00 slot, back at 01:30 the day after
    again = scheduler(fake, tmp_path)
    assert again.state.last_success == done == value(again, "fstore_schedule_last_success_timestamp_seconds")
    assert again.first_slot() == fake.now + 23.5 * 3600  # without catch-up: the next 01:00
    again = scheduler(fake, tmp_path, catch_up=True)
    assert again.first_slot() == fake.now  # missed: run now
    again.run(max_slots=1)
    assert fake.commands[-1][-1] == "2026-11-27" and len(fake.commands) == 2
    assert scheduler(fake, tmp_path, catch_up=True).first_slot() == T0 + 48 * 3600 + 1800  # nothing missed
    fresh = scheduler(fake, tmp_path, catch_up=True, state_path=None)
    assert fresh.first_slot() == fake.now  # never ran: run at start


def test_a_corrupt_state_file_starts_afresh(tmp_path: Path) -> None:
    (tmp_path / "state.json").write_text("{not json")
    assert State.load(tmp_path / "state.json") == State()


def test_textfiles_are_served_with_the_job_metrics(tmp_path: Path) -> None:
    prom = tmp_path / "batch.prom"
    prom.write_text(
        "# HELP fstore_batch_dq_status x\n# TYPE fstore_batch_dq_status gauge\nfstore_batch_dq_status 2.0\n"
    )
    m = JobMetrics("batch", [prom, tmp_path / "missing.prom"])
    text = generate_latest(m.registry).decode()
    assert "fstore_batch_dq_status 2.0" in text
    assert 'fstore_schedule_runs_total{outcome="failed",task="batch"} 0.0' in text


def test_run_process_exit_codes() -> None:
    py = sys.executable
    assert run_process([py, "-c", "raise SystemExit(3)"], None) == 3
    assert run_process([py, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"], None) == -9
    assert run_process([py, "-c", "import time; time.sleep(30)"], 0.5) == 124


def test_a_failed_slot_is_still_reported_after_a_restart(tmp_path: Path) -> None:
    """The slot that failed is not run again, so a restarted scheduler must keep serving its exit code:
    FstoreBatchFailed needs fstore_schedule_last_exit_code (> 0) and fstore_schedule_running (0)."""
    fake = Fake([78])
    s = scheduler(fake, tmp_path)
    s.run(max_slots=1)
    again = scheduler(fake, tmp_path)
    assert value(again, "fstore_schedule_last_exit_code") == 78
    assert value(again, "fstore_schedule_running") == 0
    assert value(again, "fstore_schedule_last_run_timestamp_seconds") == T0 + 1800 + 10
    assert again.first_slot() > fake.now  # the failed slot is not run again
