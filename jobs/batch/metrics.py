"""Job metrics: stage durations and counters, printed as JSON and written as a Prometheus textfile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile
from prometheus_client.parser import text_string_to_metric_families


class JobMetrics:
    """Collects per-stage wall times (seconds) and named counters of one run."""

    def __init__(self) -> None:
        self.stages: dict[str, float] = {}
        self.counters: dict[str, float] = {}
        self.info: dict[str, Any] = {}

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Time the body as stage ``name`` (accumulates if entered twice)."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - t0

    def count(self, name: str, value: float) -> None:
        """Set counter ``name``."""
        self.counters[name] = value

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return {
            **self.info,
            "stages_s": {k: round(v, 3) for k, v in self.stages.items()},
            "total_s": round(sum(self.stages.values()), 3),
            "counters": self.counters,
        }

    def write_prometheus(self, path: str, run_date: str, success: bool, cutover_s: float | None = None) -> None:
        """Write the run as a Prometheus textfile (atomic replace; served by ``fstore schedule --textfile``
        or node-exporter's textfile collector).

        ``fstore_batch_last_success_timestamp_seconds`` is carried over from the previous file when this run
        failed, so "how old is the last good batch" survives failed runs. The data-quality gate is
        ``fstore_batch_dq_status`` (0 pass, 1 warn, 2 fail; absent when the run stopped before it) and one
        ``fstore_batch_dq_check_status{check}`` per check.
        """
        now = time.time()
        previous = last_success_in(path)
        reg = CollectorRegistry()
        g_stage = Gauge("fstore_batch_stage_seconds", "Wall time of a batch job stage", ["stage"], registry=reg)
        for k, v in self.stages.items():
            g_stage.labels(k).set(v)
        g_count = Gauge("fstore_batch_rows", "Row/key counters of the last batch run", ["counter"], registry=reg)
        for k, v in self.counters.items():
            g_count.labels(k).set(v)
        Gauge("fstore_batch_success", "1 if the last batch run succeeded", ["run_date"], registry=reg).labels(
            run_date
        ).set(1 if success else 0)
        Gauge("fstore_batch_last_run_success", "1 if the last batch run succeeded", registry=reg).set(int(success))
        Gauge("fstore_batch_last_run_timestamp_seconds", "End of the last batch run", registry=reg).set(now)
        last_ok = now if success else previous
        if last_ok is not None:
            Gauge(
                "fstore_batch_last_success_timestamp_seconds", "End of the last successful batch run", registry=reg
            ).set(last_ok)
        if cutover_s is not None:
            Gauge("fstore_batch_cutover_timestamp_seconds", "Cutover C of the last run", registry=reg).set(cutover_s)
        if "published" in self.info:
            Gauge("fstore_batch_published", "1 if the last run published its batch view", registry=reg).set(
                int(bool(self.info["published"]))
            )
        dq = self.info.get("dq")
        if dq:
            levels = {"ok": 0, "skipped": 0, "warn": 1, "fail": 2}
            checks = {name: levels.get(c["status"], 2) for name, c in dq["checks"].items()}
            Gauge("fstore_batch_dq_status", "Data-quality gate: 0 pass, 1 warn, 2 fail", registry=reg).set(
                max(checks.values(), default=0)
            )
            g_check = Gauge(
                "fstore_batch_dq_check_status", "Per check: 0 ok/skipped, 1 warn, 2 fail", ["check"], registry=reg
            )
            g_value = Gauge("fstore_batch_dq_check_value", "Per check: the graded value", ["check"], registry=reg)
            for name, level in checks.items():
                g_check.labels(name).set(level)
                value = dq["checks"][name]["value"]
                if value is not None:
                    g_value.labels(name).set(value)
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(path, reg)


def last_success_in(path: str) -> float | None:
    """``fstore_batch_last_success_timestamp_seconds`` of an existing textfile, if any."""
    try:
        text = Path(path).read_text()
    except OSError:
        return None
    for family in text_string_to_metric_families(text):
        if family.name == "fstore_batch_last_success_timestamp_seconds":
            for sample in family.samples:
                return float(sample.value)
    return None
