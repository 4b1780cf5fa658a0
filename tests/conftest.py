"""Shared fixtures: real local Redis and Kafka-protocol broker for integration tests.

None is autouse: unit tests never start a service. Servers run from a temporary state directory on
free ports, are stopped by the fixture finalizers, and are also killed by the kernel if the test
process dies (``die_with_parent``), so nothing outlives a run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from fstore.devsvc.services import Broker, RedisServer

# The API keeps a share of the answers it serves (FSTORE_API_SAMPLE_RATE, on by default) under
# FSTORE_SAMPLES_DIR, by default under the data root, which is ./data for an app a test builds without
# one: send them to a folder of this run instead of the working tree. Tests that read samples set their own.
_SAMPLES = os.environ.setdefault("FSTORE_SAMPLES_DIR", tempfile.mkdtemp(prefix="fstore-test-samples-"))


def pytest_unconfigure(config: pytest.Config) -> None:
    if Path(_SAMPLES).name.startswith("fstore-test-samples-"):
        shutil.rmtree(_SAMPLES, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running ``redis-server`` for the whole session (``.url`` = ``redis://127.0.0.1:PORT/0``)."""
    with RedisServer(state_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` client on :func:`redis_server` with an empty database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A running broker (Tansu, in-memory) for the whole session (``.bootstrap`` = ``127.0.0.1:PORT``).

    Shared: use unique topic names, and do not restart it (that wipes every topic) — use
    :func:`private_broker` for that.
    """
    with Broker(state_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """A broker for one test alone, e.g. to restart it."""
    with Broker(state_dir=tmp_path / "broker") as broker:
        yield broker
