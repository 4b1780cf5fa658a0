"""``fstore repair`` after Redis lost its data restores the stream's event_id claims (docs/design.md §2).

Traffic goes through the worker's own code in process (``SpeedLayer.handle``: validation, claims, the Lua
tile writer on a real Redis, the raw sink on a real Delta table); Redis is then flushed and repaired from
``raw_events``; a restarted worker then receives later copies of replayed and older event_ids under other
entities and with other payloads. Every speed tile must equal the independent brute force over the first
copies (tests/support/stream.py), and every value the contract's brute force (tests/support/plan_bruteforce.py).
On a standalone Redis and on a Redis Cluster (the claims go out one bucket, so one hash slot, per call).
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import orjson
import pytest
import redis

from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR, MINUTE
from fstore.online.merge import EntityRead
from fstore.online.reader import OnlineReader
from fstore.plan_source import current_plan
from fstore.redis.connect import async_client
from fstore.redis.layout import LOST_WRITES_KEY
from jobs.batch.settings import BatchSettings
from jobs.repair import repair
from jobs.stream.claims import HASH_CHARS
from jobs.stream.fakes import ListDeadLetters
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings
from tests.support import plan_bruteforce
from tests.support.legacy.events_example import Event, parse
from tests.support.messages import event_message as ev
from tests.support.stream import Traffic, assert_tiles_exact, make_traffic

pytestmark = pytest.mark.integration

Sync = redis.Redis | redis.RedisCluster


@pytest.fixture(params=["standalone", "cluster"])
def target(request: pytest.FixtureRequest) -> Iterator[tuple[str, bool, Sync]]:
    """``(url, cluster?, a client)`` of an empty Redis: the session's server or its 3-primary cluster."""
    cluster = request.param == "cluster"
    url = request.getfixturevalue("redis_cluster" if cluster else "redis_server").url
    client: Sync = redis.RedisCluster.from_url(url) if cluster else redis.Redis.from_url(url)
    flush(client)
    try:
        yield url, cluster, client
    finally:
        client.close()


def flush(client: Sync) -> None:
    """Redis restarted empty (every primary of a cluster)."""
    if isinstance(client, redis.RedisCluster):
        client.flushall(target_nodes=redis.RedisCluster.PRIMARIES)
    else:
        client.flushdb()


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    offset: int
    timestamp: int


async def through_the_worker(s: StreamSettings, values: list[bytes]) -> None:
    """One worker process's life: its batches of ``values``, then its raw sink flushed (as on SIGTERM)."""
    client: Any = async_client(s.redis_url, s.redis_cluster, timeout=10, connect_timeout=5)
    layer = SpeedLayer(s, None, ListDeadLetters(), kv=client)
    try:
        records = [Record(None, v, i, 0) for i, v in enumerate(values)]
        for lo in range(0, len(records), 1_000):
            await layer.handle({"events-0": records[lo : lo + 1_000]})
        await layer.flush()
    finally:
        await client.aclose()


def claims(client: Sync) -> dict[str, str]:
    """Every event_id claim in Redis: event_id → value."""
    out: dict[str, str] = {}
    for key in client.scan_iter(match="fs:{claim:*}:c:*"):
        out.update({k.decode(): v.decode() for k, v in client.hgetall(key).items()})  # type: ignore[union-attr]
    return out


def test_repair_restores_the_claims_so_later_copies_under_other_entities_never_count(
    target: tuple[str, bool, Sync], tmp_path: Path
) -> None:
    url, cluster, redis_client = target
    plan = current_plan()
    s = StreamSettings(redis_url=url, redis_cluster=cluster, data_dir=str(tmp_path / "data"))
    now = time.time_ns() // 1000
    since = now - plan.longest_window - plan.largest_hop  # no batch view: the repair replays from here on
    assert s.horizon_us > now - since + 2 * HOUR
    traffic = make_traffic(3_000, seed=21, users=40, products=12)
    a = ev("a", "u1", "p1", now - 2 * MINUTE)
    c = ev("c", "u1", "p2", now - 3 * MINUTE, "click")
    d = ev("d", "u5", "p5", since - 2 * HOUR)  # in the tiles (inside the horizon), but before the replay
    b = ev("b", "u3", "p3", now - 10 * DAY)  # too old for the tiles: claimed with its hash alone
    asyncio.run(through_the_worker(s, [*traffic.values, a, c, d, b]))
    worker_claims = claims(redis_client)
    assert {"a", "b", "c", "d"} <= worker_claims.keys() and len(worker_claims) == len(traffic.valid_ids) + 4

    flush(redis_client)  # Redis restarted empty
    report = repair(BatchSettings(redis_url=url, redis_cluster=cluster, data_dir=s.data_dir), s)
    assert (report.speed_events, report.speed_skipped, report.speed_taken) == (len(traffic.valid_ids) + 2, 0, 0)
    assert report.claims == len(worker_claims)
    # As the worker wrote them (payload hash and entities), but a winner the repair does not replay claims
    # with its hash alone: no marker covers its entities any more.
    assert claims(redis_client) == {eid: v[:HASH_CHARS] if eid in ("b", "d") else v for eid, v in worker_claims.items()}

    later = [
        ev("a", "u2", "p2", now - MINUTE, price=99.0),  # a replayed event, re-sent under other entities
        a,  # the same copy redelivered: counts once
        ev("c", "u1", "p2", now - MINUTE, "click"),  # same entities, another payload: the markers skip it
        ev("d", "u6", "p6", now - MINUTE, "click"),  # first copy before the replay, not replayed
        ev("b", "u4", "p4", now - MINUTE // 2, "click"),  # first copy too old for the tiles
        ev("f", "u6", "p6", now - MINUTE, "click"),  # a new event: counts
    ]
    asyncio.run(through_the_worker(s, later))  # the worker restarted

    first: dict[str, Event] = {}
    for raw in [*traffic.values, a, c, d, b, *later]:
        e = parse(raw, now + MINUTE, orjson.loads)
        if isinstance(e, Event):
            first.setdefault(e.event_id, e)
    replayed = [e for e in first.values() if e.event_time >= since]
    assert {"a", "c", "f"} <= {e.event_id for e in replayed} and not {"b", "d"} & {e.event_id for e in replayed}
    assert_tiles_exact(redis_client, Traffic([], [], Counter(), set(first), replayed))

    async def read(entities: list[tuple[str, str]], as_of: int) -> list[dict[str, Any]]:
        client = async_client(url, cluster, timeout=10, connect_timeout=5)
        try:
            reads = [EntityRead(plan.view(v), e, plan.view(v).feature_names) for v, e in entities]
            snap = await OnlineReader(client, clock=lambda: as_of).read(reads, as_of=as_of)
            return [dict(r.values) for r in snap.results]
        finally:
            await client.aclose()

    entities = [("user_activity", f"u{i}") for i in range(1, 7)] + [
        ("product_engagement", f"p{i}") for i in range(1, 7)
    ]
    as_of = now + MINUTE
    rows = [e._asdict() for e in first.values()]
    for (view, entity), got in zip(entities, asyncio.run(read(entities, as_of)), strict=True):
        want = plan_bruteforce.values(plan, view, rows, entity, as_of)
        assert got.keys() == want.keys() and all(isclose(got[k], v) for k, v in want.items()), (view, entity, got, want)


def test_a_later_copy_counted_after_the_loss_makes_the_repair_loud_until_flushed_and_repaired(
    target: tuple[str, bool, Sync], tmp_path: Path
) -> None:
    """Redis restarts empty while the worker runs on: it counts a later copy of an event (same id, another
    user) with no claim to stop it. A repair without a flush first cannot undo that: it must say so (not
    exact, the lost-writes flag set, so GET /health stays degraded); stop, flush, repair: exact again."""
    url, cluster, redis_client = target
    plan = current_plan()
    s = StreamSettings(redis_url=url, redis_cluster=cluster, data_dir=str(tmp_path / "data"))
    b = BatchSettings(redis_url=url, redis_cluster=cluster, data_dir=s.data_dir)
    now = time.time_ns() // 1000
    firsts = [ev(f"e{i}", "u1", "p1", now - 5 * MINUTE + i * 1000, "click") for i in range(5)]
    asyncio.run(through_the_worker(s, firsts))
    flush(redis_client)  # Redis restarted empty; the worker keeps consuming
    later = [ev(f"e{i}", "u2", "p2", now - 4 * MINUTE + i * 1000, "click") for i in range(5)]
    asyncio.run(through_the_worker(s, later))

    report = repair(b, s, force=True)  # the worker (in process) has stopped; Redis not flushed again
    assert report.speed_taken == 5
    flag = redis_client.get(LOST_WRITES_KEY)  # GET /health degraded until a flush and a repair
    assert flag is not None and b"claimed in Redis by another copy" in flag
    assert not report.exact  # `fstore repair` exits 1

    flush(redis_client)
    report = repair(b, s)
    assert (report.speed_events, report.speed_taken, report.exact) == (5, 0, True)
    assert redis_client.get(LOST_WRITES_KEY) is None

    async def read(user: str) -> dict[str, Any]:
        client = async_client(url, cluster, timeout=10, connect_timeout=5)
        try:
            reads = [EntityRead(plan.view("user_activity"), user, plan.view("user_activity").feature_names)]
            snap = await OnlineReader(client, clock=lambda: now).read(reads, as_of=now)
            return dict(snap.results[0].values)
        finally:
            await client.aclose()

    rows = [e._asdict() for raw in firsts if isinstance(e := parse(raw, now, orjson.loads), Event)]
    for user in ("u1", "u2"):
        want = plan_bruteforce.values(plan, "user_activity", rows, user, now)
        got = asyncio.run(read(user))
        assert all(isclose(got[k], v) for k, v in want.items()), (user, got, want)
    assert asyncio.run(read("u1"))["clicks_1h"] == 5
