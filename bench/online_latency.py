"""Benchmark: online latency and throughput of the fstore API against Feast's own feature server.

1. Starts a private redis-server and loads realistic tiles: ``--days`` of synthetic traffic for
   ``--users`` users and ``--products`` products (:mod:`examples.synth.generator`, parsed and tiled with the
   core), batch tiles before the cutover C (today 00:00 UTC) under a published batch version, speed tiles
   from C on — as the batch and stream layers write them.
2. Starts ``fstore serve`` (uvicorn, 1 worker) on 127.0.0.1 and reads the final values of every entity.
3. Writes those same values into Feast's standard ``redis`` online store (same redis-server) through
   ``FeatureStore.write_to_online_store`` in a temporary feature repo, and starts ``feast serve`` (1 worker).
4. Hits both, from this process (a separate process from both servers), with the same entities: one
   entity × all features of ``user_activity`` at concurrency 1 and 32, and POSTs of 100 entities at
   concurrency 1 and 32. A minimal keep-alive HTTP/1.1 client keeps the load generator cheap. Each phase
   is bounded by ``--phase-seconds`` and a request count.

Prints one JSON object: per server and phase p50/p99 (ms), requests/s and the server's CPU ms per request
(its process tree, from ``/proc``: on a shared machine this moves far less than requests/s), the ratios
fstore/Feast, and the targets (single-entity p99 ≤ 5 ms at concurrency 1; ≥ 3× Feast's requests/s).

``--speed-hours H`` puts the cutover H hours back (hour-aligned) instead of at today 00:00 UTC, so the speed
view holds H hours of tiles whatever the time of day the bench runs (just after midnight it would hold
minutes only, which flatters the per-request speed-hash decoding).

``--no-feast --variant NAME:VAR=VALUE,...`` compares fstore servers that differ only in their environment
(same data, phases interleaved), e.g. the cost of the served-response sampling and of Prometheus
multiprocess mode: ``--variant off:FSTORE_API_SAMPLE_RATE=0 --variant mp:PROMETHEUS_MULTIPROC_DIR={tmp}``;
the report then has each variant's CPU per request over the default server's.
A variant ``before:PYTHONPATH=/path/to/other/checkout`` serves the same data with another version of fstore
(the servers import ``fstore`` and ``services`` from ``PYTHONPATH`` first): a before/after comparison in one run.

``--redis-cluster`` also starts a 3-primary Redis Cluster on loopback ports (:mod:`fstore.devsvc.cluster`), loads
the same tiles into it and serves them with ``FSTORE_REDIS_CLUSTER=1`` as the variant ``cluster`` (same phases,
interleaved): standalone vs Cluster p50/p99, requests/s and CPU per request in one run. The report then also
says whether both servers return the same values, and the Redis processes' CPU per request of each.

Usage: ``python bench/online_latency.py [--users 10000] [--products 1000] [--days 8] [--phase-seconds 10]
[--speed-hours 13] [--no-feast] [--variant NAME:VAR=VALUE ...] [--redis-cluster]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import redis
import yaml
from proc_cpu import tree_cpu_seconds

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: tests.support.legacy

from examples.synth.generator import GeneratorConfig, generate
from fstore.clock import wall_clock
from fstore.core.timeutil import DAY, HOUR, MINUTE, floor_to
from fstore.devsvc.cluster import RedisCluster
from fstore.devsvc.services import HOST, RedisServer, free_port
from fstore.plan_source import current_plan
from fstore.redis.layout import POINTER_KEY, BatchPointer, batch_key, partial_fields, speed_key
from tests.support.legacy.events_example import Event, parse
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY, VIEWS
from tests.support.legacy.tiles import build_tiles

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
VERSION = "bench"
Request = bytes  # one complete HTTP/1.1 request
Maker = Callable[[int], Request]  # i-th request of a phase


# -- data -------------------------------------------------------------------------------------------------


def make_events(users: int, products: int, days: int, now: int) -> list[Event]:
    """Valid events of the synthetic stream over ``[now - days, now - 1 min)``."""
    cfg = GeneratorConfig(start=now - days * DAY, end=now - MINUTE, users=users, products=products)
    out = []
    for batch in generate(cfg, seed=7):
        for raw in batch.values:
            ev = parse(raw, now)
            if isinstance(ev, Event):
                out.append(ev)
    return out


def load_tiles(client: redis.Redis | redis.RedisCluster, events: list[Event], cutover: int) -> int:
    """Batch tiles (< C) under :data:`VERSION`, speed tiles (>= C) per day, then the pointer; returns #keys."""
    hashes: dict[str, dict[str, str]] = {}
    for view in VIEWS.values():
        for (entity, size, start), tile in build_tiles(view, events).items():
            key = batch_key(view.name, entity, VERSION) if start < cutover else speed_key(view.name, entity, start)
            slot = hashes.setdefault(key, {})
            for measure, p in tile.items():
                slot.update(partial_fields(size, start, measure, p))
    pipe = client.pipeline(transaction=False)
    for i, (key, fields) in enumerate(hashes.items()):
        pipe.hset(key, mapping=fields)  # type: ignore[arg-type]
        if i % 2000 == 1999:
            pipe.execute()
    pipe.execute()
    client.set(POINTER_KEY, BatchPointer(VERSION, cutover).dumps())
    return len(hashes)


def memory_figures(used: int, users: int, products: int, keys: int) -> dict[str, Any]:
    """Redis memory of the loaded views per key, per entity and per (entity, feature) (INFO used_memory)."""
    cells = users * len(USER_ACTIVITY.features) + products * len(PRODUCT_ENGAGEMENT.features)
    return {
        "used_bytes": used,
        "users": users,
        "products": products,
        "bytes_per_key": round(used / max(keys, 1)),
        "bytes_per_entity": round(used / max(users + products, 1)),
        "bytes_per_entity_feature": round(used / max(cells, 1)),
    }


# -- servers ----------------------------------------------------------------------------------------------


@contextmanager
def server(cmd: list[str], port: int, cwd: Path, env: dict[str, str], log: Path) -> Iterator[tuple[str, int]]:
    """Run a server subprocess until its port answers; yields its base URL and pid; stops it on exit."""
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://{HOST}:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"{cmd[0]} exited with {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                httpx.get(f"{base}/health", timeout=1.0)
                break
            except httpx.HTTPError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{cmd} did not start: {log.read_text()[-2000:]}") from None
                time.sleep(0.2)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def feast_repo(tmp: Path, redis_port: int) -> Path:
    """A copy of feature_repo whose online store is Feast's standard redis store, applied."""
    repo = tmp / "feast_repo"
    shutil.copytree(ROOT / "feature_repo", repo, ignore=shutil.ignore_patterns("data"))
    cfg = yaml.safe_load((repo / "feature_store.yaml").read_text())
    cfg["online_store"] = {"type": "redis", "connection_string": f"{HOST}:{redis_port},db=0"}
    cfg["offline_store"] = {"type": "file"}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    env = {**os.environ, "FSTORE_DATA_DIR": str(tmp / "data")}
    res = subprocess.run([str(BIN / "feast"), "apply"], cwd=repo, env=env, capture_output=True, text=True, timeout=300)
    if res.returncode:
        raise RuntimeError(res.stdout + res.stderr)
    return repo


def materialize(repo: Path, values: dict[str, pd.DataFrame]) -> None:
    """Write the final values into Feast's redis online store (the standard Feast path)."""
    from feast import FeatureStore

    fs = FeatureStore(repo_path=str(repo))
    for view, df in values.items():
        fs.write_to_online_store(view, df)


#: The timestamp column of Feast rows: the stream feature views' timestamp field (the plan's event time).
TS = current_plan().schema.timestamp_field


def final_values(base: str, entities: dict[str, list[str]]) -> dict[str, pd.DataFrame]:
    """Every entity's current values from the fstore API, as one DataFrame per view (Feast's row shape)."""
    out = {}
    with httpx.Client(base_url=base, timeout=30) as client:
        for view in (USER_ACTIVITY, PRODUCT_ENGAGEMENT):
            key, rows = view.entity.join_key, []
            ids = entities[key]
            for lo in range(0, len(ids), 1000):
                body = {"entities": [{key: e} for e in ids[lo : lo + 1000]], "features": [view.name]}
                resp = client.post("/features", json=body)
                resp.raise_for_status()
                ts = pd.Timestamp(resp.json()["as_of"])
                for row in resp.json()["rows"]:
                    rec = {n.split(":", 1)[1]: v for n, v in row["values"].items()}
                    rows.append({key: row["entity"][key], TS: ts, **rec})
            df = pd.DataFrame(rows)
            for f in view.features:  # nullable columns keep their Feast dtype
                df[f.name] = df[f.name].astype("Int64" if f.dtype == "int64" else "float64")
            out[view.name] = df
    return out


# -- load generator -------------------------------------------------------------------------------------


def http_get(path: str) -> Request:
    return f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\n\r\n".encode()


def http_post(path: str, body: Any) -> Request:
    data = json.dumps(body).encode()
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\nContent-Length: {len(data)}"
    return head.encode() + b"\r\n\r\n" + data


async def _exchange(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, req: Request) -> int:
    """Send one request on a keep-alive connection and read the whole response; returns the status."""
    writer.write(req)
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    await reader.readexactly(length)
    return status


async def _run(port: int, make: Maker, concurrency: int, max_requests: int, seconds: float) -> dict[str, Any]:
    lat: list[float] = []
    errors = 0
    counter = iter(range(max_requests))
    deadline = 0.0  # set after the warm-up

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection(HOST, port)
        try:
            for i in counter:
                if time.perf_counter() > deadline:
                    break
                t = time.perf_counter()
                status = await _exchange(reader, writer, make(i))
                lat.append(time.perf_counter() - t)
                errors += status != 200
        finally:
            writer.close()

    for i in range(WARMUP):  # on one connection
        r, w = await asyncio.open_connection(HOST, port)
        await _exchange(r, w, make(i))
        w.close()
    start = time.perf_counter()
    deadline = start + seconds
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - start
    lat.sort()
    n = len(lat)
    if not n:
        raise RuntimeError(f"no request completed against port {port}")
    return {
        "requests": n,
        "errors": errors,
        "seconds": round(elapsed, 2),
        "rps": round(n / elapsed, 1),
        "p50_ms": round(lat[n // 2] * 1000, 3),
        "p99_ms": round(lat[min(n - 1, int(n * 0.99))] * 1000, 3),
    }


def fstore_requests(sample: list[str], batches: list[list[str]]) -> tuple[Maker, Maker]:
    """Request makers for the fstore API: single entity (GET) and 100 entities (POST), whole view."""

    def single(i: int) -> Request:
        return http_get(f"/features?user_id={sample[i % len(sample)]}&features=user_activity")

    def batch(i: int) -> Request:
        rows = [{"user_id": u} for u in batches[i % len(batches)]]
        return http_post("/features", {"entities": rows, "features": ["user_activity"]})

    return single, batch


def feast_requests(sample: list[str], batches: list[list[str]], feats: list[str]) -> tuple[Maker, Maker]:
    """The same requests for Feast's feature server (POST /get-online-features)."""

    def single(i: int) -> Request:
        return http_post(
            "/get-online-features", {"features": feats, "entities": {"user_id": [sample[i % len(sample)]]}}
        )

    def batch(i: int) -> Request:
        return http_post(
            "/get-online-features", {"features": feats, "entities": {"user_id": batches[i % len(batches)]}}
        )

    return single, batch


WARMUP = 20  # requests before each measured phase

PHASES = {
    "single_c1": (False, 1, 20_000),
    "single_c32": (False, 32, 200_000),
    "batch100_c1": (True, 1, 5_000),
    "batch100_c32": (True, 32, 50_000),
}


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process ``pid`` and its descendants (Linux ``/proc``; else ``None``)."""
    return tree_cpu_seconds(pid, reaped=False)


def phases(targets: dict[str, tuple[int, int, Maker, Maker]], seconds: float) -> dict[str, dict[str, Any]]:
    """Every phase against every server, interleaved (fstore, Feast, fstore, ...) so that a change in
    background load during the run hits both sides alike; each result records the 1-minute load average
    and the server's CPU milliseconds per request (its process tree), which background load changes far
    less than requests/s."""
    out: dict[str, dict[str, Any]] = {name: {} for name in targets}
    for phase, (is_batch, concurrency, cap) in PHASES.items():
        for name, (port, pid, single, batch) in targets.items():
            cpu = cpu_seconds(pid)
            res = asyncio.run(_run(port, batch if is_batch else single, concurrency, cap, seconds))
            used = cpu_seconds(pid)
            per_request = (
                None if cpu is None or used is None else round((used - cpu) * 1000 / (res["requests"] + WARMUP), 3)
            )
            out[name][phase] = {
                **res,
                "server_cpu_ms_per_request": per_request,
                "loadavg_1m": round(os.getloadavg()[0], 2),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--products", type=int, default=1_000)
    ap.add_argument("--days", type=int, default=8)
    ap.add_argument("--phase-seconds", type=float, default=10.0)
    ap.add_argument(
        "--speed-hours", type=float, default=0.0, help="cutover this many hours back (hour-aligned); 0: today 00:00 UTC"
    )
    ap.add_argument("--no-feast", action="store_true", help="skip Feast: compare fstore variants only")
    ap.add_argument(
        "--redis-cluster", action="store_true", help="also serve the same tiles from a 3-primary Redis Cluster"
    )
    ap.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME:VAR=VALUE[,VAR=VALUE...]",
        help="also serve with these environment variables ({tmp}: a scratch folder), same data, phases interleaved",
    )
    args = ap.parse_args()
    now = wall_clock()
    cutover = floor_to(now, DAY) if args.speed_hours <= 0 else floor_to(now - int(args.speed_hours * HOUR), HOUR)
    report_cutover_age_h = round((now - cutover) / HOUR, 2)
    report: dict[str, Any] = {
        "config": vars(args),
        "cpus": os.cpu_count(),
        "loadavg_1m_at_start": round(os.getloadavg()[0], 2),
        "speed_view_hours": report_cutover_age_h,
    }
    with (
        tempfile.TemporaryDirectory(prefix="fstore-bench-") as tmpdir,
        RedisServer(state_dir=Path(tmpdir) / "redis") as rs,
    ):
        tmp = Path(tmpdir)
        client = redis.Redis.from_url(rs.url)
        t = time.perf_counter()
        events = make_events(args.users, args.products, args.days, now)
        report["events"] = len(events)
        report["generate_s"] = round(time.perf_counter() - t, 1)
        t = time.perf_counter()
        empty = int(client.info("memory")["used_memory"])
        report["redis_keys"] = load_tiles(client, events, cutover)
        report["load_s"] = round(time.perf_counter() - t, 1)
        users = sorted({e.user_id for e in events})
        products = sorted({e.product_id for e in events if e.product_id})
        report["redis_memory"] = memory_figures(
            int(client.info("memory")["used_memory"]) - empty, len(users), len(products), report["redis_keys"]
        )
        del events
        env = {k: v for k, v in os.environ.items() if k != "FSTORE_API_KEY"}  # no auth in the bench
        env.update(FSTORE_REDIS_URL=rs.url, PYTHONPATH=str(ROOT))
        rng = random.Random(1)
        sample = [rng.choice(users) for _ in range(4096)]
        batches = [[rng.choice(users) for _ in range(100)] for _ in range(256)]
        feats = [f"user_activity:{n}" for n in USER_ACTIVITY.feature_names]

        env["FSTORE_SAMPLES_DIR"] = str(tmp / "samples")
        variants = {"fstore": env}
        for spec in args.variant:
            name, _, assigns = spec.partition(":")
            extra = dict(a.split("=", 1) for a in assigns.split(",") if a)
            variants[name] = {**env, **{k: v.replace("{tmp}", str(tmp / name)) for k, v in extra.items()}}
            for v in extra.values():
                if "{tmp}" in v:
                    (tmp / name).mkdir(exist_ok=True)
        cluster = None
        if args.redis_cluster:
            cluster = RedisCluster(tmp / "cluster", primaries=3).start()
            ccl = redis.RedisCluster.from_url(cluster.url)
            t = time.perf_counter()
            events = make_events(args.users, args.products, args.days, now)
            report["cluster_redis_keys"] = load_tiles(ccl, events, cutover)
            report["cluster_load_s"] = round(time.perf_counter() - t, 1)
            del events
            ccl.close()
            variants["cluster"] = {**env, "FSTORE_REDIS_URL": cluster.url, "FSTORE_REDIS_CLUSTER": "1"}
        fsingle, fbatch = fstore_requests(sample, batches)
        targets: dict[str, tuple[int, int, Maker, Maker]] = {}
        with contextlib.ExitStack() as stack:
            for name, venv in variants.items():
                port = free_port()
                cmd = [str(BIN / "fstore"), "serve", "--host", HOST, "--port", str(port), "--workers", "1"]
                _, pid = stack.enter_context(server(cmd, port, ROOT, venv, tmp / f"{name}.log"))
                targets[name] = (port, pid, fsingle, fbatch)
            # The standalone redis-server serves every target but "cluster"; the cluster's nodes serve "cluster".
            redis_pids = {"standalone": [rs.pid]} | ({"cluster": [n.pid for n in cluster.nodes]} if cluster else {})
            redis_cpu0 = {k: sum(tree_cpu_seconds(p) or 0.0 for p in v if p) for k, v in redis_pids.items()}
            if cluster is not None:
                some = {"user_id": users[:200], "product_id": products[:200]}
                for _ in range(2):  # a hop boundary passing between the two reads moves windows: read again
                    a = final_values(f"http://{HOST}:{targets['fstore'][0]}", some)
                    b = final_values(f"http://{HOST}:{targets['cluster'][0]}", some)
                    same = all(a[k].drop(columns=TS).equals(b[k].drop(columns=TS)) for k in a)
                    if same:
                        break
                report["cluster_values_match_standalone"] = same
            if not args.no_feast:
                values = final_values(
                    f"http://{HOST}:{targets['fstore'][0]}", {"user_id": users, "product_id": products}
                )
                t = time.perf_counter()
                repo = feast_repo(tmp, rs.port or 0)
                materialize(repo, values)
                report["feast_materialize_s"] = round(time.perf_counter() - t, 1)
                gport = free_port()
                feast_cmd = [
                    str(BIN / "feast"),
                    "serve",
                    "-h",
                    HOST,
                    "-p",
                    str(gport),
                    "-w",
                    "1",
                    "--no-access-log",
                    "--max-requests",
                    "10000000",
                ]
                gbase, gpid = stack.enter_context(server(feast_cmd, gport, repo, env, tmp / "feast.log"))
                check = httpx.post(
                    f"{gbase}/get-online-features",
                    timeout=30,
                    json={"features": feats, "entities": {"user_id": users[:50]}},
                ).json()
                got = check["results"][check["metadata"]["feature_names"].index("clicks_24h")]["values"]
                want = values["user_activity"].set_index("user_id").loc[users[:50], "clicks_24h"].tolist()
                report["feast_values_match_fstore"] = [int(g) for g in got] == [int(w) for w in want]
                gsingle, gbatch = feast_requests(sample, batches, feats)
                targets["feast"] = (gport, gpid, gsingle, gbatch)
            report.update(phases(targets, args.phase_seconds))
            served = {k: sum(report[k][ph]["requests"] + WARMUP for ph in PHASES) for k in targets}
            requests = {
                "standalone": sum(n for k, n in served.items() if k != "cluster"),
                "cluster": served.get("cluster"),
            }
            report["redis_cpu_ms_per_request"] = {
                k: round(
                    (sum(tree_cpu_seconds(p) or 0.0 for p in v if p) - redis_cpu0[k]) * 1000 / (requests[k] or 1), 3
                )
                for k, v in redis_pids.items()
            }
        if cluster is not None:
            cluster.stop()
    f = report["fstore"]
    for name in variants:
        if name != "fstore":
            v = report[name]
            report[f"ratio_cpu_per_request_{name}_over_fstore"] = {
                k: round(v[k]["server_cpu_ms_per_request"] / f[k]["server_cpu_ms_per_request"], 3)
                for k in f
                if v[k]["server_cpu_ms_per_request"] and f[k]["server_cpu_ms_per_request"]
            }
    if args.no_feast:
        print(json.dumps(report, indent=2))
        return
    g = report["feast"]
    report["ratio_rps_fstore_over_feast"] = {k: round(f[k]["rps"] / g[k]["rps"], 2) for k in f}
    report["ratio_cpu_per_request_feast_over_fstore"] = {
        k: round(g[k]["server_cpu_ms_per_request"] / f[k]["server_cpu_ms_per_request"], 2)
        for k in f
        if g[k]["server_cpu_ms_per_request"] and f[k]["server_cpu_ms_per_request"]
    }
    report["targets"] = {
        "single_c1_p99_le_5ms": f["single_c1"]["p99_ms"] <= 5.0,
        "rps_ge_3x_feast": {k: v >= 3.0 for k, v in report["ratio_rps_fstore_over_feast"].items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
