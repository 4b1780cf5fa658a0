"""Fixtures of the integration tests that need more than a service (see tests/conftest.py for those)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fstore.devsvc.services import RedisServer
from tests.support.feast import applied_repo


@pytest.fixture(scope="module")
def feast_repo(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer) -> Path:
    """A copy of feature_repo with the fstore online store, applied by the ``feast`` CLI (one per module)."""
    tmp = tmp_path_factory.mktemp("feast_repo")
    return applied_repo(tmp, redis_server.url, tmp / "data")
