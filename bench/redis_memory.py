"""Benchmark: Redis memory of the online state per entity and per feature, on demo-sized traffic.

The demo's traffic (``python -m examples.demo``: 10,000 users, 1,000 products, about 6 events per
user per day) is generated for 8 days; into a fresh ``redis-server``:

1. the **batch view** for the last day's cutover C: the tiles of both views built by the core
   (:func:`fstore.core.view_tiles_frame.build_tiles`, what the Spark job runs per partition) and loaded by the
   job's own loader (:func:`jobs.batch.batch_view.load_tiles`);
2. the **speed view** of the day after C: that day's events applied by the worker's tile writer
   (:class:`jobs.stream.sinks.TileWriter`: speed tiles + one de-duplication marker per event_id).

After each step ``INFO memory`` (``used_memory`` minus the empty server's) gives bytes per entity, per
feature value served (entity × feature) and, for the speed view, per event of the day; ``MEMORY USAGE``
on sampled keys gives the size of one key of each kind. Prints one JSON object.

``python bench/redis_memory.py --users 10000 --products 1000 --events-per-user-day 6``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pyarrow as pa
import redis
import redis.asyncio as aredis

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.synth.generator import GeneratorConfig, generate  # noqa: E402
from fstore.core.events import Rejection  # noqa: E402
from fstore.core.timeutil import DAY  # noqa: E402
from fstore.core.view_tiles_frame import build_tiles  # noqa: E402
from fstore.devsvc.services import RedisServer  # noqa: E402
from fstore.plan_source import current_plan  # noqa: E402
from jobs.batch.batch_view import load_tiles  # noqa: E402
from jobs.batch.plan import size_horizons  # noqa: E402
from jobs.stream.sinks import TileWriter  # noqa: E402
from tests.support.legacy.events_example import Event, parse  # noqa: E402
from tests.support.legacy.features import VIEWS  # noqa: E402


def used(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


def sample_usage(client: redis.Redis, pattern: str, n: int = 200) -> float | None:
    """Mean ``MEMORY USAGE`` of up to ``n`` keys matching ``pattern``."""
    keys = []
    for k in client.scan_iter(match=pattern, count=5000):
        keys.append(k)
        if len(keys) >= n:
            break
    if not keys:
        return None
    return round(sum(int(client.memory_usage(k, samples=0) or 0) for k in keys) / len(keys), 1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--users", type=int, default=10_000)
    ap.add_argument("--products", type=int, default=1_000)
    ap.add_argument("--events-per-user-day", type=float, default=6.0, help="the demo's is about 6")
    args = ap.parse_args()
    days = 8
    cutover = (int(time.time()) // 86_400 - 1) * DAY  # C = yesterday 00:00 UTC; the speed day runs to today
    start = cutover - (days - 1) * DAY
    cfg = GeneratorConfig(
        start=start,
        end=cutover + DAY,
        events=int(args.users * args.events_per_user_day * days),
        users=args.users,
        products=args.products,
        duplicate_rate=0.01,
    )
    events: list[Event] = []
    for b in generate(cfg, 5):
        for v in b.values:
            ev = parse(v, cutover + 2 * DAY)
            if not isinstance(ev, Rejection):
                events.append(ev)
    unique = list({e.event_id: e for e in events}.values())
    batch_events = [e for e in unique if e.event_time < cutover]
    speed_events = [e for e in unique if e.event_time >= cutover]
    out: dict[str, Any] = {"users": args.users, "products": args.products, "events": len(unique)}
    with tempfile.TemporaryDirectory() as d, RedisServer(state_dir=Path(d)) as server:
        client = redis.Redis.from_url(server.url)
        empty = used(client)
        # 1. batch view
        table = pa.table(
            {
                "user_id": [e.user_id for e in batch_events],
                "product_id": [e.product_id for e in batch_events],
                "event_type": [e.event_type for e in batch_events],
                "event_time": pa.array([e.event_time for e in batch_events], pa.int64()),
                "price": [e.price for e in batch_events],
                "quantity": pa.array([e.quantity for e in batch_events], pa.int64()),
            }
        )
        batch: dict[str, Any] = {}
        plan = current_plan()
        for view in plan.views:
            name, before = view.name, used(client)
            tiles = build_tiles(view, plan.schema, table, size_horizons(view, cutover), cutover)
            keys, fields = load_tiles(tiles, view, "bench", client, 3 * 86_400, 500)
            grown = used(client) - before
            batch[name] = {
                "entities": keys,
                "tile_fields": fields,
                "features": len(view.feature_names),
                "bytes_per_entity": round(grown / keys),
                "bytes_per_entity_feature": round(grown / keys / len(view.feature_names), 1),
                "bytes_per_tile_field": round(grown / fields, 1),
                "memory_usage_per_key": sample_usage(client, f"fs:{{{name}|*}}:b:bench"),
            }
        out["batch_view"] = batch
        after_batch = used(client)

        # 2. speed view: one day of events through the worker's writer (tiles + markers)
        async def speed() -> None:
            aclient = aredis.Redis.from_url(server.url, socket_timeout=30)
            writer = TileWriter(aclient, current_plan(), 8 * 86_400, 8 * 86_400)
            random.Random(1).shuffle(speed_events)
            speed_events.sort(key=lambda e: e.event_time)
            for i in range(0, len(speed_events), 5_000):
                await writer.apply([e._asdict() for e in speed_events[i : i + 5_000]], cutover + 2 * DAY)
            await aclient.aclose()

        asyncio.run(speed())
        grown = used(client) - after_batch
        markers = sum(1 for _ in client.scan_iter(match="fs:*:seen:*", count=5000))
        entities = {n: sum(1 for _ in client.scan_iter(match=f"fs:{{{n}|*}}:s:*", count=5000)) for n in VIEWS}
        out["speed_view_one_day"] = {
            "events": len(speed_events),
            "marker_keys": markers,
            "tile_keys": entities,
            "bytes_per_event": round(grown / len(speed_events), 1),
            "memory_usage_marker_key": sample_usage(client, "fs:*:seen:*"),
            "memory_usage_tile_key": {n: sample_usage(client, f"fs:{{{n}|*}}:s:*") for n in VIEWS},
        }
        out["used_memory_mb"] = {
            "empty": round(empty / 2**20, 1),
            "with_batch_view": round(after_batch / 2**20, 1),
            "with_batch_and_speed_view": round(used(client) / 2**20, 1),
        }
        client.close()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
