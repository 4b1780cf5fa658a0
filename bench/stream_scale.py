"""Benchmark: stream workers in one consumer group — 1 worker vs N workers on the same backlog, same run.

For each worker count a fresh topic of ``--partitions`` partitions and a fresh consumer group; the workers
(``python -m jobs.stream`` processes) start, the run waits until the group coordinator has given each of
them partitions, then a backlog of generated traffic (2% duplicates, keys = user ids spread over the
partitions) is published. Measured from the first batch on any worker to the last event processed:

* valid events/s of the group and per worker process;
* CPU-µs per valid event of the worker processes (user + system, from /proc) and of Redis (INFO cpu) —
  what load barely moves, unlike events/s on a shared machine;
* the load average, and each worker's share of the events (how evenly the partitions spread).

Prints one JSON object. ``python bench/stream_scale.py --events 300000 --workers 1 2 --partitions 4``
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka.admin import AdminClient
from stream_throughput import SECOND, Run, metric, redis_cpu, scrape

from examples.synth.generator import GeneratorConfig, generate
from fstore.devsvc.services import Broker, RedisServer
from fstore.kafka import client as kafka_io


def members_with_partitions(bootstrap: str, group: str) -> int:
    """How many members of ``group`` own at least one partition (0 while it rebalances)."""
    admin = AdminClient({"bootstrap.servers": bootstrap})
    try:
        desc = admin.describe_consumer_groups([group], request_timeout=10)[group].result(timeout=15)
    except Exception:
        return 0
    return sum(1 for m in desc.members if m.assignment is not None and m.assignment.topic_partitions)


def group_run(
    tmp: Path, redis: RedisServer, broker: Broker, workers: int, partitions: int, events: int
) -> dict[str, Any]:
    """``workers`` processes in one group on a fresh ``partitions``-partition topic, through one backlog."""
    first = Run(tmp, redis, broker, f"group{workers}-0", start=False, partitions=partitions)
    group = first.env["FSTORE_STREAM_APP_ID"]
    runs = [first] + [
        Run(tmp, redis, broker, f"group{workers}-{i}", start=False, like=first) for i in range(1, workers)
    ]
    for r in runs:
        r.start()
    try:
        deadline = time.monotonic() + 180
        while members_with_partitions(broker.bootstrap, group) < workers:
            if time.monotonic() > deadline or any(r.proc.poll() is not None for r in runs):
                raise RuntimeError(f"the group did not settle with {workers} members; see {tmp}/*.log")
            time.sleep(0.5)
        now = time.time_ns() // 1000
        cfg = GeneratorConfig(
            start=now - 6 * 3600 * SECOND, end=now, events=events, users=50_000, products=5_000, duplicate_rate=0.02
        )
        batches = [(b.keys, b.values) for b in generate(cfg, 1, dumps=orjson.dumps)]
        c0, r0 = sum(r.cpu_seconds() for r in runs), redis_cpu(redis.url)
        rep = kafka_io.publish(batches, broker.bootstrap, first.topic)
        assert rep.ok, rep.summary()

        def total(name: str) -> tuple[float, list[float]]:
            each = [metric(scrape(r.port), name) for r in runs]
            return sum(each), each

        while total("fstore_stream_events_in_total")[0] < 1:
            time.sleep(0.02)
        t0 = time.monotonic()
        deadline = t0 + 900
        while total("fstore_stream_events_processed_total")[0] < events:
            if time.monotonic() > deadline or any(r.proc.poll() is not None for r in runs):
                raise RuntimeError(f"the group did not process {events} events; see {tmp}/*.log")
            time.sleep(0.05)
        t1 = time.monotonic()
        cpu, rcpu = sum(r.cpu_seconds() for r in runs) - c0, redis_cpu(redis.url) - r0
        valid, each = total("fstore_stream_events_valid_total")
    finally:
        for r in runs:
            r.stop()
    seconds = t1 - t0
    return {
        "workers": workers,
        "partitions": partitions,
        "events": events,
        "seconds": round(seconds, 2),
        "valid_events_per_s": round(valid / seconds),
        "valid_events_per_s_per_worker": round(valid / seconds / workers),
        "worker_share_of_events": [round(e / valid, 3) for e in each],
        "worker_cpu_us_per_valid_event": round(cpu / valid * 1e6, 1),
        "redis_cpu_us_per_valid_event": round(rcpu / valid * 1e6, 1),
        "cpu_us_per_valid_event": round((cpu + rcpu) / valid * 1e6, 1),
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000, help="backlog per run")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="worker counts to compare")
    ap.add_argument("--partitions", type=int, default=4, help="partitions of each run's topic (>= workers)")
    args = ap.parse_args()
    if max(args.workers) > args.partitions:
        ap.error("--partitions must be at least the largest --workers (an extra worker would sit idle)")
    out: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with RedisServer(state_dir=tmp / "svc") as redis, Broker(state_dir=tmp / "svc") as broker:
            for n in args.workers:
                out[f"workers_{n}"] = group_run(tmp, redis, broker, n, args.partitions, args.events)
                print(json.dumps({f"workers_{n}": out[f"workers_{n}"]}), file=sys.stderr)
    base = out[f"workers_{args.workers[0]}"]
    for n in args.workers[1:]:
        run = out[f"workers_{n}"]
        out[f"speedup_{n}_over_{args.workers[0]}"] = round(run["valid_events_per_s"] / base["valid_events_per_s"], 2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
