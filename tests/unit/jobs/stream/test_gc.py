"""The stream worker's garbage-collector tuning (:func:`jobs.stream.layer.tune_gc`).

A batch's objects are freed by reference counting once it is done; a young-generation pass while they are
alive scans them all and frees nothing. The threshold must stay above what the worker holds at once: two
full batches (one being validated, one in Redis), each message with its Kafka record, its row, its claim
and tile cells and its raw-row values.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from aiokafka.structs import ConsumerRecord

from fstore.core.plan import Plan
from fstore.core.timeutil import HOUR, MINUTE
from fstore.delta.raw_log import rows_table
from jobs.stream.claims import pack_claims
from jobs.stream.layer import tune_gc
from jobs.stream.pipeline import prepare, reader_for
from jobs.stream.sinks import TileWriter

pytestmark = pytest.mark.unit

NOW = 1_763_700_000_000_000
BATCH = 10_000  # the default FSTORE_STREAM_BATCH_MAX
KINDS = ["page_view", "impression", "impression", "click", "add_to_cart", "purchase"]


def records(lo: int, n: int) -> list[ConsumerRecord[Any, Any]]:
    """``n`` Kafka records of the example schema, as aiokafka hands them over."""
    out = []
    for i in range(lo, lo + n):
        kind = KINDS[i % len(KINDS)]
        body = {
            "event_id": f"e{i}",
            "event_type": kind,
            "user_id": f"u{i % 5_000}",
            "product_id": f"p{i % 700}",
            "session_id": f"s{i // 10}",
            "event_time": f"2025-11-21T{(i // 60) % 4:02d}:{i % 60:02d}:07.{i % 1000:03d}Z",
            **({"price": 10.5 + i % 9, "quantity": 1 + i % 3} if kind == "purchase" else {}),
        }
        value = orjson.dumps(body)
        out.append(ConsumerRecord("events", 0, i, NOW // 1000, 0, None, value, None, -1, len(value), ()))
    return out


@pytest.fixture
def young_passes() -> Iterator[list[int]]:
    """The young-generation passes run while the test body runs (the collector restored after it)."""
    passes: list[int] = []

    def seen(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and info["generation"] == 0:
            passes.append(1)

    threshold = gc.get_threshold()
    gc.callbacks.append(seen)
    try:
        yield passes
    finally:
        gc.callbacks.remove(seen)
        gc.unfreeze()
        gc.set_threshold(*threshold)


def test_two_full_batches_in_progress_set_off_no_young_pass(plan: Plan, young_passes: list[int]) -> None:
    reader = reader_for(plan)
    writer = TileWriter(None, plan, 86_400, 86_400)
    tune_gc(BATCH)
    young_passes.clear()  # those before the tuning (Python's threshold of 700) are not the worker's
    previous: Any = None  # the batch in Redis while the next one is validated
    last = 0
    for lo in (0, BATCH, 2 * BATCH):
        batch = records(lo, BATCH)
        prep = prepare([r.value for r in batch], NOW, last, NOW - 10 * HOUR, 8 * 24 * HOUR, reader)
        last = prep.last_at
        assert len(prep.valid) == BATCH and prep.fresh
        claims = pack_claims(prep.claims, writer.keys, 7, 60)
        tiles = writer.plan(prep.fresh, NOW - MINUTE)
        rows = rows_table(plan.schema, prep.valid, prep.hashes, prep.ingested_at)
        previous = (batch, prep, claims, tiles, rows)  # the batch before it is freed from here on
    assert young_passes == [] and previous is not None
