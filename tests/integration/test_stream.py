"""Speed layer end to end: a real Apache Kafka broker, a real Redis, real Delta files, the worker as a process.

Expected tiles are computed independently of fstore.core's tile code: the first copy of each valid
event_id in log order, folded into (entity, size, start, measure) cells with the hop table restated in
tests/support/bruteforce.py. Every Redis field is compared (counts, min and max exactly; sums to 1e-9).
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
import redis

from fstore.delta import raw_log
from fstore.devsvc.services import Broker, RedisServer
from fstore.plan_source import current_plan
from fstore.redis.layout import HEARTBEAT_KEY, Heartbeat
from tests.support.redis_keys import keys_without_ttl
from tests.support.stream import (
    SECOND,
    Factory,
    assert_raw_and_dlq,
    assert_tiles_exact,
    make_traffic,
    publish,
)

pytestmark = pytest.mark.integration


def test_tiles_dlq_and_raw_log_are_exact(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(30_000, seed=11)
    w = worker_factory(kafka_broker)
    w.start()
    publish(kafka_broker, w.topic, traffic)
    w.wait_done(len(traffic.values), timeout=120)
    w.stop()  # SIGTERM: clean shutdown
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    assert_tiles_exact(redis_client, traffic)
    assert_raw_and_dlq(kafka_broker, w.dlq, tmp_path / "data", traffic, exact_dlq=True)
    beat = Heartbeat.loads(redis_client.get(HEARTBEAT_KEY))
    assert beat is not None and beat.newest_event_time == max(e.event_time for e in traffic.first_copies)
    assert abs(beat.committed_at - time.time_ns() // 1000) < 300 * SECOND
    assert keys_without_ttl(redis_client) == []  # tiles, markers, claims, heartbeat, the workers' registry


def test_tile_writer_rounds_script_flush_and_replay(redis_server: RedisServer, redis_client: redis.Redis) -> None:
    """The tile writer alone on a real Redis: batches cut across sessions (so subgroups hit markers that
    exist and go round again), the script cache flushed in between (NOSCRIPT, reload), whole replays."""
    import asyncio
    from functools import partial

    import redis.asyncio as aredis

    from jobs.stream.sinks import TileWriter

    traffic = make_traffic(12_000, seed=14, users=300, products=40)
    events = [e._asdict() for e in traffic.first_copies]
    batches = [events[i : i + 1_500] for i in range(0, len(events), 1_000)]  # overlapping: 500 repeats each

    async def run() -> int:
        client = aredis.Redis.from_url(redis_server.url, socket_timeout=10)
        writer = TileWriter(client, current_plan(), 8 * 86400, 8 * 86400, chunk=700)
        skipped = 0
        try:
            for i, batch in enumerate(batches):
                if i % 3 == 1:
                    await client.script_flush()
                sent: list[int] = []
                skipped += len(await writer.send(writer.plan(batch), on_sent=partial(sent.append, 1)))
                assert sent == [1]
            assert await writer.apply(events[:2_000]) == {e["event_id"] for e in events[:2_000]}
        finally:
            await client.aclose()
        return skipped

    skipped = asyncio.run(run())
    assert skipped == sum(len(b) for b in batches) - len(events)
    assert_tiles_exact(redis_client, traffic)


def test_kill_9_mid_run_then_restart_keeps_tiles_exact(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(200_000, seed=12, users=20_000, products=1_000)
    w = worker_factory(kafka_broker, FSTORE_STREAM_RAW_MAX_AGE_S="5")
    w.start()
    publish(kafka_broker, w.topic, traffic)
    deadline = time.monotonic() + 120
    while w.metric("fstore_stream_events_in_total") < 70_000:
        assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
        time.sleep(0.2)
    w.kill(signal.SIGKILL)
    done_before = w.committed()
    assert done_before < len(traffic.values)
    w.start()
    w.wait_done(len(traffic.values), timeout=240)
    w.stop()
    assert_tiles_exact(redis_client, traffic)
    assert_raw_and_dlq(kafka_broker, w.dlq, tmp_path / "data", traffic, exact_dlq=False)


def test_broker_restart_worker_reconnects_and_replay_counts_once(
    private_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    """The broker restarts under a running worker, then the source replays the whole stream.

    The worker has caught up with the first half; the broker stops and starts (its log kept); the source
    then publishes everything again, so the first half is in the topic twice. The worker — still the same
    process — reconnects and counts the replayed first half zero times more (markers). A broker killed in
    the middle of a run is tested in test_stream_broker_restart.py.
    """
    traffic = make_traffic(40_000, seed=13)
    w = worker_factory(private_broker)
    w.start()
    half = len(traffic.values) // 2
    publish(private_broker, w.topic, traffic, 0, half)
    w.wait_done(half, timeout=120)
    in_before = w.metric("fstore_stream_events_in_total")
    private_broker.restart()  # same port, same log
    time.sleep(3)  # the worker sees the outage (connection errors, group re-join)
    publish(private_broker, w.topic, traffic)  # the source replays everything
    w.wait_done(half + len(traffic.values), timeout=180)
    assert w.proc is not None and w.proc.poll() is None, "the worker must survive the broker restart"
    assert w.metric("fstore_stream_events_in_total") > in_before
    w.stop()
    assert_tiles_exact(redis_client, traffic)
    raw = raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"])
    assert set(pc.unique(raw.column("event_id")).to_pylist()) == traffic.valid_ids


def test_copies_with_other_entities_or_after_a_too_old_first_copy_never_count(
    redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """docs/design.md §2: an event_id counts once, its first copy, whatever its copies' entities and times.

    Through ``prepare`` and the tile writer on a real Redis, batch after batch: a copy re-sent with another
    user and product (the markers of its first copy live under other entities), copies of an event whose
    first copy was too old for the tiles (it set no marker), and a copy redelivered after its claim landed
    but before its tiles did (a crash in between). Every value of every entity touched equals the brute
    force over the first copies inside the horizon."""
    import asyncio

    import orjson
    import redis.asyncio as aredis

    from fstore.core.aggregates import isclose
    from fstore.core.timeutil import DAY, MINUTE
    from fstore.online.merge import EntityRead
    from fstore.online.reader import OnlineReader
    from fstore.redis.layout import CLAIM_BUCKETS, claim_key
    from jobs.stream.pipeline import prepare
    from jobs.stream.sinks import TileWriter
    from tests.support import plan_bruteforce
    from tests.support.messages import event_message as ev

    plan = current_plan()
    now = 1_795_780_800 * SECOND  # 2026-11-28T08:00:00Z
    horizon = 8 * DAY

    a = ev("a", "u1", "p1", now - 2 * MINUTE)
    c = ev("c", "u1", "p2", now - 3 * MINUTE, "click")
    batches = [
        [a],
        [ev("a", "u2", "p2", now - MINUTE, price=99.0), ev("b", "u3", "p3", now - 10 * DAY)],  # b: too old
        [ev("b", "u3", "p3", now - MINUTE), c],
        [ev("b", "u4", "p4", now - MINUTE // 2, "click"), c],  # c again: the same copy, redelivered
    ]
    first = [orjson.loads(a), orjson.loads(c)]  # the first copies inside the horizon
    for e in first:
        e["event_time"] *= 1000

    async def run() -> list[dict[str, int | float | None]]:
        client = aredis.Redis.from_url(redis_server.url, socket_timeout=10)
        writer = TileWriter(client, plan, 8 * 86400, 8 * 86400, clock=lambda: now)
        try:
            for i, values in enumerate(batches):
                prep = prepare(values, now, 0, None, horizon)
                if i == 2:  # the claims land, then the worker dies before the tiles: the batch comes again
                    await writer.claim(prep.claims, now)
                tiles = writer.plan(prep.fresh, now)
                writer.drop(tiles, await writer.claim(prep.claims, now))
                await writer.send(tiles)
            reader = OnlineReader(client, clock=lambda: now)
            reads = [EntityRead(plan.view(v), e, plan.view(v).feature_names) for v, e in ENTITIES]
            snap = await reader.read(reads, as_of=now)
            return [dict(r.values) for r in snap.results]
        finally:
            await client.aclose()

    ENTITIES = [("user_activity", f"u{i}") for i in range(1, 5)] + [
        ("product_engagement", f"p{i}") for i in range(1, 5)
    ]
    got = asyncio.run(run())
    for (view, entity), values in zip(ENTITIES, got, strict=True):
        want = plan_bruteforce.values(plan, view, first, entity, now)
        assert values.keys() == want.keys() and all(isclose(values[k], v) for k, v in want.items()), (
            view,
            entity,
            values,
            want,
        )
    generation = now // SECOND // (8 * 86400)
    assert redis_client.exists(*[claim_key(b, generation) for b in range(CLAIM_BUCKETS)]) > 0
