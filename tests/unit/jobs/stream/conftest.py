"""The stream worker's unit tests run the example plan (the ecommerce repository of tests/support/repos)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fstore.core.plan import Plan
from tests.support.repos import installed


@pytest.fixture(autouse=True)
def plan() -> Iterator[Plan]:
    """The example plan, installed as the process's plan for the test."""
    yield from installed("ecommerce")
