"""Benchmark of the speed layer: one worker, a local Apache Kafka broker and a local Redis on this machine.

Three runs, each a fresh ``python -m jobs.stream`` process with its own topic and consumer group:

1. **throughput** — a backlog of generated traffic (2% duplicates) is published first; the worker's
   rate is valid events per second from the start of its first batch to the end of its last one
   (``fstore_stream_events_processed_total``: validated, dead-lettered, applied to Redis; raw_events
   flushes and offset commits run in the background), plus the worker's and Redis' CPU seconds so
   figures from a loaded machine can be read per CPU second. The end is the worker's own
   ``fstore_stream_last_tile_commit_timestamp_seconds``, so the run is polled only every 0.25 s: at
   20 scrapes a second the metrics endpoint cost the worker ~1.4 CPU-µs per event.
2. **naive** — the same with ``FSTORE_STREAM_NAIVE_PER_EVENT=1``: one Redis round trip per event
   (the reference a straightforward agent would be), on a smaller backlog.
3. **freshness** — live traffic at a steady rate (event times = now) once the worker has joined; the
   freshness lag (tile commit wall clock − Kafka record timestamp) p50/p99 from the worker's histogram,
   interpolated within buckets, counting only events of the steady phase.

Prints one JSON object. ``python bench/stream_throughput.py --events 300000 --rate 5000 --duration 30``
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import orjson
from redis import Redis as RedisClient

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.synth import live  # noqa: E402
from examples.synth.generator import GeneratorConfig, generate  # noqa: E402
from fstore.devsvc.services import Broker, RedisServer, free_port  # noqa: E402
from fstore.kafka import client as kafka_io  # noqa: E402

SECOND = 1_000_000
MIN_TIMED_S = 0.5  # a backlog processed faster than this cannot be timed by polling the metrics


def scrape(port: int) -> str:
    try:
        return str(urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode())
    except OSError:
        return ""


def metric(body: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", body, re.M)
    return float(m.group(1)) if m else 0.0


def buckets(body: str, name: str) -> list[tuple[float, float]]:
    out = []
    for le, v in re.findall(rf'^{name}_bucket{{le="([^"]+)"}} (\S+)$', body, re.M):
        out.append((float("inf") if le == "+Inf" else float(le), float(v)))
    return out


def quantile(hist: list[tuple[float, float]], q: float) -> float | None:
    """Quantile of a cumulative histogram, linear within the bucket (Prometheus' histogram_quantile)."""
    total = hist[-1][1] if hist else 0
    if total <= 0:
        return None
    rank, prev_le, prev_c = q * total, 0.0, 0.0
    for le, c in hist:
        if c >= rank:
            if le == float("inf"):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 0)
        prev_le, prev_c = le, c
    return None


class Run:
    """One worker process with its own topic, group and metrics port."""

    argv: list[str]
    cwd: Path
    env: dict[str, str]

    def __init__(
        self,
        tmp: Path,
        redis: RedisServer,
        broker: Broker,
        name: str,
        extra: Mapping[str, str] | None = None,
        *,
        command: Sequence[str] = ("-m", "jobs.stream"),
        start: bool = True,
        partitions: int = 1,
        like: Run | None = None,
    ) -> None:
        """Create the run's topics (``partitions`` for the events) and start ``python COMMAND`` (or only
        prepare it: :meth:`start` later). ``like``: another worker in that run's group, on its topics."""
        tag = uuid.uuid4().hex[:6]
        self.topic, self.port, self.broker = f"bench-{name}-{tag}", free_port(), broker
        self.redis_url = redis.url
        self.log = open(tmp / f"{name}.log", "wb")  # noqa: SIM115
        if like is not None:
            self.topic = like.topic
            self.argv, self.cwd = like.argv, like.cwd
            self.env = {**like.env, "FSTORE_STREAM_METRICS_PORT": str(self.port), **(extra or {})}
            if start:
                self.start()
            return
        broker.ensure_topics({self.topic: partitions, f"{self.topic}.dlq": 1})
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "FSTORE_KAFKA_BOOTSTRAP": broker.bootstrap,
            "FSTORE_REDIS_URL": redis.url,
            "FSTORE_DATA_DIR": str(tmp / name),
            "FSTORE_EVENTS_TOPIC": self.topic,
            "FSTORE_DLQ_TOPIC": f"{self.topic}.dlq",
            "FSTORE_STREAM_APP_ID": f"bench-{name}-{tag}",
            "FSTORE_STREAM_METRICS_PORT": str(self.port),
            "FSTORE_STREAM_LOG_LEVEL": "warning",
            "FSTORE_STREAM_SESSION_TIMEOUT_S": "6",
            "FSTORE_STREAM_REBALANCE_TIMEOUT_S": "6",
            **(extra or {}),
        }
        self.argv, self.cwd, self.env = [sys.executable, *command], tmp, env
        if start:
            self.start()

    def start(self) -> None:
        """Start the worker process."""
        self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT)

    def wait_events(
        self,
        n: float,
        timeout: float,
        name: str = "fstore_stream_events_processed_total",
        interval: float = 0.05,
    ) -> tuple[float, str]:
        """Poll the worker's metrics every ``interval`` s until ``name`` reaches ``n``: (wall clock, body)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            body = scrape(self.port)
            if metric(body, name) >= n:
                return time.time(), body
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited, see {self.log.name}")
            time.sleep(interval)
        raise TimeoutError(f"worker did not reach {n} events in {timeout} s")

    def cpu_seconds(self) -> float:
        """CPU time (user + system) the worker used so far, start-up and group join included."""
        return process_cpu(self.proc.pid)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def process_cpu(pid: int) -> float:
    """CPU seconds (user + system, all threads) process ``pid`` has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def broker_cpu(broker: Broker) -> float:
    """CPU seconds the Kafka broker (one JVM process) has used so far: it shares the machine's cores with the
    worker and Redis, so it bounds what one worker can reach here."""
    return process_cpu(broker.pid) if broker.pid else 0.0


def redis_calls(url: str) -> dict[str, tuple[int, float]]:
    """``INFO commandstats``: per command, ``(calls, µs)`` so far (commands a script runs count under their own
    name as well as under the script's ``evalsha``)."""
    stats = RedisClient.from_url(url).info("commandstats")
    return {k.removeprefix("cmdstat_"): (int(v["calls"]), float(v["usec"])) for k, v in stats.items()}


def redis_cpu(url: str) -> float:
    """CPU seconds (user + system) the Redis server has used so far (its Lua scripts run there)."""
    info = RedisClient.from_url(url).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def backlog(run: Run, events: int, seed: int) -> dict[str, object]:
    """Publish a backlog first, then time the worker through it."""
    now = time.time_ns() // 1000
    cfg = GeneratorConfig(
        start=now - 6 * 3600 * SECOND, end=now, events=events, users=50_000, products=5_000, duplicate_rate=0.02
    )
    batches = [(b.keys, b.values) for b in generate(cfg, seed, dumps=orjson.dumps)]
    rep = kafka_io.publish(batches, run.broker.bootstrap, run.topic)
    assert rep.ok, rep.summary()
    r0, b0, s0 = redis_cpu(run.redis_url), broker_cpu(run.broker), redis_calls(run.redis_url)
    t0, _ = run.wait_events(1, 120, "fstore_stream_events_in_total", 0.01)  # the first batch started
    c0 = run.cpu_seconds()
    _, body = run.wait_events(events, 900, interval=0.25)  # the last one is in Redis (dead letters in the DLQ)
    t1 = metric(body, "fstore_stream_last_tile_commit_timestamp_seconds")  # when it got there
    valid = metric(body, "fstore_stream_events_valid_total")
    cpu, steady, rcpu = run.cpu_seconds(), run.cpu_seconds() - c0, redis_cpu(run.redis_url) - r0
    bcpu, s1 = broker_cpu(run.broker) - b0, redis_calls(run.redis_url)
    calls = {
        name: {
            "calls_per_valid_event": round((n - s0.get(name, (0, 0))[0]) / valid, 3),
            "us_per_valid_event": round((us - s0.get(name, (0, 0))[1]) / valid, 3),
        }
        for name, (n, us) in s1.items()
        if valid and n > s0.get(name, (0, 0))[0]
    }
    span = t1 - t0
    if span < MIN_TIMED_S:  # the first poll saw the batch after (or just before) its last commit
        print(f"backlog of {events} events done in {span:.2f} s: too short to time, use more events", file=sys.stderr)
    return {
        "events": events,
        "seconds": round(span, 2),
        "valid_events_per_s": round(valid / span) if span >= MIN_TIMED_S else None,
        "worker_cpu_s": round(cpu, 1),
        "valid_events_per_worker_cpu_s": round(valid / cpu) if cpu else None,
        # from the first batch on (start-up and group join excluded)
        "worker_cpu_s_processing": round(steady, 2),
        "valid_events_per_worker_cpu_s_processing": round(valid / steady) if steady else None,
        "redis_cpu_s": round(rcpu, 2),
        "valid_events_per_redis_cpu_s": round(valid / rcpu) if rcpu else None,
        # per valid event: worker (from its first batch), Redis, broker (its fetches; the backlog's publishing
        # happened before), and what Redis' commands took by name (INFO commandstats)
        "cpu_us_per_valid_event": {
            "worker": round(steady / valid * 1e6, 2) if valid else None,
            "redis": round(rcpu / valid * 1e6, 2) if valid else None,
            "broker": round(bcpu / valid * 1e6, 2) if valid else None,
        },
        "redis_commands": calls,
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }


def freshness(run: Run, rate: float, duration: float, seed: int) -> dict[str, object]:
    """Steady live traffic; lag quantiles over the events sent after the warm-up."""
    warm = live.publish_live(
        live.live_plan(rate, 3.0, time.time_ns() // 1000, users=50_000, products=5_000),
        seed,
        run.broker.bootstrap,
        run.topic,
    )
    _, body = run.wait_events(warm.sent, 120)
    before = buckets(body, "fstore_stream_freshness_lag_seconds")
    rep = live.publish_live(
        live.live_plan(rate, duration, time.time_ns() // 1000, users=50_000, products=5_000),
        seed + 1,
        run.broker.bootstrap,
        run.topic,
    )
    _, body = run.wait_events(warm.sent + rep.sent, 60)
    after = buckets(body, "fstore_stream_freshness_lag_seconds")
    diff = [(le, c - b) for (le, c), (_, b) in zip(after, before, strict=True)]
    return {
        "rate_target": rate,
        "rate_achieved": round(rep.rate),
        "events": rep.sent,
        "lag_p50_s": round(quantile(diff, 0.5) or 0, 3),
        "lag_p99_s": round(quantile(diff, 0.99) or 0, 3),
        "lag_max_bucket_le_s": next((le for le, c in diff if c >= diff[-1][1]), None),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000, help="backlog for the throughput run")
    ap.add_argument("--naive-events", type=int, default=30_000, help="backlog for the naive reference")
    ap.add_argument("--rate", type=float, default=5_000, help="steady rate of the freshness run")
    ap.add_argument("--duration", type=float, default=30, help="seconds of the freshness run")
    ap.add_argument(
        "--redis-config", action="append", metavar="NAME=VALUE", help="CONFIG SET this on the bench's Redis first"
    )
    args = ap.parse_args()
    out: dict[str, object] = {"machine": {"cpus": os.cpu_count(), "load_avg_1m_at_start": os.getloadavg()[0]}}
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        with RedisServer(state_dir=tmp / "svc") as redis, Broker(state_dir=tmp / "svc") as broker:
            if args.redis_config:
                client = RedisClient.from_url(redis.url)
                for item in args.redis_config:
                    name, _, value = item.partition("=")
                    client.config_set(name, value)
            steps: list[tuple[str, Callable[[Run], dict[str, object]], dict[str, str]]] = [
                ("throughput", lambda r: backlog(r, args.events, 1), {}),
                ("naive_per_event", lambda r: backlog(r, args.naive_events, 2), {"FSTORE_STREAM_NAIVE_PER_EVENT": "1"}),
                (
                    "freshness",
                    lambda r: freshness(r, args.rate, args.duration, 3),
                    {"FSTORE_STREAM_BATCH_WITHIN_S": "0.05"},
                ),
            ]
            for name, fn, extra in steps:
                run = Run(tmp, redis, broker, name, extra)
                try:
                    out[name] = fn(run)
                finally:
                    run.stop()
                print(json.dumps({name: out[name]}), file=sys.stderr)
    tp = out["throughput"]["valid_events_per_s"]  # type: ignore[index]
    nv = out["naive_per_event"]["valid_events_per_s"]  # type: ignore[index]
    out["batched_over_naive"] = round(tp / nv, 1) if tp and nv else None
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
