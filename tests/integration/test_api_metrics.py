"""/metrics of ``fstore serve --workers 2``: every scrape counts the requests of both worker processes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from fstore.devsvc.services import RedisServer, free_port
from fstore.redis.layout import POINTER_KEY, BatchPointer

pytestmark = pytest.mark.integration

REQUESTS = 120


@pytest.fixture
def two_workers(tmp_path: Path, redis_server: RedisServer, redis_client: redis.Redis) -> Iterator[tuple[str, Path]]:
    redis_client.set(POINTER_KEY, BatchPointer("v1", 1_764_201_600_000_000).dumps())
    port, metrics_dir = free_port(), tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # from a previous run: must be wiped at start
    env = {
        **os.environ,
        "FSTORE_REDIS_URL": redis_server.url,
        "FSTORE_DATA_DIR": str(tmp_path / "data"),
        "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
    }
    cmd = [str(Path(sys.executable).with_name("fstore")), "serve", "--port", str(port), "--workers", "2"]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "fstore serve did not start"
            time.sleep(0.2)
        yield url, metrics_dir
    finally:
        proc.terminate()
        proc.wait(20)


def requests_counted(body: str) -> float:
    m = re.search(r'^fstore_api_requests_total\{method="GET",route="/features",status="200"\} (\S+)$', body, re.M)
    return float(m.group(1)) if m else 0.0


def test_every_scrape_sums_both_workers(two_workers: tuple[str, Path]) -> None:
    url, metrics_dir = two_workers
    for i in range(REQUESTS):  # a new connection each: the kernel spreads them over both workers
        r = httpx.get(f"{url}/features", params={"user_id": f"u{i}", "features": "user_activity:clicks_1h"})
        assert r.status_code == 200, r.text
    pids = {int(p.stem.rpartition("_")[2]) for p in metrics_dir.glob("counter_*.db")}
    assert len(pids) == 2 and 1 not in pids, sorted(p.name for p in metrics_dir.iterdir())
    scrapes = [httpx.get(f"{url}/metrics").text for _ in range(12)]
    assert {requests_counted(s) for s in scrapes} == {float(REQUESTS)}
    body = scrapes[0]
    assert re.search(r"^fstore_api_redis_up 1\.0$", body, re.M)
    assert re.search(r"^fstore_batch_view_cutover_timestamp_seconds 1\.7642016e\+09$", body, re.M)
    assert re.search(r'^fstore_api_request_seconds_count\{method="GET",route="/features"\} 120\.0$', body, re.M)


def test_a_probe_of_one_worker_does_not_stay_in_later_scrapes(
    two_workers: tuple[str, Path], redis_client: redis.Redis
) -> None:
    """The Redis probe describes one scrape. Prometheus keeps its connection, so one worker answers every
    scrape: another worker's last probe (here 0, taken while Redis was paused) must not be exposed after
    it with a ``pid`` label — it kept FstoreRedisUnreachable firing on a healthy stack (probe-ops)."""
    url, _ = two_workers
    redis_client.client_pause(2500)
    down = [httpx.get(f"{url}/metrics", timeout=10).text for _ in range(8)]  # new connections: both workers
    assert any(re.search(r"^fstore_api_redis_up 0\.0$", b, re.M) for b in down)
    time.sleep(3)
    with httpx.Client() as prometheus:  # one kept connection, as Prometheus scrapes
        for _ in range(10):
            body = prometheus.get(f"{url}/metrics").text
            up = re.findall(r"^fstore_api_redis_up(\{[^}]*\})? (\S+)$", body, re.M)
            assert up == [("", "1.0")], up
            assert not re.search(r"^fstore_(api_redis_\w+|plan_stale|batch_view_cutover\w*)\{", body, re.M)
