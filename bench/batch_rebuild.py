"""Benchmark: the nightly batch job end to end on ``--days`` × ``--events-per-day`` synthetic events.

Writes raw_events straight from numpy (vectorised, ~1% duplicate copies, ~2% late ingestions), starts a
private redis-server (unless ``--redis-url``), runs :func:`jobs.batch.rebuild_features.rebuild` for the
last day (read, de-duplication, DQ, tiles, Delta writes, Redis load, publish) and prints one JSON line
with the generation time and per-stage seconds. Target: 7 × 1.5M events in ≤ 5 minutes on 2 cores.

Usage: ``python bench/batch_rebuild.py [--events-per-day 1500000] [--days 7] [--data-dir DIR]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from fstore.core.events import EVENT_TYPES
from fstore.core.timeutil import DAY, HOUR, SECOND, day_start
from fstore.delta import raw_log
from fstore.devsvc.services import RedisServer
from jobs.batch.rebuild_features import build_spark, rebuild
from jobs.batch.settings import BatchSettings

RUN_DATE = date(2026, 11, 20)
TYPE_SHARE = (0.30, 0.50, 0.12, 0.05, 0.03)  # page_view, impression, click, add_to_cart, purchase


def day_table(day: date, n: int, users: int, products: int, rng: np.random.Generator) -> pa.Table:
    """One day of raw_events copies: n events plus ~1% duplicate copies, ~2% ingested 1-30 h late."""
    start = day_start(day)
    times = np.sort(start + rng.integers(0, DAY, n))
    etype = rng.choice(len(EVENT_TYPES), n, p=TYPE_SHARE)
    user = rng.integers(0, users, n)
    product = np.minimum(rng.zipf(1.3, n) - 1, products - 1)
    no_product = (etype == 0) & (rng.random(n) < 0.4)
    price = np.where(etype == 4, np.round(rng.uniform(1, 300, n), 2), np.nan)
    qty = rng.integers(1, 4, n).astype(np.int32)
    lag = rng.exponential(SECOND, n).astype(np.int64)
    late = rng.random(n) < 0.02
    lag[late] += rng.integers(HOUR, 30 * HOUR, int(late.sum()))
    dup = np.flatnonzero(rng.random(n) < 0.01)
    idx = np.concatenate([np.arange(n), dup])
    ingested = np.concatenate([times + lag, times[dup] + lag[dup] + rng.integers(SECOND, 60 * SECOND, len(dup))])
    ids = np.char.add(f"e{day:%Y%m%d}-", np.arange(n).astype("U9"))[idx]
    hashes = np.char.mod("%032x", rng.integers(0, 2**62, len(idx)))
    tt = pa.array(times[idx]).cast(raw_log.TS)
    return pa.Table.from_arrays(
        [
            pa.array(ids, pa.string()),
            pa.array(np.array(EVENT_TYPES)[etype[idx]], pa.string()),
            pa.array(np.char.add("u", user[idx].astype("U7")), pa.string()),
            pa.array(np.char.add("p", product[idx].astype("U6")), pa.string(), mask=no_product[idx]),
            tt,
            pa.array(price[idx], pa.float64(), from_pandas=True),
            pa.array(qty[idx], pa.int32()),
            pa.nulls(len(idx), pa.string()),
            pa.array(ingested).cast(raw_log.TS),
            pa.array(hashes, pa.string()),
            pa.array([day] * len(idx), pa.date32()),
        ],
        schema=raw_log.RAW_SCHEMA,
    )


def write_raw(root: str, days: int, per_day: int, users: int, products: int) -> int:
    """raw_events for the ``days`` days ending at RUN_DATE; returns the number of copies written."""
    rng = np.random.default_rng(7)
    total = 0
    for i in range(days - 1, -1, -1):
        table = day_table(RUN_DATE - timedelta(days=i), per_day, users, products, rng)
        raw_log.append_raw(f"{root}/raw_events", table)
        total += table.num_rows
    return total


def run(
    events_per_day: int, days: int, users: int, products: int, data_dir: str, redis_url: str | None
) -> dict[str, Any]:
    """Generate (if raw_events is missing), run the job once, return the figures."""
    out: dict[str, Any] = {"events_per_day": events_per_day, "days": days, "cpus": os.cpu_count()}
    t0 = time.perf_counter()
    if raw_log.open_table(f"{data_dir}/raw_events") is None:
        out["raw_copies"] = write_raw(data_dir, days, events_per_day, users, products)
    out["generate_s"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as state:
        server = None if redis_url else RedisServer(state_dir=Path(state)).__enter__()
        try:
            url = redis_url or (server.url if server else "")
            settings = BatchSettings(
                data_dir=data_dir,
                redis_url=url,
                spark_driver_memory="8g",
                spark_shuffle_partitions=8,
                dq_late_rate_fail=0.9,
            )
            t1 = time.perf_counter()
            spark = build_spark(settings)
            out["spark_start_s"] = round(time.perf_counter() - t1, 2)
            t2 = time.perf_counter()
            res = rebuild(spark, settings, RUN_DATE, log=lambda _m: None)
            out["job_wall_s"] = round(time.perf_counter() - t2, 2)
            out["stages_s"] = res.metrics["stages_s"]
            out["counters"] = res.metrics["counters"]
            out["published"] = res.published
            spark.stop()
        finally:
            if server:
                server.__exit__(None, None, None)
    return out


def main() -> None:
    """Command line entry point."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--events-per-day", type=int, default=1_500_000)
    p.add_argument("--days", type=int, default=7)
    p.add_argument("--users", type=int, default=100_000)
    p.add_argument("--products", type=int, default=10_000)
    p.add_argument("--data-dir", default=None, help="keep the data here (default: a temporary directory)")
    p.add_argument("--redis-url", default=None, help="use this Redis instead of a private redis-server")
    a = p.parse_args()
    if a.data_dir:
        print(
            json.dumps(run(a.events_per_day, a.days, a.users, a.products, str(Path(a.data_dir).resolve()), a.redis_url))
        )
        return
    with tempfile.TemporaryDirectory() as d:
        print(json.dumps(run(a.events_per_day, a.days, a.users, a.products, d, a.redis_url)))


if __name__ == "__main__":
    main()
