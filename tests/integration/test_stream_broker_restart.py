"""Broker restarts while the speed layer is working: the worker reconnects and the tiles stay exact.

The broker keeps its log and the committed offsets in an S3 bucket (Tansu's ``s3://`` storage engine on a
local S3 endpoint), so a broker killed in the middle of a run comes back with everything it acknowledged,
as a Kafka broker with its log on disk does. The worker is the same process across the outage.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fstore.devsvc.services import Broker, S3Server
from tests.support.stream import Factory, assert_raw_and_dlq, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


@pytest.fixture
def durable_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test whose storage (an S3 bucket on a local endpoint) outlives its process."""
    with S3Server(state_dir=tmp_path / "s3") as s3:
        bucket = s3.create_bucket(f"tansu-{uuid.uuid4().hex[:8]}")
        with Broker(state_dir=tmp_path / "broker", storage=bucket, s3=s3) as broker:
            yield broker


def test_broker_killed_mid_run_worker_reconnects_and_tiles_stay_exact(
    durable_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(80_000, seed=14, users=5_000, products=500)
    total = len(traffic.values)
    w = worker_factory(durable_broker)
    w.start()
    publish(durable_broker, w.topic, traffic)
    deadline = time.monotonic() + 120
    while (seen := w.metric("fstore_stream_events_in_total")) < 10_000:
        assert time.monotonic() < deadline and w.proc is not None and w.proc.poll() is None, w.log_tail()
        time.sleep(0.05)
    assert durable_broker.pid is not None
    os.kill(durable_broker.pid, signal.SIGKILL)  # a crash, in the middle of the run
    assert seen < total, "the worker had already consumed everything: not a mid-run restart"
    durable_broker.stop()  # reap
    time.sleep(3)  # the worker runs into the outage: failed fetches, commits and a lost group coordinator
    durable_broker.start()  # same port, same bucket: log and committed offsets are back

    w.wait_done(total, timeout=240)
    assert w.proc is not None and w.proc.poll() is None, "the worker must survive the broker restart"
    assert w.metric("fstore_stream_events_in_total") > seen
    w.stop()
    assert w.proc.returncode == 0, w.log_tail()
    assert_tiles_exact(redis_client, traffic)
    assert_raw_and_dlq(durable_broker, w.dlq, tmp_path / "data", traffic, exact_dlq=False)
