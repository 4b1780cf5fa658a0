"""A changed applied record that cannot be read is loud (issue 13, docs/operations.md): the API and the
stream worker keep the plan they run, and say so — GET /health degraded (503) naming the record,
``fstore_plan_stale`` 1 and ``fstore_plan_reload_failures_total`` counted, the worker's heartbeat
``plan_error`` — until a good record is read again. Real Redis, the real API and the real worker's
``refresh_plan`` (its Redis heartbeat). And the worker's registration (what ``fstore apply`` waits for)
names the plan it adopted as soon as it adopted it."""

from __future__ import annotations

import asyncio
import re
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aredis
from fastapi.testclient import TestClient

from fstore import applied, plan_source
from fstore.core.plan_json import fingerprint
from fstore.devsvc.services import RedisServer
from fstore.redis.layout import HEARTBEAT_KEY, Heartbeat
from fstore.redis.workers import worker_plans
from jobs.stream import metrics as stream_metrics
from jobs.stream.control import Control
from jobs.stream.fakes import ListDeadLetters, ListRaw, MemoryTiles
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings
from services.online_api import app as api_app
from services.online_api.settings import ApiSettings
from tests.support.repos import ROOT, compiled

pytestmark = pytest.mark.integration


@pytest.fixture
def repo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A copy of the rides repository with an applied record, the process's repository meanwhile."""
    root = tmp_path / "rides"
    shutil.copytree(ROOT / "rides", root, ignore=shutil.ignore_patterns("data", "__pycache__"))
    applied.save(root, applied.AppliedPlan(compiled("rides"), 1))
    monkeypatch.setenv(plan_source.ENV_REPO, str(root))
    monkeypatch.setattr(api_app, "PLAN_FOLLOW_S", 0.05)
    plan_source.use_plan(None)
    try:
        yield root
    finally:
        plan_source.use_plan(None)


def until(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + 10
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def scraped(client: TestClient, name: str) -> float:
    found = re.search(rf"^{name} (\S+)$", client.get("/metrics").text, re.M)
    assert found, name
    return float(found.group(1))


def test_an_unreadable_applied_record_degrades_health_until_a_good_one(
    repo: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    record = applied.record_path(repo)
    settings = StreamSettings(redis_url=redis_server.url)
    plan = plan_source.current_plan()

    async def worker_follows(layer_box: list[SpeedLayer]) -> bool:
        if not layer_box:
            kv: Any = aredis.Redis.from_url(redis_server.url)  # the worker's real client
            layer_box.append(
                SpeedLayer(settings, None, ListDeadLetters(), kv=kv, tiles=MemoryTiles(plan), raw=ListRaw())
            )
        return await layer_box[0].refresh_plan()

    def beat() -> Heartbeat | None:
        return Heartbeat.loads(redis_client.get(HEARTBEAT_KEY))

    layer: list[SpeedLayer] = []
    with (
        asyncio.Runner() as loop,
        TestClient(
            api_app.create_app(ApiSettings(redis_url=redis_server.url, data_dir=str(repo.parent / "data")))
        ) as client,
    ):
        assert client.get("/health").json()["detail"].get("plan") is None
        assert scraped(client, "fstore_plan_stale") == 0 and scraped(client, "fstore_plan_reload_failures_total") == 0

        record.write_text("{oops")  # corrupt: the API keeps serving the applied plan, loudly
        until(lambda: client.get("/health").status_code == 503, "/health never degraded")
        body = client.get("/health").json()
        assert body["status"] == "degraded" and str(record) in body["detail"]["plan"], body
        assert "the API" in body["detail"]["plan"] and "stream worker" not in body["detail"]["plan"]
        assert scraped(client, "fstore_plan_stale") == 1 and scraped(client, "fstore_plan_reload_failures_total") == 1
        assert client.get("/features", params={"driver_id": "d1", "features": "driver_performance"}).status_code == 200

        # the worker (same process, so it sees the record stale already): gauge and heartbeat say so
        assert loop.run(worker_follows(layer)) is False
        assert stream_metrics.PLAN_STALE._value.get() == 1
        hb = beat()
        assert hb is not None and hb.plan_error is not None and str(record) in hb.plan_error
        assert "the stream worker" in client.get("/health").json()["detail"]["plan"]

        applied.save(repo, applied.AppliedPlan(compiled("rides"), 2))  # a good record: both recover
        until(lambda: "the API" not in client.get("/health").json()["detail"].get("plan", ""), "API never recovered")
        assert scraped(client, "fstore_plan_stale") == 0
        loop.run(worker_follows(layer))
        assert stream_metrics.PLAN_STALE._value.get() == 0
        hb = beat()
        assert hb is not None and hb.plan_error is None
        health = client.get("/health")
        assert health.status_code == 200 and "plan" not in health.json()["detail"], health.text
        loop.run(layer[0].redis.aclose())


def test_the_worker_registers_the_plan_it_adopts_at_once(
    repo: Path, redis_server: RedisServer, redis_client: redis.Redis
) -> None:
    """What `fstore apply` waits for (fstore/redis/workers.py): the worker registers the fingerprint of the
    plan it runs, and the new one as soon as it adopted it — not a check later."""
    settings = StreamSettings(redis_url=redis_server.url)
    full = compiled("rides")
    smaller = replace(full, views=full.views[:1])

    async def run() -> list[dict[str, str]]:
        kv: Any = aredis.Redis.from_url(redis_server.url)
        layer = SpeedLayer(settings, None, ListDeadLetters(), kv=kv, tiles=MemoryTiles(full), raw=ListRaw())
        layer.control = Control(settings, fingerprint(layer.plan), name="w1")
        seen = []
        try:
            await layer.follow(None)
            seen.append(worker_plans(redis_client))
            applied.save(repo, applied.AppliedPlan(smaller, 3))
            await layer.follow(None)
            seen.append(worker_plans(redis_client))
            assert layer.plan == smaller
        finally:
            await kv.aclose()
        return seen

    assert asyncio.run(run()) == [{"w1": fingerprint(full)}, {"w1": fingerprint(smaller)}]
