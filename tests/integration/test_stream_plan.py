"""The speed layer runs any compiled plan: the ``rides`` repository through the real worker into real Redis.

Generated rides traffic (tests/support/rides_traffic.py) with duplicates carrying other payloads, late
(out-of-order) events, malformed and invalid messages and future-stamped events goes through
``SpeedLayer.handle`` with the real tile writer (Lua script) on a real Redis and the real raw sink on a
real Delta table. The speed tiles read back with :func:`fstore.redis.layout.parse_states` must equal the
reference tiler's (:class:`fstore.core.view_tiles.ViewTiler`) in every state the plan needs — count, sum,
min, max, the variance state and the distinct members — and the feature values must equal the brute force
of the contract (tests/support/plan_bruteforce.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import redis
import redis.asyncio as aredis

from fstore.core.event_check import EventCheck
from fstore.core.events import Rejection, parse_row
from fstore.core.functions import State
from fstore.core.plan import Plan, View
from fstore.core.tile_state import Acc
from fstore.core.timeutil import DAY, MINUTE
from fstore.core.view_tiles import ViewTiler, evaluate
from fstore.core.view_tiles_frame import member
from fstore.delta import raw_log
from fstore.devsvc.services import RedisServer
from fstore.redis.layout import parse_future, parse_states
from jobs.stream.fakes import ListDeadLetters
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import RawSink, TileWriter
from tests.support import plan_bruteforce
from tests.support.repos import compiled
from tests.support.rides_traffic import rides

pytestmark = pytest.mark.integration

NOW = 1_767_225_600_000_000 + 40 * DAY  # a fixed processing clock


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    offset: int
    timestamp: int


def messages(plan: Plan, seed: int) -> tuple[list[bytes], list[bytes]]:
    """``(messages, future messages)``: rides over the last two days as JSON (times in epoch ms), with
    duplicates (same id, other payload), events out of order, invalid messages, and a few stamped up to
    5 minutes ahead (sent last, after which the clock moves past them)."""
    rng = random.Random(seed)
    ts = plan.schema.timestamp_field
    rows = rides(2_500, NOW - 2 * DAY, 2 * DAY - MINUTE, seed, drivers=8, zones=4, riders=20)
    out: list[dict[str, Any]] = []
    for r in rows:
        ev = {k: v for k, v in r.items() if v is not None}
        ev[ts] = ev[ts] // 1000
        out.append(ev)
        if rng.random() < 0.04:  # a duplicate with another payload: the first copy wins
            out.append({**ev, "surge": 2.25, "tip": 1.0} if ev["kind"] != "requested" else dict(ev))
    rng.shuffle(out)  # late events everywhere: every tile is written by several batches (merged in Lua)
    raw = [json.dumps(ev).encode() for ev in out]
    raw[5:5] = [
        b"{oops",
        b"[1]",
        json.dumps({"uid": "bad1", "kind": "flew", "zone_id": "z1", ts: NOW // 1000}).encode(),
    ]
    raw[50:50] = [json.dumps({"uid": "bad2", "kind": "completed", "zone_id": "z1", "driver_id": "d1", ts: NOW // 1000,
                              "distance_km": -1.0, "rate_per_km": 1.0}).encode()]  # fmt: skip
    raw[90:90] = [
        json.dumps({"uid": "bad3", "kind": "requested", "zone_id": "z1", ts: NOW // 1000 + 3_600_000}).encode()
    ]
    future = [
        json.dumps({"uid": f"f{i}", "kind": "completed", "zone_id": "z0", "driver_id": "d0", "rider": f"fr{i}",
                    ts: NOW // 1000 + 60_000 * (i + 1), "distance_km": 3.5 + i, "rate_per_km": 1.25}).encode()
        for i in range(3)
    ]  # fmt: skip
    return raw, future


def first_rows(plan: Plan, values: list[bytes], now: int) -> tuple[list[dict[str, Any]], int]:
    """The first valid copy of each id (the contract's events) and the number of valid copies."""
    check = EventCheck(plan.schema, {e.join_key for e in plan.entities}).check
    first: dict[str, dict[str, Any]] = {}
    valid = 0
    for v in values:
        row = parse_row(v, now, check)
        if isinstance(row, Rejection):
            continue
        valid += 1
        first.setdefault(row[plan.schema.id_field], row)
    return list(first.values()), valid


def read_states(client: redis.Redis, view: View, entity: str) -> dict[tuple[int, int], dict[str, Acc]]:
    raw: dict[bytes, bytes] = {}
    for key in client.scan_iter(match=f"fs:{{{view.name}|{entity}}}:s:*"):
        raw.update(client.hgetall(key))  # type: ignore[arg-type]
    return parse_states(raw)


def close(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-9)


def assert_same_tiles(view: View, got: Mapping[tuple[int, int], Mapping[str, Acc]], want: Mapping[Any, Any]) -> int:
    """Every tile measure in both, equal in every state the plan's tiles need; returns how many."""
    needed = {(g.hop, tm.measure): tm.states for g in view.tiles for tm in g.measures}
    keys = {(k.size, k.start) for k in want}
    assert set(got) == keys, (view.name, sorted(set(got) ^ keys)[:5])
    n = 0
    for k, tile in want.items():
        mine = got[(k.size, k.start)]
        assert set(mine) == set(tile), (view.name, k, set(mine) ^ set(tile))
        for name, acc in tile.items():
            g, states = mine[name], needed[(k.size, name)]
            assert g.count == acc.count, (view.name, k, name)
            if State.SUM in states or State.M2 in states:
                assert close(g.total, acc.total), (view.name, k, name, g, acc)
            if State.MIN in states:
                assert close(g.minimum, acc.minimum), (view.name, k, name, g, acc)
            if State.MAX in states:
                assert close(g.maximum, acc.maximum), (view.name, k, name, g, acc)
            if State.M2 in states:
                assert math.isclose(g.m2, acc.m2, rel_tol=1e-9, abs_tol=1e-6), (view.name, k, name, g, acc)
            if State.DISTINCT in states:
                assert g.distinct == {member(x) for x in acc.distinct or ()}, (view.name, k, name)
            n += 1
    return n


def test_rides_plan_through_the_worker_into_redis(
    redis_server: RedisServer, redis_client: redis.Redis, tmp_path: Path
) -> None:
    plan = compiled("rides")
    values, future = messages(plan, seed=31)
    clock = [NOW]
    raw_uri = str(tmp_path / "raw_events")
    dead = ListDeadLetters()
    settings = StreamSettings(redis_url=redis_server.url)
    held: list[int] = []

    async def run() -> None:
        client = aredis.Redis.from_url(redis_server.url, socket_timeout=10)
        tiles = TileWriter(client, plan, 8 * 86_400, 8 * 86_400, chunk=300, clock=lambda: clock[0])
        raw = RawSink(raw_uri, plan.schema, 100_000, 3600.0)
        kv: Any = client
        layer = SpeedLayer(settings, None, dead, kv=kv, tiles=tiles, raw=raw, clock=lambda: clock[0], plan=plan)
        try:
            records = [Record(None, v, i, NOW // 1000) for i, v in enumerate(values + future)]
            for lo in range(0, len(records), 400):
                await layer.handle({"rides-0": records[lo : lo + 400]})
            fields: list[Any] = [f for k in redis_client.scan_iter(match="fs:*:s:*") for f in redis_client.hkeys(k)]
            held.append(sum(1 for f in fields if f.startswith(b"f:")))
            clock[0] = NOW + 10 * MINUTE  # their time has come: the worker moves them into the tiles
            await layer.move_due()
            await layer.flush()
        finally:
            await client.aclose()

    asyncio.run(run())
    rows, valid = first_rows(plan, values + future, NOW)
    assert held == [3 * len(plan.views)]  # each future ride feeds both views: stored as a field in each
    assert sorted(dead.reasons()) == sorted(
        ["malformed_json", "malformed_json", "unknown_kind", "negative_amount", "future_timestamp"]
    )

    ts = plan.schema.timestamp_field
    t = NOW + 10 * MINUTE
    compared = 0
    for view in plan.views:
        key = view.entity.join_key
        tiler = ViewTiler(view, ts)
        for entity in sorted({r[key] for r in rows if r.get(key) is not None}):
            mine = [r for r in rows if r.get(key) == entity]
            got = read_states(redis_client, view, entity)
            compared += assert_same_tiles(view, got, tiler.build(mine))
            values_got = evaluate(view, lambda size, start, got=got: got.get((size, start)), t)  # type: ignore[misc]
            want = plan_bruteforce.values(plan, view.name, mine, entity, t)
            for name, w in want.items():
                g = values_got[name]
                assert (g is None and w is None) or (g is not None and w is not None and close(float(g), float(w))), (
                    view.name, entity, name, g, w
                )  # fmt: skip
    assert compared > 300
    for k in redis_client.scan_iter(match="fs:*:s:*"):  # every future field moved
        assert not [f for f in redis_client.hkeys(k) if parse_future(f, b"{}") is not None]

    table = raw_log.read_table(raw_uri)
    assert table.schema.names == raw_log.raw_schema(plan.schema).names
    assert table.num_rows == valid
    assert len(set(table.column(plan.schema.id_field).to_pylist())) == len(rows)
