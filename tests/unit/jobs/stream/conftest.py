"""The stream worker's unit tests run the example plan (the ecommerce repository of tests/support/repos)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fstore.core.plan import Plan
from fstore.plan_source import use_plan
from tests.support.repos import compiled


@pytest.fixture(autouse=True)
def plan() -> Iterator[Plan]:
    """The example plan, installed as the process's plan for the test."""
    example = compiled("ecommerce")
    use_plan(example)
    yield example
    use_plan(None)
