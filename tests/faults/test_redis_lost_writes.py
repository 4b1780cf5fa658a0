"""Redis comes back with an older state under a running stream worker: loud, then repaired exactly.

A real worker counts real traffic into a real Redis; Redis is then put back to a snapshot taken a third of
the way in (FLUSHDB, then RESTORE of every key as DUMP read it), as a restart from an older RDB file or a
promoted replica that lagged would. The worker's offsets stay ahead, so the tiles undercount — silently,
before (probe-scale: 241 of 381 entities wrong with /health "ok"). Now the worker's witness key finds it:
``fstore_stream_redis_lost_writes`` 1 (alert FstoreRedisLostWrites), GET /health 503 ``degraded`` naming it;
``fstore repair`` then makes the tiles equal the brute force again and clears the flag.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from fstore.devsvc.services import Broker, RedisServer
from fstore.redis.layout import LOST_WRITES_KEY
from jobs.batch.settings import BatchSettings
from jobs.repair import repair
from jobs.stream.settings import StreamSettings
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support.stream import Factory, assert_tiles_exact, make_traffic, publish

pytestmark = pytest.mark.integration


def test_redis_back_in_time_is_loud_and_repair_makes_the_tiles_exact(
    kafka_broker: Broker, redis_server: RedisServer, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(6_000, seed=33, users=300, products=50)
    n = len(traffic.values)
    w = worker_factory(kafka_broker)
    w.start()
    publish(kafka_broker, w.topic, traffic, 0, n // 3)
    w.wait_done(n // 3, timeout=120)
    time.sleep(1.2)  # the next commit writes a heartbeat (at most one a second), and with it a new witness
    snapshot = [(k, redis_client.dump(k), redis_client.pttl(k)) for k in redis_client.scan_iter()]
    publish(kafka_broker, w.topic, traffic, n // 3, 2 * n // 3)
    w.wait_done(2 * n // 3, timeout=120)
    time.sleep(1.2)

    redis_client.flushdb()  # Redis restarts from the older snapshot
    for key, dumped, pttl in snapshot:
        redis_client.restore(key, max(int(pttl), 0), dumped)  # type: ignore[arg-type]
    publish(kafka_broker, w.topic, traffic, 2 * n // 3, n)
    w.wait_done(n, timeout=120)
    deadline = time.monotonic() + 30
    while w.metric("fstore_stream_redis_lost_writes") != 1:
        assert time.monotonic() < deadline, w.log_tail()
        time.sleep(0.2)
    assert "Redis lost writes the stream worker had made" in w.log_tail()
    with pytest.raises(AssertionError):  # the fault is real: the tiles undercount
        assert_tiles_exact(redis_client, traffic)
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as api:
        health = api.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded", health.text
        assert "fstore repair" in health.json()["detail"]["redis"]
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

    data = str(tmp_path / "data")  # the worker's raw_events
    report = repair(
        BatchSettings(redis_url=redis_server.url, data_dir=data),
        StreamSettings(redis_url=redis_server.url, data_dir=data),
        force=True,  # the stopped worker's heartbeat is seconds old
    )
    assert report.lost_writes_cleared and redis_client.get(LOST_WRITES_KEY) is None
    assert_tiles_exact(redis_client, traffic)  # the markers of the snapshot make the replay count each event once
    with TestClient(create_app(ApiSettings(redis_url=redis_server.url))) as api:
        health = api.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok", health.text
