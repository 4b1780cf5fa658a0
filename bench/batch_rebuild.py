"""Benchmark: the nightly batch job end to end on ``--days`` × ``--events-per-day`` synthetic events.

Writes raw_events straight from numpy (vectorised, ~1% duplicate copies, ~2% late ingestions), starts a
private redis-server (unless ``--redis-url``), runs :func:`jobs.batch.rebuild_features.rebuild` for the
last day (read, de-duplication, DQ, tiles, Delta writes, Redis load, publish) and prints one JSON line
with the generation time, per-stage seconds, and the job's CPU seconds (the whole process tree: this
process, the Spark JVM and its Python workers, from ``/proc``; load on the machine barely moves them).
Target: 7 × 1.5M events in ≤ 5 minutes on 2 cores. The events are the example repository's; the job runs
from the process's plan (``FSTORE_FEATURE_REPO``, default ``feature_repo/``), compiled before the timed
job like the Spark session is started before it (``plan_s``).

``--winners steady`` (the default) first writes the de-duplication winners of every day before the run
date (``fstore compact``, untimed: previous nights wrote them) and removes the run date's, the state a
nightly run finds; the job then de-duplicates only the newest day. After the job it times the compaction
of the run date (``compact_run_day_s``, what the nightly routine adds). ``--winners none`` removes every
winners file first: the cold full rebuild, every day de-duplicated.

``--tiles previous`` (the default with ``--winners steady``) makes the run date's job find what the
previous night's left: the tile tables of the night before, with the record of what each day was built
from (:mod:`jobs.batch.tile_reuse`). If they are not there yet, this bench first runs itself for the
night before in a fresh process (untimed; its own steady state, then the compaction of that night's
day); the record of an earlier run of the run date itself is removed, so the job takes the closed days'
tiles from the night before and computes only the newest day's. ``--tiles none`` computes every tile
(``FSTORE_REUSE_TILES=false``: session 5's steady state).

``--delta-engine both`` (the default) runs the job twice on the same ``raw_events``, back to back, each in
a fresh process with the job's output tables removed first: once committing through delta-spark, once
through delta-rs (``FSTORE_DELTA_ENGINE``); the JSON then holds both runs and their ratios.

Usage: ``python bench/batch_rebuild.py [--events-per-day 1500000] [--days 7] [--data-dir DIR]
[--delta-engine both|delta-spark|delta-rs] [--winners steady|none]``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
from proc_cpu import tree_cpu_seconds

from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, HOUR, SECOND, day_start
from fstore.delta import raw_log, raw_winners
from fstore.devsvc.services import RedisServer
from fstore.plan_source import current_plan
from jobs.batch import tile_reuse
from jobs.batch.plan import tiles_table
from jobs.batch.rebuild_features import build_spark, rebuild
from jobs.batch.settings import BatchSettings

RUN_DATE = date(2026, 11, 20)
# The example repository's traffic (run the job with its plan: FSTORE_FEATURE_REPO, default feature_repo/).
EVENT_TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")
TYPE_SHARE = (0.30, 0.50, 0.12, 0.05, 0.03)
TS = pa.timestamp("us", tz="UTC")
RAW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("event_time", TS, nullable=False),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("ingested_at", TS, nullable=False),
        pa.field("payload_hash", pa.string(), nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
    ]
)


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
    tt = pa.array(times[idx]).cast(TS)
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
            pa.array(ingested).cast(TS),
            pa.array(hashes, pa.string()),
            pa.array([day] * len(idx), pa.date32()),
        ],
        schema=RAW_SCHEMA,
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


def tree_cpu(pid: int) -> float:
    """CPU seconds of the tree under ``pid``, reaped children included (0 without ``/proc``)."""
    return tree_cpu_seconds(pid) or 0.0


def spark_stages(spark: Any) -> list[dict[str, Any]]:
    """Per Spark stage of the session (from the UI's REST API): name, tasks, run / CPU / GC seconds of
    the executors, rows and bytes in and out, shuffle bytes — where the job's time goes."""
    from urllib.request import urlopen

    ui = spark.sparkContext.uiWebUrl
    app = spark.sparkContext.applicationId
    with urlopen(f"{ui}/api/v1/applications/{app}/stages?status=complete") as r:
        stages = json.load(r)
    keep = ("stageId", "name", "numTasks", "inputRecords", "outputRecords", "shuffleReadRecords")
    out = []
    for st in sorted(stages, key=lambda x: x["stageId"]):
        row = {k: st.get(k) for k in keep}
        row["run_s"] = round(st.get("executorRunTime", 0) / 1e3, 2)
        row["cpu_s"] = round(st.get("executorCpuTime", 0) / 1e9, 2)
        row["gc_s"] = round(st.get("jvmGcTime", 0) / 1e3, 2)
        row["shuffle_write_mb"] = round(st.get("shuffleWriteBytes", 0) / 2**20, 1)
        row["wall_s"] = _stage_wall(st)
        out.append(row)
    return out


def _stage_wall(st: dict[str, Any]) -> float | None:
    from datetime import datetime

    fmt = "%Y-%m-%dT%H:%M:%S.%fGMT"
    if not st.get("submissionTime") or not st.get("completionTime"):
        return None
    delta = datetime.strptime(st["completionTime"], fmt) - datetime.strptime(st["submissionTime"], fmt)
    return round(delta.total_seconds(), 2)


def run(
    events_per_day: int,
    days: int,
    users: int,
    products: int,
    data_dir: str,
    redis_url: str | None,
    delta_engine: str = "auto",
    winners: str = "steady",
    profile: str | None = None,
    tiles: str = "previous",
    run_date: date = RUN_DATE,
) -> dict[str, Any]:
    """Generate (if raw_events is missing), run the job once, return the figures."""
    out: dict[str, Any] = {"events_per_day": events_per_day, "days": days, "cpus": os.cpu_count()}
    out["run_date"], out["tiles"] = run_date.isoformat(), tiles
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
                delta_engine=delta_engine,
                reuse_tiles=tiles == "previous",
            )
            t1 = time.perf_counter()
            features = current_plan()  # compiled once per process (imports Feast): not per-row work
            out["plan_s"] = round(time.perf_counter() - t1, 2)
            raw_uri = f"{data_dir}/raw_events"
            if winners == "none":
                shutil.rmtree(raw_winners.winners_uri(raw_uri), ignore_errors=True)
            else:  # what the previous nights' compactions left: every day but the run date
                t1 = time.perf_counter()
                compacted = raw_winners.compact(raw_uri, features.schema, before=run_date)
                shutil.rmtree(f"{raw_winners.winners_uri(raw_uri)}/event_date={run_date}", ignore_errors=True)
                out["compact_before_s"] = round(time.perf_counter() - t1, 2)
                out["compacted_days"] = len(compacted.written) + len(compacted.kept)
            if tiles == "previous":
                out["previous_night_s"] = previous_night(settings, features, run_date, events_per_day, days, url)
            t1 = time.perf_counter()
            spark = build_spark(settings.model_copy(update={"spark_ui": bool(profile)}))
            out["spark_start_s"] = round(time.perf_counter() - t1, 2)
            t2, cpu = time.perf_counter(), tree_cpu(os.getpid())
            res = rebuild(spark, settings, run_date, log=lambda _m: None, features=features)
            out["job_wall_s"] = round(time.perf_counter() - t2, 2)
            out["job_cpu_s"] = round(tree_cpu(os.getpid()) - cpu, 1)
            out["delta_writer"] = res.metrics["delta_writer"]
            out["delta_writer_reason"] = res.metrics["delta_writer_reason"]
            out["stages_s"] = res.metrics["stages_s"]
            out["counters"] = res.metrics["counters"]
            out["published"] = res.published
            if profile:
                Path(profile).write_text(json.dumps(spark_stages(spark), indent=1))
            out["days_from_winners"] = len(res.metrics.get("days_from_winners", []))
            out["days_reused"] = res.metrics.get("days_reused")
            out["days_read"] = res.metrics.get("days_read")
            if winners == "steady":
                t1, cpu = time.perf_counter(), tree_cpu(os.getpid())
                raw_winners.compact(raw_uri, features.schema, days=[run_date])
                out["compact_run_day_s"] = round(time.perf_counter() - t1, 2)
                out["compact_run_day_cpu_s"] = round(tree_cpu(os.getpid()) - cpu, 1)
            spark.stop()
        finally:
            if server:
                server.__exit__(None, None, None)
    return out


def previous_night(s: BatchSettings, features: Plan, run_date: date, per_day: int, days: int, url: str) -> float:
    """Make the tile tables hold the night before's run with a true record (running this bench for that
    night in a fresh process when they do not), and drop the record of the run date's own earlier run;
    returns the seconds spent."""
    t0 = time.perf_counter()
    before = run_date - timedelta(days=1)
    tables = [s.table(tiles_table(v.name)) for v in features.views]
    if any(tile_reuse.recorded(t, before) is None for t in tables):
        argv = [sys.executable, __file__, "--data-dir", s.data_dir, "--delta-engine", s.delta_engine]
        argv += ["--events-per-day", str(per_day), "--days", str(days), "--winners", "steady"]
        argv += ["--tiles", "none", "--run-date", before.isoformat(), "--redis-url", url]
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"the night before failed ({res.returncode}):\n{res.stderr[-3000:]}")
    for t in tables:
        fs, root = raw_log.filesystem(tile_reuse.inputs_uri(t))
        if tile_reuse.recorded(t, run_date) is not None:
            fs.delete_file(f"{root}/run_date={run_date.isoformat()}.json")
    return round(time.perf_counter() - t0, 2)


def both(a: argparse.Namespace, data_dir: str) -> dict[str, Any]:
    """delta-spark then delta-rs on the same raw_events, each in a fresh process from empty output tables."""
    if raw_log.open_table(f"{data_dir}/raw_events") is None:
        t0 = time.perf_counter()
        copies = write_raw(data_dir, a.days, a.events_per_day, a.users, a.products)
        generated = {"raw_copies": copies, "generate_s": round(time.perf_counter() - t0, 2)}
    else:
        generated = {}
    out: dict[str, Any] = {**generated, "load_average": os.getloadavg()}
    for engine in ("delta-spark", "delta-rs"):
        for entry in Path(data_dir).iterdir():
            if entry.name not in ("raw_events", "dead_letters", "raw_events_winners"):
                shutil.rmtree(entry) if entry.is_dir() else entry.unlink()
        argv = [sys.executable, __file__, "--data-dir", data_dir, "--delta-engine", engine]
        argv += ["--events-per-day", str(a.events_per_day), "--days", str(a.days), "--winners", a.winners]
        argv += ["--tiles", a.tiles]
        argv += ["--redis-url", a.redis_url] if a.redis_url else []
        res = subprocess.run(argv, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"{engine} run failed ({res.returncode}):\n{res.stderr[-3000:]}")
        out[engine] = json.loads(res.stdout.strip().splitlines()[-1])
        if out[engine]["delta_writer"] != engine:
            raise SystemExit(f"asked for {engine}, the job used {out[engine]['delta_writer_reason']}")
    out["load_average_after"] = os.getloadavg()
    for k in ("job_wall_s", "job_cpu_s"):
        out[f"{k}_delta_spark_over_delta_rs"] = round(out["delta-spark"][k] / out["delta-rs"][k], 2)
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
    p.add_argument(
        "--delta-engine",
        choices=("both", "delta-spark", "delta-rs", "auto"),
        default="both",
        help="who commits the job's Delta tables; both = one run each, back to back",
    )
    p.add_argument(
        "--winners",
        choices=("steady", "none"),
        default="steady",
        help="steady: every day but the run date compacted first (a nightly run); none: a cold full rebuild",
    )
    p.add_argument(
        "--tiles",
        choices=("previous", "none"),
        default="previous",
        help="previous: the night before's tiles are there to take (run first if missing); none: compute all",
    )
    p.add_argument("--run-date", type=date.fromisoformat, default=RUN_DATE, help=argparse.SUPPRESS)
    p.add_argument("--profile", default=None, help="write the Spark stages' times (UI REST API) to this JSON file")
    a = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data_dir = str(Path(a.data_dir).resolve()) if a.data_dir else tmp
        if a.delta_engine == "both":
            print(json.dumps(both(a, data_dir)))
        else:
            res = run(
                a.events_per_day,
                a.days,
                a.users,
                a.products,
                data_dir,
                a.redis_url,
                a.delta_engine,
                a.winners,
                a.profile,
                a.tiles if a.winners == "steady" else "none",
                a.run_date,
            )
            print(json.dumps(res))


if __name__ == "__main__":
    main()
