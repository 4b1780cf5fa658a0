"""The stream worker's write witness: Redis going back in time is found once, a lost reply or an expired
witness is not an alarm (jobs/stream/lost_writes.py)."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from fstore.redis.layout import LOST_WRITES_KEY
from jobs.stream.fakes import MemoryKV
from jobs.stream.lost_writes import WITNESS_TTL_S, WriteWitness

pytestmark = pytest.mark.unit


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_a_witness_that_reads_back_what_it_wrote_raises_nothing() -> None:
    kv, w = MemoryKV(), WriteWitness("w1")
    assert not any(run(w.check(kv, t)) for t in range(5))
    assert LOST_WRITES_KEY not in kv.data and not w.lost
    assert kv.data[w.key] == b"5"


@pytest.mark.parametrize("loss", ["flushed", "older_snapshot"])
def test_redis_going_back_in_time_is_found_once_and_flagged(loss: str) -> None:
    kv, w = MemoryKV(), WriteWitness("w1")
    run(w.check(kv, 1))
    snapshot = dict(kv.data)
    run(w.check(kv, 2))
    run(w.check(kv, 3))
    kv.data = {} if loss == "flushed" else snapshot  # Redis restarted empty, or from the older snapshot
    assert run(w.check(kv, 4)) is True and w.lost
    flag = json.loads(kv.data[LOST_WRITES_KEY])
    assert flag["detected_at"] == 4 and "fstore repair" in flag["message"] and flag["witness"] == w.key
    assert run(w.check(kv, 5)) is False  # latched: reported once
    kv2, other = MemoryKV(), WriteWitness("w2")  # another worker's chain is its own
    assert run(other.check(kv2, 1)) is False and run(other.check(kv2, 2)) is False


class LostReply(MemoryKV):
    """The write of the witness reaches Redis but its reply is lost once."""

    fail_next_set = False

    async def set(self, key: str, value: bytes | str, ex: int | None = None) -> bool:
        await super().set(key, value, ex)
        if self.fail_next_set:
            self.fail_next_set = False
            raise TimeoutError("reply lost")
        return True


def test_a_lost_reply_restarts_the_chain_without_a_false_alarm() -> None:
    kv, w = LostReply(), WriteWitness("w1")
    run(w.check(kv, 1))
    kv.fail_next_set = True
    with pytest.raises(TimeoutError):
        run(w.check(kv, 2))  # written, but the worker does not know it
    assert run(w.check(kv, 3)) is False and not w.lost
    kv.data = {}
    assert run(w.check(kv, 4)) is True  # the new chain still sees a loss


def test_a_witness_idle_past_most_of_its_ttl_may_have_expired() -> None:
    now = [0.0]
    kv, w = MemoryKV(), WriteWitness("w1", clock=lambda: now[0])
    run(w.check(kv, 1))
    kv.data.pop(w.key)  # expired while the worker had nothing to commit
    now[0] = 0.95 * WITNESS_TTL_S
    assert run(w.check(kv, 2)) is False
    kv.data.pop(w.key)  # gone a second later: lost, not expired
    now[0] += 1
    assert run(w.check(kv, 3)) is True
