"""Issue 12, row 3 (and Build 3): the worker's Kafka log loses its past under it — new partitions, the topic
deleted and re-created with more messages than before, the broker restarted on an empty log directory.

Before: the worker kept (and committed) its old offsets on the new log, never read the new partitions,
reported lag 0 and /health ok; 25 % of the valid events never reached Redis or ``raw_events``. Now it
detects each reset (offset beyond the end, offsets gone, topic id changed), replays the new log from its
start, counts the resets (``fstore_stream_log_reset_total``) and says so in its heartbeat; every valid
event counts exactly once (brute force over every copy ever published, first copy wins)."""

from __future__ import annotations

import shutil
import time
from collections import Counter
from pathlib import Path

import pytest
import redis

from fstore.delta import raw_log
from fstore.devsvc.services import Broker
from fstore.redis.layout import HEARTBEAT_KEY, Heartbeat
from tests.support.faults import add_partitions, recreate_topic, wait_caught_up
from tests.support.legacy.events_example import Event
from tests.support.stream import Factory, Traffic, WorkerProcess, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.faults


def merged(*parts: Traffic) -> Traffic:
    """The traffic of several runs published one after the other (their event_ids are distinct)."""
    first: dict[str, Event] = {}
    for t in parts:
        for ev in t.first_copies:
            first.setdefault(ev.event_id, ev)
    return Traffic([], [], Counter(), set(first), list(first.values()))


def test_log_resets_are_detected_replayed_and_every_valid_event_counts_once(
    private_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    a, b, c, d = (
        make_traffic(n, seed=s, users=300, products=60) for n, s in ((2_000, 31), (2_000, 32), (6_000, 33), (1_500, 34))
    )
    w = worker_factory(private_broker, FSTORE_STREAM_TOPIC_CHECK_S="1", FSTORE_STREAM_RAW_MAX_AGE_S="0.5")
    w.start()
    publish(private_broker, w.topic, a)
    wait_caught_up(w, 90)

    add_partitions(private_broker, w.topic, 3)  # new partitions mid-run: consumed after a metadata refresh
    publish(private_broker, w.topic, b)
    wait_caught_up(w, 90)

    # The topic deleted and re-created, then holding more messages than the old one ever did: without the
    # topic-id check the worker would resume at its old offsets inside the new log and skip its head.
    recreate_topic(private_broker, w.topic, 2)
    publish(private_broker, w.topic, c)
    # detected within the topic check's period (1 s here), whatever the worker consumed meanwhile
    wait_metric_above(w, "fstore_stream_log_reset_total", 0, 60)
    wait_caught_up(w, 120)
    resets_after_recreate = w.metric_sum("fstore_stream_log_reset_total")

    # The broker restarted on an empty log directory (same ports): topics, messages and offsets gone.
    private_broker.stop()
    shutil.rmtree(private_broker.log_dir)
    private_broker.start()
    private_broker.ensure_topics({w.topic: 2, w.dlq: 1})
    publish(private_broker, w.topic, d)
    wait_metric_above(w, "fstore_stream_log_reset_total", resets_after_recreate, 60)
    wait_caught_up(w, 120)
    beat = Heartbeat.loads(redis_client.get(HEARTBEAT_KEY))
    assert beat is not None and beat.log_reset_at is not None
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    assert "was reset" in (tmp_path / "worker-1.log").read_text()

    everything = merged(a, b, c, d)
    assert_tiles_exact(redis_client, everything)
    stored = set(raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"]).column("event_id").to_pylist())
    assert stored == everything.valid_ids


def wait_metric_above(w: WorkerProcess, name: str, floor: float, timeout: float) -> None:
    """Until the worker's metric ``name`` (summed over labels) exceeds ``floor``."""
    deadline = time.monotonic() + timeout
    while w.metric_sum(name) <= floor:
        assert time.monotonic() < deadline, (name, floor, w.log_tail())
        time.sleep(0.2)
