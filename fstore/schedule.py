"""A small cron for fstore's jobs: run a command at fixed UTC times or every N seconds, retry it by its
exit code, and export what happened as Prometheus metrics (``fstore schedule``).

Why not cron: cron neither retries nor tells anyone, and container images rarely ship one. This loop
runs one command (a subprocess) per slot and decides by the exit code:

==========  ===========================================================  =====================
exit code   meaning (``fstore batch``)                                     scheduler
==========  ===========================================================  =====================
0           published (or nothing to publish)                              success
1           the run failed (Spark, Redis, Delta, ...): may pass on retry   retry with backoff
2           the data-quality gate failed: the data must be fixed first     failed, no retry
64, 78      usage / configuration error                                    failed, no retry
< 0, 124    killed by a signal, or ``--timeout`` passed                    retry with backoff
==========  ===========================================================  =====================

The codes to retry are a :class:`Policy` (``--retry-on``). The state (last success, last slot run) is kept
in a small JSON file, so a restarted scheduler still knows how old the last success is, and runs a slot
it missed while it was down (``catch_up``). Placeholders ``{date}`` and ``{yesterday}`` in the command
become the slot's UTC date and the day before (the nightly batch runs ``--date {yesterday}``).

Metrics (label ``task``, the job's name): ``fstore_schedule_runs_total{outcome}`` (success / retry / failed),
``fstore_schedule_last_exit_code``, ``fstore_schedule_last_run_timestamp_seconds``,
``fstore_schedule_last_success_timestamp_seconds``, ``fstore_schedule_last_duration_seconds``,
``fstore_schedule_attempts`` (of the last slot), ``fstore_schedule_running``,
``fstore_schedule_next_run_timestamp_seconds``; plus the content of the job's own Prometheus textfiles
(``textfiles``: the batch writes ``metrics/batch.prom``), read at each scrape.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

TIMEOUT_CODE = 124  # what coreutils' timeout returns


@dataclass(frozen=True)
class Policy:
    """How exit codes are handled."""

    retries: int = 3
    retry_delay_s: float = 300.0  # doubled after each retry, capped at max_delay_s
    max_delay_s: float = 3600.0
    retry_codes: frozenset[int] = frozenset({1, TIMEOUT_CODE})

    def retryable(self, code: int) -> bool:
        """Whether a failed attempt with this exit code is worth another try (signals always are)."""
        return code < 0 or code in self.retry_codes

    def delay(self, attempt: int) -> float:
        """Wait before attempt ``attempt + 1`` (attempt 1 is the first)."""
        return min(self.retry_delay_s * 2.0 ** (attempt - 1), self.max_delay_s)


@dataclass(frozen=True)
class Slots:
    """When to run: at fixed UTC times of day, or every ``every_s`` seconds (from the last start)."""

    at: tuple[dtime, ...] = ()
    every_s: float | None = None

    def __post_init__(self) -> None:
        if bool(self.at) == (self.every_s is not None):
            raise ValueError("give either times of day (--at) or an interval (--every)")

    def latest(self, now: float) -> float | None:
        """The most recent daily slot at or before ``now`` (epoch seconds); ``None`` for intervals."""
        if not self.at:
            return None
        day = datetime.fromtimestamp(now, UTC).date()
        for d in (day, day - timedelta(days=1)):
            due = [datetime.combine(d, t, UTC).timestamp() for t in self.at]
            past = [s for s in due if s <= now]
            if past:
                return max(past)
        return None  # unreachable with at least one time

    def next(self, now: float, last_start: float | None) -> float:
        """The next slot strictly after ``now`` (daily), or ``last_start + every`` (interval; now if never run)."""
        if self.every_s is not None:
            return now if last_start is None else max(now, last_start + self.every_s)
        day = datetime.fromtimestamp(now, UTC).date()
        for d in (day, day + timedelta(days=1)):
            due = sorted(datetime.combine(d, t, UTC).timestamp() for t in self.at)
            later = [s for s in due if s > now]
            if later:
                return later[0]
        raise AssertionError("unreachable")


def expand(command: Sequence[str], slot: float) -> list[str]:
    """``command`` with ``{date}`` and ``{yesterday}`` replaced by the slot's UTC date and the day before."""
    day = datetime.fromtimestamp(slot, UTC).date()
    return [
        a.replace("{date}", day.isoformat()).replace("{yesterday}", (day - timedelta(days=1)).isoformat())
        for a in command
    ]


@dataclass
class State:
    """What the scheduler remembers across restarts (a JSON file)."""

    last_success: float | None = None
    last_slot: float | None = None  # the last slot whose run finished (any outcome)
    last_start: float | None = None
    # the last slot's outcome: a restart serves it again, so FstoreBatchFailed does not forget a failed slot
    # that no later attempt will retry (probe-ops: a restart dropped fstore_schedule_last_exit_code)
    last_exit_code: int | None = None
    last_run: float | None = None

    @classmethod
    def load(cls, path: Path | None) -> State:
        if path is None or not path.exists():
            return cls()
        try:
            return cls(**json.loads(path.read_text()))
        except (ValueError, TypeError):
            return cls()  # a corrupt state file: start afresh, loudly in the metrics (no last success)

    def save(self, path: Path | None) -> None:
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.__dict__))
        os.replace(tmp, path)


class TextfileCollector(Collector):
    """Serves Prometheus textfiles written by the job (read at each scrape; a missing file is skipped)."""

    def __init__(self, paths: Iterable[Path]) -> None:
        self.paths = list(paths)

    def collect(self) -> Iterator[Metric]:
        for path in self.paths:
            try:
                text = path.read_text()
            except OSError:
                continue
            try:
                yield from text_string_to_metric_families(text)
            except ValueError:  # half-written by a foreign writer: skip this scrape
                continue


class JobMetrics:
    """The scheduler's metrics for one job."""

    def __init__(self, job: str, textfiles: Iterable[Path] = ()) -> None:
        self.registry = CollectorRegistry()
        # label `task`, not `job`: Prometheus sets `job` to the scrape job's name
        r, labels = self.registry, ["task"]
        self.runs = Counter("fstore_schedule_runs_total", "Attempts by outcome", ["task", "outcome"], registry=r)
        self.exit_code = Gauge("fstore_schedule_last_exit_code", "Exit code of the last attempt", labels, registry=r)
        self.last_run = Gauge(
            "fstore_schedule_last_run_timestamp_seconds", "End of the last attempt", labels, registry=r
        )
        self.last_success = Gauge(
            "fstore_schedule_last_success_timestamp_seconds", "End of the last successful run", labels, registry=r
        )
        self.duration = Gauge(
            "fstore_schedule_last_duration_seconds", "Duration of the last attempt", labels, registry=r
        )
        self.attempts = Gauge("fstore_schedule_attempts", "Attempts made for the last slot", labels, registry=r)
        self.running = Gauge("fstore_schedule_running", "1 while an attempt runs", labels, registry=r)
        self.next_run = Gauge("fstore_schedule_next_run_timestamp_seconds", "Next scheduled slot", labels, registry=r)
        for outcome in ("success", "retry", "failed"):
            self.runs.labels(job, outcome)
        self.job = job
        self.registry.register(TextfileCollector(textfiles))


Runner = Callable[[list[str], float | None], int]


def run_process(command: list[str], timeout_s: float | None) -> int:
    """Run ``command``; its exit code (negative: killed by that signal; 124: timed out, then killed)."""
    proc = subprocess.Popen(command, start_new_session=True)
    try:
        return proc.wait(timeout_s)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        return TIMEOUT_CODE
    except BaseException:  # the scheduler is stopping: take the job down with it
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
        raise


@dataclass
class Scheduler:
    """The loop (see the module docstring). Time, sleeping and running are injected for tests."""

    job: str
    command: list[str]
    slots: Slots
    policy: Policy = field(default_factory=Policy)
    state_path: Path | None = None
    timeout_s: float | None = None
    catch_up: bool = True
    metrics: JobMetrics | None = None
    clock: Callable[[], float] = time.time
    sleep: Callable[[float], object] | None = None  # default: wait on `stop`, so a stop ends a wait at once
    runner: Runner = run_process
    log: Callable[[str], None] = print
    stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self.state = State.load(self.state_path)
        self.metrics = self.metrics or JobMetrics(self.job)
        self._sleep = self.sleep or self.stop.wait
        if self.state.last_success is not None:
            self.metrics.last_success.labels(self.job).set(self.state.last_success)
        if self.state.last_exit_code is not None:
            self.metrics.exit_code.labels(self.job).set(self.state.last_exit_code)
            self.metrics.running.labels(self.job).set(0)
        if self.state.last_run is not None:
            self.metrics.last_run.labels(self.job).set(self.state.last_run)

    def first_slot(self) -> float:
        """The first slot to run: a daily slot missed while down (catch-up), else the next one."""
        now = self.clock()
        latest = self.slots.latest(now)
        if self.catch_up and latest is not None and (self.state.last_slot is None or self.state.last_slot < latest):
            return now
        return self.slots.next(now, self.state.last_start)

    def run_slot(self, slot: float) -> int:
        """Run one slot with retries; returns the last exit code."""
        m, job = self.metrics, self.job
        assert m is not None
        command = expand(self.command, slot)
        attempt, code = 0, 0
        while not self.stop.is_set():
            attempt += 1
            started = self.clock()
            self.state.last_start = started
            m.running.labels(job).set(1)
            m.attempts.labels(job).set(attempt)
            self.log(f"{job}: attempt {attempt}: {' '.join(command)}")
            try:
                code = self.runner(command, self.timeout_s)
            finally:
                m.running.labels(job).set(0)
            ended = self.clock()
            self.state.last_exit_code, self.state.last_run = code, ended
            m.exit_code.labels(job).set(code)
            m.last_run.labels(job).set(ended)
            m.duration.labels(job).set(ended - started)
            if code == 0:
                m.runs.labels(job, "success").inc()
                m.last_success.labels(job).set(ended)
                self.state.last_success = ended
                self.log(f"{job}: succeeded in {ended - started:.1f}s")
                break
            if self.policy.retryable(code) and attempt <= self.policy.retries:
                m.runs.labels(job, "retry").inc()
                wait = self.policy.delay(attempt)
                self.log(f"{job}: exit code {code}; retry {attempt} of {self.policy.retries} in {wait:.0f}s")
                self._sleep(wait)
                continue
            m.runs.labels(job, "failed").inc()
            why = "not retried" if not self.policy.retryable(code) else "retries exhausted"
            self.log(f"{job}: FAILED with exit code {code} ({why})")
            break
        self.state.last_slot = slot
        self.state.save(self.state_path)
        return code

    def run(self, max_slots: int | None = None) -> None:
        """Loop until :attr:`stop` is set (or ``max_slots`` slots ran)."""
        assert self.metrics is not None
        slot, done = self.first_slot(), 0
        while not self.stop.is_set() and (max_slots is None or done < max_slots):
            self.metrics.next_run.labels(self.job).set(slot)
            wait = slot - self.clock()
            if wait > 0:
                self._sleep(min(wait, 60.0))  # re-check the clock at least every minute (clock jumps)
                continue
            self.run_slot(slot)
            done += 1
            slot = self.slots.next(self.clock(), self.state.last_start)
