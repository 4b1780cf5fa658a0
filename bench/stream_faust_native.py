"""Benchmark for ADR 0009: today's stream worker against a Faust-native batch consumer, in the same run.

Both workers run the same speed-layer code (``SpeedLayer.begin``/``finish``); they differ only in how
messages reach it:

- ``bulk`` — ``python -m jobs.stream``: an aiokafka consumer inside the Faust app, ``getmany`` batches;
- ``faust_native`` — ``bench/faust_native_worker.py``: a Faust agent, ``stream.noack_take(n, within=...)``
  batches, events acked after the raw flush.

One Redis server and one broker serve every run. The backlog is generated once (2 % duplicates) and the
same message bytes are published to each run's own topic before its worker starts; Redis is flushed
before each run, so every run does the same work from the same state. Runs alternate (bulk, Faust-native,
then Faust-native, bulk, ...) so that background load drifts over both. Per run: valid events/s from the
first batch to the last (``fstore_stream_events_processed_total``), the worker's CPU-µs per valid event
from the first batch on (and with start-up), Redis CPU-µs per valid event, the mean batch size, the load
average, and a comparison of every speed-tile field with the first run's: the two workers must leave the
same tiles (float sums may differ in the last bits: each worker cuts the stream into its own batches).

Prints one JSON object. ``python bench/stream_faust_native.py --events 200000 --pairs 2`` (a few minutes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import orjson
from redis import Redis as RedisClient

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/ is not a package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from stream_throughput import ROOT, SECOND, Run, metric, redis_cpu

from examples.synth.generator import GeneratorConfig, generate
from fstore.devsvc.services import Broker, RedisServer
from fstore.kafka import client as kafka_io

#: Message batches as the generator makes them: (keys, values).
Batches = list[tuple[Sequence[str | None], Sequence[bytes]]]

VARIANTS = {
    "bulk": ("-m", "jobs.stream"),
    "faust_native": (str(ROOT / "bench" / "faust_native_worker.py"),),
}


Tiles = dict[bytes, dict[bytes, bytes]]


def speed_tiles(url: str) -> Tiles:
    """Every speed-tile hash in Redis: key → field → value."""
    client = RedisClient.from_url(url)
    keys = list(client.scan_iter(match="fs:*:s:*", count=10_000))
    out: Tiles = {}
    for i in range(0, len(keys), 2_000):
        pipe = client.pipeline(transaction=False)
        for k in keys[i : i + 2_000]:
            pipe.hgetall(k)
        out.update(zip(keys[i : i + 2_000], pipe.execute(), strict=True))
    return out


def compare_tiles(a: Tiles, b: Tiles) -> dict[str, int]:
    """Fields equal byte for byte, fields equal within 1e-9 relative (float sums added in another order:
    the two consumers cut the stream into different batches), and fields that differ or exist on one side."""
    exact = close = other = 0
    for key in a.keys() | b.keys():
        fa, fb = a.get(key, {}), b.get(key, {})
        for field in fa.keys() | fb.keys():
            va, vb = fa.get(field), fb.get(field)
            if va == vb:
                exact += 1
            elif va is not None and vb is not None and math.isclose(float(va), float(vb), rel_tol=1e-9):
                close += 1
            else:
                other += 1
    return {"fields_identical": exact, "fields_within_1e-9": close, "fields_different": other}


def measure(run: Run, batches: Batches, events: int) -> tuple[dict[str, float | str | None], Tiles]:
    """Publish the backlog, start the worker, time it from its first batch to its last."""
    rep = kafka_io.publish(batches, run.broker.bootstrap, run.topic)
    assert rep.ok, rep.summary()
    run.start()
    t0, _ = run.wait_events(1, 180, "fstore_stream_events_in_total")
    c0, r0, load0 = run.cpu_seconds(), redis_cpu(run.redis_url), os.getloadavg()[0]
    t1, body = run.wait_events(events, 900)
    cpu, rcpu = run.cpu_seconds(), redis_cpu(run.redis_url) - r0
    valid = metric(body, "fstore_stream_events_valid_total")
    tiles = speed_tiles(run.redis_url)
    return {
        "seconds": round(t1 - t0, 2),
        "valid_events": int(valid),
        "valid_events_per_s": round(valid / (t1 - t0)),
        "worker_cpu_us_per_event": round((cpu - c0) / valid * 1e6, 2),
        "worker_cpu_us_per_event_with_startup": round(cpu / valid * 1e6, 2),
        "redis_cpu_us_per_event": round(rcpu / valid * 1e6, 2),
        "mean_batch": round(
            metric(body, "fstore_stream_batch_size_sum") / metric(body, "fstore_stream_batch_size_count")
        ),
        "load_avg_1m": f"{load0:.2f} -> {os.getloadavg()[0]:.2f}",
        "tile_hashes": len(tiles),
    }, tiles


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=200_000, help="backlog per run (the same messages every run)")
    ap.add_argument("--pairs", type=int, default=2, help="runs of each worker, alternating")
    args = ap.parse_args()
    out: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]}}
    now = time.time_ns() // 1000
    cfg = GeneratorConfig(
        start=now - 6 * 3600 * SECOND, end=now, events=args.events, users=50_000, products=5_000, duplicate_rate=0.02
    )
    batches: Batches = [(b.keys, b.values) for b in generate(cfg, 1, dumps=orjson.dumps)]
    order = [
        v for i in range(args.pairs) for v in (("bulk", "faust_native") if i % 2 == 0 else ("faust_native", "bulk"))
    ]
    runs: list[dict[str, object]] = []
    reference: Tiles | None = None  # the first run's speed tiles
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with RedisServer(state_dir=tmp / "svc") as redis, Broker(state_dir=tmp / "svc") as broker:
            for i, variant in enumerate(order):
                RedisClient.from_url(redis.url).flushall()
                run = Run(tmp, redis, broker, f"{variant}-{i}", command=VARIANTS[variant], start=False)
                try:
                    fig, tiles = measure(run, batches, args.events)
                finally:
                    run.stop()
                reference = reference or tiles
                runs.append({"worker": variant, **fig, "tiles_vs_first_run": compare_tiles(reference, tiles)})
                print(json.dumps(runs[-1]), file=sys.stderr)
    out["runs"] = runs
    summary: dict[str, dict[str, float]] = {}
    for variant in VARIANTS:
        mine = [r for r in runs if r["worker"] == variant]
        summary[variant] = {
            k: statistics.median(float(r[k]) for r in mine)  # type: ignore[arg-type]
            for k in ("valid_events_per_s", "worker_cpu_us_per_event", "redis_cpu_us_per_event")
        }
    out["median"] = summary
    bulk, native = summary["bulk"], summary["faust_native"]
    out["bulk_over_faust_native"] = {
        "events_per_s": round(bulk["valid_events_per_s"] / native["valid_events_per_s"], 2),
        "worker_cpu_per_event": round(native["worker_cpu_us_per_event"] / bulk["worker_cpu_us_per_event"], 2),
    }
    out["same_tiles"] = all(r["tiles_vs_first_run"]["fields_different"] == 0 for r in runs)  # type: ignore[index]
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
