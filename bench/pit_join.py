"""Benchmark: point-in-time training joins (docs/design.md §6).

Usage: ``python bench/pit_join.py [--events 10000000] [--rows 1000000] [--feast-rows N] [--spark-rows N]
[--data-dir DIR] [--raw]``. Prints one JSON line of figures:

* the default (local) engine: ``rows`` entity rows × every feature of both views of the example plan
  (``feature_repo/``, :func:`fstore.plan_source.current_plan`) over ``raw_events``;
  time to read + de-duplicate ``raw_events`` separately from the join, rows/s of each, process CPU seconds
  and the 1-minute load average before the run (wall-clock figures depend on what else the machine runs).
  The days' winners are first written once with :func:`fstore.delta.raw_winners.compact` (``fstore
  compact``; its seconds are reported, ``compact`` — nothing to do when they are current) and the engine reads
  them; ``--raw`` reads and de-duplicates every copy of ``raw_events`` instead (the path before them);
* Feast's stock file (dask) offline store doing its as-of join over a daily snapshot table for the same
  entity rows (snapshots at 00:00 UTC of each day, computed here with the engine because the batch job's
  snapshots are not part of this benchmark), its time, the rows it returned and the ratio;
* the Spark engine on a smaller case (``spark_rows`` rows in a 2-day range).

``raw_events`` is synthesised with numpy (Zipf-popular products, the funnel's event-type mix, 1% duplicate
copies ingested later) and written through :mod:`fstore.delta.raw_log`; it is kept in ``--data-dir`` and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fstore.core import pit
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, parse_timestamp
from fstore.delta import raw_log, raw_winners
from fstore.offline import local as offline
from fstore.plan_source import current_plan

END = parse_timestamp("2026-01-01T00:00:00Z")
DAYS = 30
TYPES = np.array(["page_view", "impression", "click", "add_to_cart", "purchase"])
MIX = [0.25, 0.55, 0.12, 0.05, 0.03]


def build_raw_events(uri: str, events: int, users: int, products: int, seed: int = 1) -> None:
    """Write ``events`` synthetic events (+1% duplicate copies) to ``raw_events``, one day per commit."""
    rng = np.random.default_rng(seed)
    per_day = events // DAYS
    n = 0
    for d in range(DAYS):
        k = per_day if d < DAYS - 1 else events - per_day * (DAYS - 1)
        start = END - (DAYS - d) * DAY
        times = np.sort(start + rng.integers(0, DAY, k))
        etype = TYPES[rng.choice(5, k, p=MIX)]
        prod = (rng.zipf(1.3, k) - 1) % products
        user_ids = pa.array(np.char.add("u", rng.integers(0, users, k).astype(str)))
        product_ids = pa.array(np.char.add("p", prod.astype(str)))
        price = np.where(etype == "purchase", np.round(rng.uniform(1, 300, k), 2), np.nan)
        ids = np.char.add("e", np.arange(n, n + k).astype(str))
        n += k
        dup = rng.random(k) < 0.01
        table = pa.table(
            {
                "event_id": pa.array(np.concatenate([ids, ids[dup]])),
                "event_type": pa.array(np.concatenate([etype, etype[dup]])),
                "user_id": pa.concat_arrays([user_ids, user_ids.filter(pa.array(dup))]),
                "product_id": pa.concat_arrays([product_ids, product_ids.filter(pa.array(dup))]),
                "event_time": pa.array(np.concatenate([times, times[dup]])).cast(raw_log.TS),
                "price": pa.array(np.concatenate([price, price[dup] + 1]), from_pandas=True),
                "quantity": pa.array(np.concatenate([rng.integers(1, 4, k), np.full(dup.sum(), 7)]), pa.int32()),
                "session_id": pa.nulls(k + int(dup.sum()), pa.string()),
                "ingested_at": pa.array(np.concatenate([times + 10**6, times[dup] + 10**8])).cast(raw_log.TS),
                "payload_hash": pa.array(np.char.add("h", np.arange(k + int(dup.sum())).astype(str))),
            }
        )
        table = table.append_column("event_date", table.column("event_time").cast(pa.date32()))
        raw_log.append_raw(uri, table.cast(raw_log.raw_schema(current_plan().schema)))


def entity_frame(rows: int, users: int, products: int, first: int, last: int, seed: int = 2) -> pd.DataFrame:
    """Random (user, product, time) rows with times in ``[first, last)``."""
    rng = np.random.default_rng(seed)
    return pd.DataFrame(
        {
            "user_id": np.char.add("u", rng.integers(0, users, rows).astype(str)),
            "product_id": np.char.add("p", ((rng.zipf(1.3, rows) - 1) % products).astype(str)),
            "event_timestamp": pd.to_datetime(rng.integers(first, last, rows), unit="us", utc=True),
        }
    )


def snapshot_views(plan: Plan, snap_dir: Path) -> list[Any]:
    """Feast entities and feature views (TTL 1 day) over the daily snapshot Parquet files of each plan view."""
    from feast import Entity, FeatureView, Field, FileSource, ValueType
    from feast.data_format import DeltaFormat
    from feast.types import Float64, Int64

    entities = {e.name: Entity(name=e.name, join_keys=[e.join_key], value_type=ValueType.STRING) for e in plan.entities}
    views = [
        FeatureView(
            name=view.name,
            entities=[entities[view.entity.name]],
            ttl=pd.Timedelta(days=1).to_pytimedelta(),
            schema=[Field(name=f.name, dtype=Int64 if f.dtype == "int64" else Float64) for f in view.features],
            source=FileSource(
                name=f"{view.name}_snapshots",
                path=str(snap_dir / "feature_snapshots" / view.name),
                file_format=DeltaFormat(),
                timestamp_field="event_timestamp",
            ),
        )
        for view in plan.views
    ]
    return [*entities.values(), *views]


def feast_dask(df: pd.DataFrame, uri: str, work: Path, users: int, products: int) -> dict[str, Any]:
    """Feast's file (dask) offline store: as-of join of ``df`` over daily snapshots (TTL 1 day)."""
    from feast import FeatureStore

    plan = current_plan()
    began = time.perf_counter()
    days = pd.date_range(pd.Timestamp(END - 21 * DAY, unit="us", tz="UTC"), periods=22, freq="D")
    snap_dir = work / "snapshots"
    events = offline.read_events(uri, (END - 31 * DAY, END + DAY), plan=plan)
    for view in plan.views:
        key = view.entity.join_key
        keys = np.char.add(key[0], np.arange(users if key == "user_id" else products).astype(str))
        grid = pd.DataFrame({key: np.tile(keys, len(days)), "event_timestamp": np.repeat(days, len(keys))})
        snap = pit.point_in_time(plan, grid, [view.name], events)
        (snap_dir / "feature_snapshots" / view.name).mkdir(parents=True, exist_ok=True)
        snap.to_parquet(snap_dir / "feature_snapshots" / view.name / "part-0.parquet", index=False)
    build = time.perf_counter() - began
    repo = work / "feast_repo"
    repo.mkdir(exist_ok=True)
    (repo / "feature_store.yaml").write_text(
        f"project: bench\nprovider: local\nregistry: {repo / 'registry.db'}\n"
        f"online_store:\n  type: sqlite\n  path: {repo / 'online.db'}\noffline_store:\n  type: file\n"
        "entity_key_serialization_version: 3\n"
    )
    store = FeatureStore(repo_path=str(repo))
    store.apply(snapshot_views(plan, snap_dir))
    refs = [f"{v.name}:{f}" for v in plan.views for f in v.feature_names]
    began = time.perf_counter()
    out = store.get_historical_features(entity_df=df, features=refs, full_feature_names=True).to_df()
    seconds = time.perf_counter() - began
    return {
        "seconds": round(seconds, 2),
        "rows_returned": len(out),
        "rows_per_s": round(len(df) / seconds),
        "snapshot_build_seconds": round(build, 2),
    }


def run(
    events: int,
    rows: int,
    feast_rows: int,
    spark_rows: int,
    data_dir: str | None,
    users: int = 100_000,
    products: int = 10_000,
    raw: bool = False,
) -> dict[str, Any]:
    """Run every measurement and return the figures (see the module docstring)."""
    work = Path(data_dir) if data_dir else Path(tempfile.mkdtemp(prefix="fstore-bench-pit-"))
    uri = str(work / "raw_events")
    figures: dict[str, Any] = {"events": events, "rows": rows, "cpus": os.cpu_count()}
    marker = work / f"built-{events}-{users}-{products}"
    if not marker.exists():
        for table in (uri, raw_log.superseded_uri(uri), raw_winners.winners_uri(uri)):
            shutil.rmtree(table, ignore_errors=True)
        began = time.perf_counter()
        build_raw_events(uri, events, users, products)
        marker.touch()
        figures["build_raw_events_seconds"] = round(time.perf_counter() - began, 1)
    plan = current_plan()
    refs = [v.name for v in plan.views]
    if not raw:
        began, began_cpu = time.perf_counter(), time.process_time()
        report = raw_winners.compact(uri, plan.schema)
        figures["compact"] = {
            "seconds": round(time.perf_counter() - began, 2),
            "cpu_seconds": round(time.process_time() - began_cpu, 2),
            "days_written": len(report.written),
            "days_current": len(report.kept),
        }
    df = entity_frame(rows, users, products, END - 21 * DAY, END)
    timings = offline.Timings()
    load = os.getloadavg()[0]  # other work on the machine inflates the wall-clock figures
    began, began_cpu = time.perf_counter(), time.process_time()
    out = offline.get_historical_features(
        df, refs, plan=plan, raw_uri=uri, full_feature_names=True, timings=timings, winners=not raw
    )
    total, cpu = time.perf_counter() - began, time.process_time() - began_cpu
    assert len(out) == rows
    figures["local"] = {
        "read_seconds": round(timings.read, 2),
        "dedupe_seconds": round(timings.dedupe, 2),
        "join_seconds": round(timings.join, 2),
        "total_seconds": round(total, 2),
        "cpu_seconds": round(cpu, 2),
        "read_cpu_seconds": round(timings.read_cpu, 2),
        "dedupe_cpu_seconds": round(timings.dedupe_cpu, 2),
        "join_cpu_seconds": round(timings.join_cpu, 2),
        "load_average_1m_before": round(load, 1),
        "events_read": timings.rows_read,
        "days_from_winners": len(timings.settled),
        "join_rows_per_s": round(rows / timings.join),
        "end_to_end_rows_per_s": round(rows / total),
        "features": len(out.columns) - len(df.columns),
    }
    print(json.dumps(figures), file=sys.stderr, flush=True)
    if feast_rows:
        fdf = df.iloc[:feast_rows].copy()
        figures["feast_dask"] = feast_dask(fdf, uri, work, users, products)
        began = time.perf_counter()
        offline.get_historical_features(fdf, refs, plan=plan, raw_uri=uri, full_feature_names=True, winners=not raw)
        local_same = time.perf_counter() - began
        figures["feast_dask"]["local_engine_seconds_same_rows"] = round(local_same, 2)
        figures["feast_dask"]["ratio_dask_over_local"] = round(figures["feast_dask"]["seconds"] / local_same, 1)
    print(json.dumps(figures), file=sys.stderr, flush=True)
    if spark_rows:
        from fstore.offline.spark import spark_session

        sdf = entity_frame(spark_rows, users, products, END - 3 * DAY, END - DAY, seed=3)
        spark = spark_session("fstore-bench-pit")
        began = time.perf_counter()
        got = offline.get_historical_features(
            sdf, refs, plan=plan, raw_uri=uri, engine="spark", full_feature_names=True, spark=spark
        )
        spark_s = time.perf_counter() - began
        began = time.perf_counter()
        local = offline.get_historical_features(
            sdf, refs, plan=plan, raw_uri=uri, full_feature_names=True, winners=not raw
        )
        local_s = time.perf_counter() - began
        pd.testing.assert_frame_equal(got, local)
        figures["spark"] = {
            "rows": spark_rows,
            "seconds": round(spark_s, 2),
            "local_seconds": round(local_s, 2),
            "ratio_spark_over_local": round(spark_s / local_s, 1),
            "equal_to_local": True,
        }
        spark.stop()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--feast-rows", type=int, default=1_000_000, help="0 skips the Feast dask comparison")
    parser.add_argument("--spark-rows", type=int, default=50_000, help="0 skips the Spark engine")
    parser.add_argument("--data-dir", default=None, help="keep raw_events here and reuse it (default: temp)")
    parser.add_argument("--raw", action="store_true", help="de-duplicate raw_events at read (no winners files)")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.rows, args.feast_rows, args.spark_rows, args.data_dir, raw=args.raw)))


if __name__ == "__main__":
    main()
