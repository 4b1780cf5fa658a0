"""Benchmark: what observability adds to one online request, in CPU nanoseconds.

Measures, with ``time.process_time`` (CPU time, which other jobs on the machine barely move):

1. the served-response sampler's hook per answer at the default rate (``ResponseSampler.tick``, plus
   the kept answers' ``add`` amortised), and the cost of one kept answer (a single-entity body with the
   9 features of ``user_activity``);
2. ``Metrics.observe`` (one counter and one histogram update per request) with in-memory values
   (one worker) and with ``prometheus_client``'s multiprocess values (``--workers N > 1``), each in a
   fresh interpreter because the value class is chosen when ``prometheus_client`` is imported.

The end-to-end counterpart is ``bench/online_latency.py --no-feast --variant ...`` (whole-server CPU per
request, noisier). Usage: ``python bench/ops_overhead.py [--n 200000]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

OBSERVE = """
import json, sys, time
from services.online_api.metrics import Metrics
m = Metrics(sys.argv[2] or None)
n = int(sys.argv[1])
for _ in range(1000):
    m.observe("/features", "GET", 200, 0.0003)
t = time.process_time()
for _ in range(n):
    m.observe("/features", "GET", 200, 0.0003)
print(json.dumps((time.process_time() - t) / n * 1e9))
"""


def body() -> dict[str, Any]:
    values = {f"user_activity:f{i}": float(i) for i in range(9)}
    return {
        "as_of": "2026-11-27T17:00:00.123456Z",
        "as_of_us": 1_795_798_800_123_456,
        "batch_cutoff": "2026-11-27T00:00:00Z",
        "batch_version": "20261126-x",
        "rows": [{"entity": {"user_id": "u000042"}, "values": values, "freshness": {}}],
    }


def sampler_ns(rate: float, n: int, tmp: Path) -> float:
    from fstore.samples import ResponseSampler

    s = ResponseSampler(tmp, rate, seed=1)
    b = body()
    t = time.process_time()
    for _ in range(n):
        if s.tick():
            s.add(b)
    return (time.process_time() - t) / n * 1e9


def observe_ns(n: int, multiproc_dir: str) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    if multiproc_dir:
        env["PROMETHEUS_MULTIPROC_DIR"] = multiproc_dir
    out = subprocess.run(
        [sys.executable, "-c", OBSERVE, str(n), multiproc_dir], env=env, capture_output=True, text=True, check=True
    )
    return float(json.loads(out.stdout))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=200_000, help="iterations per figure")
    args = ap.parse_args()
    report: dict[str, Any] = {"n": args.n, "loadavg_1m": round(os.getloadavg()[0], 2)}
    with tempfile.TemporaryDirectory() as tmp:
        report["sampler_hook_ns_per_answer_at_0.001"] = round(sampler_ns(0.001, args.n, Path(tmp) / "a"), 1)
        report["sampler_hook_ns_per_answer_at_0.01"] = round(sampler_ns(0.01, args.n, Path(tmp) / "b"), 1)
        report["sampler_ns_per_kept_answer"] = round(sampler_ns(1.0, args.n // 10, Path(tmp) / "c"), 1)
        report["observe_ns_in_memory"] = round(observe_ns(args.n, ""), 1)
        report["observe_ns_multiprocess"] = round(observe_ns(args.n, tmp), 1)
    report["multiprocess_extra_ns_per_request"] = round(
        report["observe_ns_multiprocess"] - report["observe_ns_in_memory"], 1
    )
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
