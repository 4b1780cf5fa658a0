"""Soak (issue 12): the stream at a steady 5,000 events/s with 1 % poison and 1 % oversized messages while
the API serves at concurrency 32, for ``--duration`` seconds (default 600).

One private redis-server and Apache Kafka broker, one worker (``python -m jobs.stream``), one ``fstore
serve``, all started first. The traffic — event times in the last 2 hours, 1 % duplicates, 1 % of the
messages replaced by **poison** (valid-looking events no sink can hold: ``quantity`` 3,000,000,000,
``price`` 1e300, epoch seconds; ``invalid_type:<f>``) and 1 % by **oversized** ones (64–80 KiB) — is made
while it is published at ``--rate`` (bounded memory), and meanwhile the load client (bench/online_latency.py's
keep-alive client) sends GET /features (a whole ``user_activity`` view, users in turn) at
``--concurrency``. At the end:

* **events lost** — by brute force: the distinct valid event_ids expected vs those in ``raw_events``
  (missing and extra), and per (view, tile size, measure) the number of first copies expected vs the sum
  of the ``:c`` fields of every speed tile in Redis (a lost or double-counted event moves one of them);
* **DLQ** — expected dead letters (poison + oversized) vs the DLQ topic's message count and the worker's
  ``fstore_stream_events_invalid_total``;
* **API** — requests, non-200 answers and connection errors, p50/p99;
* **worker CPU per event** (process CPU from /proc over the run / messages processed), Redis CPU, the load
  average. The worker process must still be alive at the end.

``python bench/soak.py [--duration 600] [--rate 5000] [--concurrency 32]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import multiprocessing
import os
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import online_latency
import orjson
import pyarrow.compute as pc
import redis
from confluent_kafka import Consumer, TopicPartition
from online_latency import _run, http_get, server
from stream_throughput import Run, metric, redis_cpu, scrape

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support.legacy

from examples.synth.generator import GeneratorConfig, generate
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer, free_port
from fstore.kafka import client as kafka_io
from tests.support.legacy.features import VIEWS, WindowedFeature

SECOND = 1_000_000
LIMIT = 64 * 1024
BIN = Path(sys.executable).parent


def tile_size(window: int) -> int:
    """The hop table of docs/design.md §3, restated (no feature of the example repo declares its own)."""
    return (
        300 * SECOND
        if window <= 12 * 3600 * SECOND
        else 3600 * SECOND
        if window <= 12 * 86400 * SECOND
        else 86400 * SECOND
    )


#: (view, entity field, tile size, measure name, event type, measure kind) of every speed-tile cell family
CELLS = sorted(
    {
        (v.name, v.entity.join_key, tile_size(f.window), f.measure.name, f.measure.event_type, str(f.measure.value))
        for v in VIEWS.values()
        for f in v.features
        if isinstance(f, WindowedFeature)
    }
)


class Expected:
    """What the pipeline must make of the traffic, folded as it is generated (first copy per event_id)."""

    def __init__(self) -> None:
        self.ids: set[str] = set()
        self.counts: Counter[tuple[str, int, str]] = Counter()
        self.revenue: dict[tuple[str, int, str], float] = {}
        self.dead: Counter[str] = Counter()
        self.messages = 0

    def valid(self, raw: bytes) -> None:
        ev = orjson.loads(raw)
        if ev["event_id"] in self.ids:
            return
        self.ids.add(ev["event_id"])
        for view, key, size, measure, etype, kind in CELLS:
            if ev["event_type"] == etype and ev.get(key) is not None:
                self.counts[(view, size, measure)] += 1
                if kind == "revenue":
                    cell = (view, size, measure)
                    self.revenue[cell] = self.revenue.get(cell, 0.0) + ev["price"] * ev.get("quantity", 1)


def poison(obj: dict[str, Any], rng: random.Random) -> tuple[bytes, str]:
    """A valid-looking event that no sink can hold (issue 12's first row)."""
    kind = rng.randrange(3)
    obj = dict(obj, event_type="purchase", product_id=obj.get("product_id") or "p0", price=obj.get("price") or 9.5)
    if kind == 0:
        obj["quantity"] = 3_000_000_000
    elif kind == 1:
        obj["price"] = 1e300
    else:
        obj["event_time"] = int(time.time())  # epoch seconds
    return orjson.dumps(obj), "poison"


def traffic(n: int, seed: int, exp: Expected) -> Iterator[tuple[list[str | None], list[bytes]]]:
    """``n`` messages in batches, made as they are published (bounded memory): generated events, 1 %
    replaced by poison and 1 % by oversized ones; ``exp`` folds them in as they are made."""
    now = time.time_ns() // 1000
    cfg = GeneratorConfig(
        start=now - 2 * 3600 * SECOND, end=now, events=n, users=20_000, products=2_000, duplicate_rate=0.01
    )
    rng = random.Random(seed)
    for b in generate(cfg, seed, dumps=orjson.dumps):
        values = list(b.values)
        for i, raw in enumerate(values):
            r = rng.random()
            if r < 0.01:
                values[i], kind = poison(orjson.loads(raw), rng)
                exp.dead[kind] += 1
            elif r < 0.02:
                values[i] = orjson.dumps(dict(orjson.loads(raw), pad="x" * (LIMIT + rng.randrange(16 * 1024))))
                exp.dead["oversized"] += 1
            else:
                exp.valid(raw)
        exp.messages += len(values)
        yield list(b.keys), values


def speed_counts(client: redis.Redis) -> tuple[Counter[tuple[str, int, str]], dict[tuple[str, int, str], float]]:
    """Sum of every speed tile's ``:c`` (and revenue ``:s``) fields per (view, tile size, measure)."""
    counts: Counter[tuple[str, int, str]] = Counter()
    sums: dict[tuple[str, int, str], float] = {}
    for key in client.scan_iter(match="fs:*:s:*", count=5000):
        view = bytes(key).decode().split("{", 1)[1].split("|", 1)[0]
        fields: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
        for f, v in fields.items():
            parts = f.decode().split(":")
            if len(parts) == 4 and parts[3] in ("c", "s"):
                cell = (view, int(parts[0]) * SECOND, parts[2])
                if parts[3] == "c":
                    counts[cell] += int(v)
                else:
                    sums[cell] = sums.get(cell, 0.0) + float(v)
    return counts, sums


def topic_size(bootstrap: str, topic: str) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak-size"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return sum(c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts)
    finally:
        c.close()


def id_digest(ids: set[str] | list[str]) -> int:
    return sum(int.from_bytes(hashlib.blake2b(i.encode(), digest_size=8).digest(), "little") for i in ids) % 2**64


def api_load(port: int, concurrency: int, seconds: float, results: Any) -> None:
    """GET /features of whole ``user_activity`` views, users in turn, for ``seconds`` (a process of its own)."""
    users = [f"u{i}" for i in range(0, 20_000, 7)]
    statuses: Counter[int] = Counter()
    exchange = online_latency._exchange

    async def counted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: bytes) -> int:
        status = await exchange(reader, writer, req)
        statuses[status] += 1
        return status

    online_latency._exchange = counted  # the client's one request function, counting answers by status
    try:
        res = asyncio.run(
            _run(
                port,
                lambda i: http_get(f"/features?user_id={users[i % len(users)]}&features=user_activity"),
                concurrency,
                10**9,
                seconds,
            )
        )
    except Exception as exc:  # a connection error ends the load client: report it
        res = {"exception": repr(exc)}
    results.put({**res, "statuses": dict(statuses)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=600.0, help="seconds of traffic (default 600)")
    ap.add_argument("--rate", type=float, default=5_000.0, help="messages per second")
    ap.add_argument("--concurrency", type=int, default=32, help="API load client connections")
    ap.add_argument("--seed", type=int, default=12)
    args = ap.parse_args()
    n = round(args.rate * args.duration)
    exp = Expected()
    out: dict[str, Any] = {"command": " ".join(["python", *sys.argv]), "load_avg_at_start": os.getloadavg()}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with RedisServer(state_dir=tmp / "svc") as rs, Broker(state_dir=tmp / "svc") as broker:
            run = Run(tmp, rs, broker, "soak")
            port = free_port()
            env = {**os.environ, "FSTORE_REDIS_URL": rs.url, "FSTORE_DATA_DIR": str(tmp / "api-data")}
            cmd = [str(BIN / "fstore"), "serve", "--port", str(port)]
            with server(cmd, port, tmp, env, tmp / "api.log") as (_base, _api_pid):
                deadline = time.monotonic() + 90
                while not scrape(run.port):  # the worker serves its metrics once it runs
                    if run.proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"worker did not start, see {run.log.name}")
                    time.sleep(0.5)
                # the load client runs in its own process: in this one it would share the GIL with the
                # traffic generator and report the generator's pauses as API latency
                ctx = multiprocessing.get_context("spawn")
                results = ctx.Queue()
                client = ctx.Process(target=api_load, args=(port, args.concurrency, args.duration, results))
                cpu0, rcpu0 = run.cpu_seconds(), redis_cpu(rs.url)
                client.start()
                pub_t0 = time.monotonic()
                rep = kafka_io.publish(traffic(n, args.seed, exp), broker.bootstrap, run.topic, rate=args.rate)
                out["messages"] = exp.messages
                out["publish"] = {
                    "ok": rep.ok,
                    "seconds": round(time.monotonic() - pub_t0, 1),
                    "summary": rep.summary(),
                }
                _, body = run.wait_events(exp.messages, 600)
                cpu, rcpu = run.cpu_seconds() - cpu0, redis_cpu(rs.url) - rcpu0
                api = results.get(timeout=120)
                client.join(30)
                out["drained_after_publish_s"] = round(time.monotonic() - pub_t0 - out["publish"]["seconds"], 1)
                alive = run.proc.poll() is None
                invalid = sum(
                    float(line.rsplit(" ", 1)[1])
                    for line in scrape(run.port).splitlines()
                    if line.startswith("fstore_stream_events_invalid_total{")
                )
                run.stop()
            r = redis.Redis.from_url(rs.url)
            got_counts, got_sums = speed_counts(r)
            raw = raw_log.read_table(str(tmp / "soak" / "raw_events"), ["event_id"])
            stored = pc.unique(raw.column("event_id")).to_pylist()
            dlq = topic_size(broker.bootstrap, f"{run.topic}.dlq")
    in_exp = sum(1 for i in stored if i in exp.ids)
    cells = sorted(set(exp.counts) | set(got_counts))
    out["events_lost"] = {
        "valid_distinct_expected": len(exp.ids),
        "raw_events_missing": len(exp.ids) - in_exp,
        "raw_events_extra": len(stored) - in_exp,
        "raw_events_id_digest_equal": id_digest(exp.ids) == id_digest(stored),
        "tile_count_cells": len(cells),
        "tile_counts_differing": {
            f"{v}:{s // SECOND}:{m}": [exp.counts[(v, s, m)], got_counts[(v, s, m)]]
            for v, s, m in cells
            if exp.counts[(v, s, m)] != got_counts[(v, s, m)]
        },
        "tile_events_lost": sum(max(0, exp.counts[c] - got_counts[c]) for c in cells),
        "revenue_sums_close": all(
            abs(exp.revenue[c] - got_sums.get(c, 0.0)) <= 1e-9 * max(1.0, abs(exp.revenue[c])) for c in exp.revenue
        ),
    }
    out["dlq"] = {
        "expected": sum(exp.dead.values()),
        "by_kind": dict(exp.dead),
        "topic_messages": dlq,
        "invalid_metric": invalid,
    }
    out["api"] = api
    out["worker"] = {
        "alive_at_end": alive,
        "cpu_s": round(cpu, 1),
        "cpu_us_per_event": round(cpu * 1e6 / exp.messages, 1),
        "redis_cpu_us_per_event": round(rcpu * 1e6 / exp.messages, 1),
        "events_processed": metric(body, "fstore_stream_events_processed_total"),
    }
    out["load_avg_at_end"] = os.getloadavg()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
