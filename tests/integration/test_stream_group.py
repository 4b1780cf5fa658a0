"""Stream workers in one consumer group (docs/scaling.md): a topic of 6 partitions shared by 3 worker
processes, one killed -9 and one added mid-run, so the group rebalances twice while events flow.

Every event must still count exactly once: Redis tiles equal the brute force of the first copies; the
first-ingested copy of every event_id in ``raw_events`` is its first copy in log order; the DLQ,
de-duplicated on its key (the source position), holds every malformed message exactly once.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
import redis

from fstore.devsvc.services import Broker
from tests.support.stream import (
    Factory,
    WorkerProcess,
    assert_dlq_exact_by_source,
    assert_raw_exact,
    assert_tiles_exact,
    make_traffic,
    publish,
)

pytestmark = pytest.mark.integration

PARTITIONS = 6


def wait_until(cond: object, what: str, workers: list[WorkerProcess], timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, f"{w.name} died\n{w.log_tail()}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}\n" + "\n".join(w.log_tail() for w in workers)
        time.sleep(0.2)


def test_group_of_workers_kill_9_and_join_mid_run_count_every_event_once(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(90_000, seed=21, users=9_000, products=600)
    n = len(traffic.values)
    first = worker_factory(kafka_broker, partitions=PARTITIONS, FSTORE_STREAM_RAW_MAX_AGE_S="4")
    victim, other = worker_factory(kafka_broker, like=first), worker_factory(kafka_broker, like=first)
    group = [first, victim, other]
    for w in group:
        w.start()

    # 1. the three members share the 6 partitions, then one dies with work uncommitted
    wait_until(lambda: all(w.assigned() for w in group), "3 members with partitions", group)
    publish(kafka_broker, first.topic, traffic, 0, n // 3)
    wait_until(lambda: victim.metric("fstore_stream_events_in_total") >= 3_000, "victim busy", group)
    victim_in = victim.metric("fstore_stream_events_in_total")  # at least this much, maybe more
    victim.kill(signal.SIGKILL)
    assert first.committed() < n // 3, "the victim must die before its work is committed"

    # 2. a fourth worker joins while the survivors take over the victim's partitions
    publish(kafka_broker, first.topic, traffic, n // 3, 2 * n // 3)
    joiner = worker_factory(kafka_broker, like=first)
    joiner.start()
    alive = [first, other, joiner]

    def victim_owns() -> bool:
        return sorted(p for w in alive for p in w.assigned()) != list(range(PARTITIONS))

    wait_until(lambda: joiner.assigned() and not victim_owns(), "the joiner and the survivors to own all", alive)

    # 3. the rest of the stream, until the group has committed every message of every partition
    publish(kafka_broker, first.topic, traffic, 2 * n // 3, n)
    wait_until(lambda: first.committed() >= n, f"{n} committed", alive, timeout=150)
    counted = [w.metric("fstore_stream_events_in_total") for w in alive]
    assert counted[-1] > 0, "the joiner must have taken partitions"
    assert victim_in + sum(counted) > n, "the victim's uncommitted messages must have been replayed"
    for w in alive:
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

    assert_tiles_exact(redis_client, traffic)
    assert_raw_exact(tmp_path / "data", traffic)
    assert_dlq_exact_by_source(kafka_broker, first.dlq, first.topic, traffic)
