"""kill -9 drills (issue 12): the worker, the batch driver and the API killed at random points, then restarted.

Every kill point is drawn from a seeded generator (``FSTORE_KILL9_SEED`` overrides; the points are
printed). After each kill the killed process's whole session (its Spark JVM, uvicorn workers, ...) must be
gone; after each restart the outputs are compared with an independent brute force:

* **worker** — 200,000 messages (3 % duplicates, 3 % late, 2 % malformed), killed three times while
  consuming: every speed-tile field equals the brute force over the first copy of each valid event_id,
  ``raw_events`` holds every valid event_id and its de-duplicated winner is that first copy, the DLQ holds
  every invalid message with its reason exactly once per source position (its key: a copy re-sent after a
  crash carries the same key, docs/stream.md);
* **batch driver** (``fstore batch``) — killed during Spark, while it stages a Delta commit and during the
  Redis load: nothing is published by a killed run, the Delta tables stay readable and whole, and the
  re-run publishes a batch view equal to the brute force and removes the killed run's keys;
* **API** (``fstore serve --workers 2``) — killed while serving under load: no worker outlives it, the
  restarted server answers every request with the brute-force values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import defaultdict
from datetime import date, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pyarrow.compute as pc
import pytest
import redis

from examples.synth.generator import GeneratorConfig, generate
from fstore.core.events import Rejection, payload_hash
from fstore.core.timeutil import HOUR, MINUTE, day_start
from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer, free_port
from fstore.redis.layout import POINTER_KEY, BatchPointer, parse_tiles
from jobs.batch import batch_view as batch_view_mod
from tests.support import bruteforce, raw_rows
from tests.support.legacy.events_example import Event, parse
from tests.support.legacy.features import VIEWS
from tests.support.legacy.tiles import evaluate
from tests.support.online import C, load, make_events
from tests.support.stream import (
    Factory,
    assert_dlq_exact_by_source,
    assert_raw_and_dlq,
    assert_tiles_exact,
    make_traffic,
    publish,
)
from tests.support.tiles import lookup_in_dict

pytestmark = pytest.mark.faults

SEED = int(os.environ.get("FSTORE_KILL9_SEED", "912"))
FSTORE = str(Path(sys.executable).with_name("fstore"))


def session_gone(pid: int, timeout: float = 20.0) -> float:
    """Every process of the session ``pid`` led (started with ``start_new_session``) has exited; returns
    the seconds that took."""
    t0 = time.monotonic()
    deadline = t0 + timeout
    while True:
        left = [p for p in os.listdir("/proc") if p.isdigit() and _sid(int(p)) == pid]
        if not left:
            return time.monotonic() - t0
        if time.monotonic() > deadline:
            raise AssertionError(f"processes left after kill -9 of {pid}: {[_cmd(int(p)) for p in left]}")
        time.sleep(0.2)


def _sid(pid: int) -> int | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] == "Z" else int(fields[3])  # state, ppid, pgrp, session: zombies are gone


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:200]
    except OSError:
        return "?"


# ------------------------------------------------------------------------------------------------ worker


def test_worker_killed_three_times_in_200k_run(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    traffic = make_traffic(200_000, seed=SEED, users=20_000, products=1_000)
    total = len(traffic.values)
    points = sorted(rng.uniform(0.05, 0.9) * total for _ in range(3))
    print(f"kill -9 seed {SEED}: worker killed after {[round(p) for p in points]} consumed messages")
    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S=str(rng.choice([1, 5])))
    w.start()
    publish(kafka_broker, w.topic, traffic)
    base = 0.0  # events_in counts from each start
    for point in points:
        deadline = time.monotonic() + 180
        while base + w.metric("fstore_stream_events_in_total") < point:
            assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
            time.sleep(0.05)
        time.sleep(rng.uniform(0, 0.5))
        assert w.proc is not None
        pid = w.proc.pid
        w.kill(signal.SIGKILL)
        session_gone(pid)
        done = w.committed()
        print(f"  killed; {done} messages committed before the kill")
        base = max(done, 0)  # the restart re-reads from the committed offsets
        w.start()
    w.wait_done(total, timeout=300)
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    assert_tiles_exact(redis_client, traffic)
    assert_raw_and_dlq(kafka_broker, w.dlq, tmp_path / "data", traffic, exact_dlq=False)
    assert_dlq_exact_by_source(kafka_broker, w.dlq, w.topic, traffic)
    assert_raw_winners(tmp_path / "data" / "raw_events", traffic.values)


def assert_raw_winners(uri: Path, values: list[bytes]) -> None:
    """Readers de-duplicate raw_events by event_id (first ingested wins): the winner of every event_id must
    be the copy first in the log, whatever copies a crash added."""
    first: dict[str, str] = {}
    now = time.time_ns() // 1000
    for v in values:
        ev = parse(v, now, orjson.loads)
        if isinstance(ev, Event):
            first.setdefault(ev.event_id, payload_hash(v))
    raw = raw_log.read_table(str(uri), ["event_id", "ingested_at", "payload_hash"])
    rows = sorted(
        zip(
            raw.column("event_id").to_pylist(),
            pc.cast(raw.column("ingested_at"), "int64").to_pylist(),
            raw.column("payload_hash").to_pylist(),
            strict=True,
        ),
        key=lambda r: (r[1], r[2]),
    )
    winner: dict[str, str] = {}
    for event_id, _, h in rows:
        winner.setdefault(event_id, h)
    assert winner == first


# ------------------------------------------------------------------------------------------------- batch

D1 = date(2026, 11, 20)
START, END = day_start(D1 - timedelta(days=8)), day_start(D1 + timedelta(days=1))


def batch_env(data: Path, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FSTORE_DATA_DIR": str(data),
        "FSTORE_REDIS_URL": redis_url,
        "FSTORE_SPARK_MASTER": "local[2]",
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_SPARK_DRIVER_MEMORY": "1g",
        "FSTORE_DQ_LATE_AFTER_S": str(40 * 86_400),
        "FSTORE_DQ_LATE_RATE_FAIL": "0.9",
        "FSTORE_DQ_DUPLICATE_RATE_FAIL": "0.5",
    }


def new_files(table: Path, since: float) -> bool:
    """Parquet files written into a table's directory since ``since`` (staged or committed)."""
    return table.exists() and any(p.stat().st_mtime > since for p in table.rglob("*.parquet"))


def test_batch_driver_killed_in_spark_delta_commit_and_redis_load(redis_server: RedisServer, tmp_path: Path) -> None:
    rng = random.Random(SEED + 1)
    data = tmp_path / "data"
    url = redis_server.url.rsplit("/", 1)[0] + "/12"
    rdb = redis.Redis.from_url(url)
    rdb.flushdb()
    cfg = GeneratorConfig(
        start=START, end=END, events=12_000, users=200, products=50, duplicate_rate=0.03, batch_size=20_000
    )
    copies: list[tuple[int, str, Event]] = []
    for b in generate(cfg, seed=SEED):
        for raw, arrival in zip(b.values, b.arrival.tolist(), strict=True):
            ev = parse(raw, END)
            if not isinstance(ev, Rejection):
                copies.append((arrival, payload_hash(raw), ev))
    raw_log.append_raw(
        str(data / "raw_events"),
        raw_rows.events_table([c[2] for c in copies], [c[1] for c in copies], [c[0] for c in copies]),
    )
    env = batch_env(data, url)
    tiles_dir = data / "tiles_product_engagement"
    phases: dict[str, Any] = {
        "spark": lambda since: _jvm_running(),
        "delta": lambda since: new_files(tiles_dir, since),
        "redis": lambda since: bool(rdb.scard(batch_view_mod.LOADING_KEY)),
    }
    delays = {"spark": rng.uniform(0.5, 4.0), "delta": rng.uniform(0.0, 0.2), "redis": rng.uniform(0.0, 0.3)}
    print(f"kill -9 seed {SEED + 1}: batch killed { ({k: round(v, 3) for k, v in delays.items()}) } s into each phase")
    killed_versions: set[str] = set()
    for phase, seen in phases.items():
        since = time.time()
        proc = subprocess.Popen(
            [FSTORE, "batch", "--date", D1.isoformat(), "--no-progress"],
            env=env,
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _JVM_SESSION[0] = proc.pid
        deadline = time.monotonic() + 240
        try:
            while not seen(since):
                assert proc.poll() is None, f"batch ended before phase {phase}: {proc.communicate()[0][-3000:]!r}"
                assert time.monotonic() < deadline, f"phase {phase} not reached"
                time.sleep(0.02)
        except BaseException:
            os.killpg(proc.pid, signal.SIGKILL)  # this run's whole session: its Spark JVM too
            raise
        time.sleep(delays[phase])
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        assert proc.stdout is not None
        proc.stdout.close()
        # The Spark JVM notices its driver's end (stdin closed) and exits after its shutdown hooks: seconds,
        # or tens of seconds on a loaded machine.
        took = session_gone(proc.pid, timeout=90)
        print(
            f"  killed in phase {phase}; JVM gone after {took:.1f} s;",
            f"loading {rdb.smembers(batch_view_mod.LOADING_KEY)}",
        )
        assert rdb.get(POINTER_KEY) is None  # a killed run publishes nothing
        for name in VIEWS:  # readable, and whole: a committed partition is the complete, exact one
            for table in (data / f"tiles_{name}", data / "feature_snapshots" / name):
                if (table / "_delta_log").exists():
                    raw_log.read_table(str(table))
        killed_versions |= {v.decode() if isinstance(v, bytes) else v for v in rdb.smembers(batch_view_mod.LOADING_KEY)}
    assert killed_versions, "the redis-phase kill left no registered loading version"
    for v in killed_versions:  # as if the lease (LEASE_S = 120 s) had lapsed: the killed run renews it no more
        assert 0 < rdb.ttl(batch_view_mod.lease_key(v)) <= batch_view_mod.LEASE_S
        rdb.delete(batch_view_mod.lease_key(v))
    out = subprocess.run(
        [FSTORE, "batch", "--date", D1.isoformat(), "--no-progress"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    pointer = BatchPointer.loads(rdb.get(POINTER_KEY))
    assert pointer is not None
    for v in killed_versions:
        assert not list(rdb.scan_iter(match=f"fs:*:b:{v}")), f"keys of killed run {v} left"
    assert not rdb.smembers(batch_view_mod.LOADING_KEY)
    check_batch_view(rdb, bruteforce.dedupe(copies), pointer)
    rdb.close()


_JVM_SESSION = [0]


def _jvm_running() -> bool:
    """The batch driver's Spark JVM has started (a java process in its session)."""
    return any(
        p.isdigit() and _sid(int(p)) == _JVM_SESSION[0] and "java" in _cmd(int(p)).split(" ", 1)[0]
        for p in os.listdir("/proc")
    )


def check_batch_view(client: redis.Redis, winners: list[Event], pointer: BatchPointer) -> None:
    """The published batch tiles alone give the brute-force value of every feature of every entity (events
    before the cutover) at three times after it."""
    events = [e for e in winners if e.event_time < pointer.cutover]
    checked = 0
    for name, view in VIEWS.items():
        key = view.entity.join_key
        by_entity: dict[str, list[Event]] = defaultdict(list)
        for e in events:
            if getattr(e, key) is not None:
                by_entity[getattr(e, key)].append(e)
        for ent, evs in by_entity.items():
            tiles = parse_tiles(client.hgetall(f"fs:{{{name}|{ent}}}:b:{pointer.version}"))
            for t in (pointer.cutover, pointer.cutover + 37 * MINUTE, pointer.cutover + 23 * HOUR):
                got = evaluate(view, lookup_in_dict(tiles), t)
                want = bruteforce.values(view, evs, ent, t)
                assert all(bruteforce_close(got[n], want[n]) for n in want), (name, ent, t, got, want)
                checked += 1
    assert checked > 500


def bruteforce_close(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(abs(a - b) <= 1e-9 * max(1.0, abs(b)))


# --------------------------------------------------------------------------------------------------- API


def test_api_killed_while_serving_then_restarted(redis_server: RedisServer, tmp_path: Path) -> None:
    rng = random.Random(SEED + 2)
    url = redis_server.url.rsplit("/", 1)[0] + "/11"
    rdb = redis.Redis.from_url(url)
    rdb.flushdb()
    events = make_events(SEED, 3000)
    load(rdb, events, "v1", C)
    port = free_port()
    env = {
        **os.environ,
        "FSTORE_REDIS_URL": url,
        "FSTORE_DATA_DIR": str(tmp_path / "data"),
        "FSTORE_API_SAMPLE_RATE": "0",
    }

    def start() -> subprocess.Popen[bytes]:
        log = open(tmp_path / "api.log", "ab")  # noqa: SIM115 - owned by the process
        proc = subprocess.Popen(
            [FSTORE, "serve", "--port", str(port), "--workers", "2"],
            env=env,
            cwd=tmp_path,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, (tmp_path / "api.log").read_text()[-3000:]
            try:
                httpx.get(f"http://127.0.0.1:{port}/health", timeout=1)  # any answer: it serves
                return proc
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "api.log").read_text()[-3000:]
            time.sleep(0.2)

    stats = {"ok": 0, "failed": 0}
    last = [""]
    stop = threading.Event()

    def hammer() -> None:  # 8 connections of keep-alive reads until told to stop
        async def one() -> None:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
                while not stop.is_set():
                    try:
                        r = await client.get("/features", params={"user_id": "u1", "features": "user_activity"})
                        stats["ok" if r.status_code == 200 else "failed"] += 1
                        if r.status_code != 200:
                            last[0] = f"{r.status_code} {r.text[:300]}"
                    except httpx.HTTPError:
                        stats["failed"] += 1
                        await asyncio.sleep(0.05)

        async def all_() -> None:
            await asyncio.gather(*(one() for _ in range(8)))

        asyncio.run(all_())

    procs: list[subprocess.Popen[bytes]] = []
    try:
        for round_ in range(2):
            proc = start()
            procs.append(proc)
            load_thread = threading.Thread(target=hammer)
            load_thread.start()
            wait, before, deadline = rng.uniform(0.0, 2.0), stats["ok"], time.monotonic() + 60
            while stats["ok"] == before:  # serving
                assert time.monotonic() < deadline, (stats, last)
                time.sleep(0.01)
            print(f"kill -9 seed {SEED + 2}: API killed {wait:.2f} s into serving (round {round_})")
            time.sleep(wait)
            served = stats["ok"]
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(10)
            session_gone(proc.pid)  # no uvicorn worker outlives its parent
            time.sleep(0.5)
            stop.set()
            load_thread.join(30)
            stop.clear()
            assert served > 0, (stats, last)
        proc = start()
        procs.append(proc)
        check_api(port, events)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
        session_gone(proc.pid)
    finally:
        for p in procs:  # each server's whole session (its own process group), whatever a failure left
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)
        rdb.close()


def check_api(port: int, events: list[Event]) -> None:
    """Every user's and product's whole view equals the brute force at the answer's own ``as_of``."""
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
        for name, view in VIEWS.items():
            key = view.entity.join_key
            for ent in sorted({getattr(e, key) for e in events if getattr(e, key) is not None}):
                r = client.get("/features", params={key: ent, "features": name})
                assert r.status_code == 200, r.text
                body = r.json()
                as_of = body["as_of_us"]
                got, want = body["rows"][0]["values"], bruteforce.values(view, events, ent, as_of)
                assert all(bruteforce_close(got[f"{name}:{k}"], v) for k, v in want.items()), (ent, got, want)
