"""Fixtures of the integration tests that need more than a service (see tests/conftest.py for those)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from fstore.devsvc.services import Broker, RedisServer
from tests.support.feast import applied_repo
from tests.support.stream import PARTITIONS, WorkerProcess


@pytest.fixture
def worker_factory(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> Iterator[Callable[..., WorkerProcess]]:
    made: list[WorkerProcess] = []

    def make(
        broker: Broker, partitions: int = PARTITIONS, like: WorkerProcess | None = None, **extra: str
    ) -> WorkerProcess:
        w = WorkerProcess(tmp_path, broker, redis_server.url, partitions, like, **extra)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Path:
    """A copy of feature_repo with the fstore online store, applied by the ``feast`` CLI (one per module)."""
    tmp = tmp_path_factory.mktemp("feast_repo")
    return applied_repo(tmp, redis_server.url, tmp / "data")
