"""numpy's huge pages are off while the point-in-time engine runs, and put back afterwards (fstore.core.huge_pages)."""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fstore.core import huge_pages, pit
from fstore.core.pit_events import EncodedEvents
from fstore.core.timeutil import DAY, HOUR
from tests.support.pit import BASE, events_table, random_events
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

PLAN = compiled("ecommerce")


@pytest.fixture(autouse=True)
def _numpy_default() -> object:
    if huge_pages.enabled() is None:
        pytest.skip("this numpy has no huge-page switch")
    before = huge_pages.enabled()
    yield
    assert huge_pages._SET is not None
    huge_pages._SET(bool(before))


@pytest.mark.parametrize("before", [True, False])
def test_off_inside_restored_after_also_nested(before: bool) -> None:
    assert huge_pages._SET is not None
    huge_pages._SET(before)
    with huge_pages.small_pages():
        assert huge_pages.enabled() is False
        with huge_pages.small_pages():
            assert huge_pages.enabled() is False
        assert huge_pages.enabled() is False  # the outer call still runs
    assert huge_pages.enabled() is before
    with pytest.raises(RuntimeError), huge_pages.small_pages():
        raise RuntimeError("boom")
    assert huge_pages.enabled() is before


def test_overlapping_threads_restore_when_the_last_leaves() -> None:
    assert huge_pages._SET is not None
    huge_pages._SET(True)
    first_in, second_in, first_out = threading.Event(), threading.Event(), threading.Event()
    seen: list[bool | None] = []

    def first() -> None:
        with huge_pages.small_pages():
            first_in.set()
            second_in.wait(5)
        first_out.set()

    def second() -> None:
        first_in.wait(5)
        with huge_pages.small_pages():
            second_in.set()
            first_out.wait(5)
            seen.append(huge_pages.enabled())  # the first caller left; this one still runs

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen == [False]
    assert huge_pages.enabled() is True


def test_the_engine_runs_with_small_pages_and_restores_them(monkeypatch: pytest.MonkeyPatch) -> None:
    assert huge_pages._SET is not None
    huge_pages._SET(True)
    during: list[bool | None] = []

    def spy(*args: Any, **kwargs: Any) -> EncodedEvents:
        during.append(huge_pages.enabled())
        return EncodedEvents(*args, **kwargs)

    monkeypatch.setattr(pit, "EncodedEvents", spy)
    rng = np.random.default_rng(7)
    events = random_events(rng, 200, users=4, products=3, span=2 * DAY)
    frame = pd.DataFrame(
        {
            "user_id": ["u1", "u2"],
            "product_id": ["p1", "p2"],
            "event_timestamp": pd.to_datetime([BASE + DAY + HOUR] * 2, unit="us", utc=True),
        }
    )
    pit.point_in_time(PLAN, frame, ["user_activity"], events_table(events, PLAN.schema))
    assert during == [False]
    assert huge_pages.enabled() is True
