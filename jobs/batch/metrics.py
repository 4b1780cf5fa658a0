"""Job metrics: stage durations and counters, printed as JSON and written as a Prometheus textfile."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, write_to_textfile


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

    def write_prometheus(self, path: str, run_date: str, success: bool) -> None:
        """Write the figures as a Prometheus textfile (node-exporter textfile collector format)."""
        reg = CollectorRegistry()
        g_stage = Gauge("fstore_batch_stage_seconds", "Wall time of a batch job stage", ["stage"], registry=reg)
        for k, v in self.stages.items():
            g_stage.labels(k).set(v)
        g_count = Gauge("fstore_batch_rows", "Row/key counters of the last batch run", ["counter"], registry=reg)
        for k, v in self.counters.items():
            g_count.labels(k).set(v)
        Gauge("fstore_batch_success", "1 if the last batch run published", ["run_date"], registry=reg).labels(
            run_date
        ).set(1 if success else 0)
        Gauge("fstore_batch_last_run_timestamp_seconds", "End of the last batch run", registry=reg).set(time.time())
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_to_textfile(path, reg)
