"""The broker crashes while the speed layer is working: the worker reconnects and the tiles stay exact.

A real Apache Kafka broker keeps its log — topics, messages, committed offsets, the DLQ — on disk under
its state directory. It is killed with SIGKILL in the middle of a 200k-event run and started again on the
same port and log, with no other step; the worker is the same process across the outage. Every event
counts once: none lost (the log kept them), none twice (the worker resumes from its committed offsets,
and re-read events are absorbed by the de-duplication markers).
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
import redis

from fstore.devsvc.services import Broker
from tests.support.stream import Factory, assert_raw_and_dlq, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


def test_broker_killed_mid_run_worker_reconnects_and_tiles_stay_exact(
    private_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    broker = private_broker
    traffic = make_traffic(200_000, seed=14, users=5_000, products=500)
    total = len(traffic.values)
    w = worker_factory(broker)
    w.start()
    publish(broker, w.topic, traffic)
    deadline = time.monotonic() + 180
    while (seen := w.metric("fstore_stream_events_in_total")) < 30_000:
        assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
        time.sleep(0.02)
    assert broker.pid is not None
    port, crashed = broker.port, broker.pid
    os.kill(crashed, signal.SIGKILL)  # a crash, in the middle of the run
    assert seen < total, "the worker had already consumed everything: not a mid-run restart"
    broker.stop()  # reap
    time.sleep(3)  # the worker runs into the outage: failed fetches, commits and a lost group coordinator
    broker.start()  # same port, same log directory: messages and committed offsets are back
    assert broker.port == port and broker.pid != crashed

    w.wait_done(total, timeout=300)
    assert w.proc is not None and w.proc.poll() is None, "the worker must survive the broker restart"
    assert w.metric("fstore_stream_events_in_total") > seen
    w.stop()
    assert w.proc.returncode == 0, w.log_tail()
    assert_tiles_exact(redis_client, traffic)  # 0 lost, 0 counted twice
    assert_raw_and_dlq(broker, w.dlq, tmp_path / "data", traffic, exact_dlq=False)


def test_broker_down_is_reported_by_the_worker_then_nothing_is_lost(
    private_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    """While the broker is down the worker says so (``fstore_stream_broker_up`` 0, what FstoreBrokerUnreachable
    reads; before, no metric moved: the lag gauge kept its last value, probe-scale), and says it is back after
    the restart; traffic published before and after is counted exactly once."""
    broker = private_broker
    traffic = make_traffic(4_000, seed=15, users=300, products=50)
    half = len(traffic.values) // 2
    w = worker_factory(broker, FSTORE_STREAM_TOPIC_CHECK_S="1")
    w.start()
    publish(broker, w.topic, traffic, 0, half)

    def until(value: float, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while w.metric("fstore_stream_broker_up") != value:
            assert time.monotonic() < deadline, (value, w.log_tail())
            assert w.proc is not None and w.proc.poll() is None, w.log_tail()
            time.sleep(0.2)

    until(1, 60)
    w.wait_done(half, timeout=120)
    assert broker.pid is not None
    os.kill(broker.pid, signal.SIGKILL)
    broker.stop()  # reap
    until(0, 30)
    broker.start()
    until(1, 60)
    publish(broker, w.topic, traffic, half)
    w.wait_done(len(traffic.values), timeout=120)
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    assert_tiles_exact(redis_client, traffic)
    assert_raw_and_dlq(broker, w.dlq, tmp_path / "data", traffic, exact_dlq=False)
