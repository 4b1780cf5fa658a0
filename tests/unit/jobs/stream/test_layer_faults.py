"""The speed layer's failure paths in-process (issue 12, Build 1 and 2): a message no sink can take is
isolated and dead-lettered as ``unprocessable`` while the rest of its batch goes through; messages that keep
failing on their own stop the worker (non-zero exit code) instead of emptying the topic into the DLQ; a
re-run batch does not send its other dead letters again; oversized dead letters are cut, with their size
and hash, and never block the partition."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Sequence
from typing import Any, NamedTuple

import pytest
from aiokafka.errors import MessageSizeTooLargeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from fstore.core.events import payload_hash
from fstore.plan_source import current_plan
from jobs.stream.dead_letters import FALLBACK_BYTES, dead_letter
from jobs.stream.fakes import ListDeadLetters, MemorySinks, MemoryTiles
from jobs.stream.faults import EXIT_FAILURE, EXIT_OUTAGE, SystemicFailure, exit_code, is_outage
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings
from tests.support.legacy.events_example import Event
from tests.support.paths import message

pytestmark = pytest.mark.unit

SECOND = 1_000_000
NOW = 1_767_225_600_000_000 + 10 * 86_400 * SECOND


class Record(NamedTuple):
    key: bytes | None
    value: bytes
    offset: int
    timestamp: int


class PoisonTiles(MemoryTiles):
    """Tiles whose sink refuses (as a Lua error would) any batch holding one of ``poison``."""

    def __init__(self, poison: set[str], calls: list[int]) -> None:
        super().__init__(current_plan())
        self.poison, self.calls = poison, calls

    async def send(self, plan: Any, on_sent: Any = None) -> set[str]:
        self.calls.append(len(plan.events))
        if any(ev["event_id"] in self.poison for ev in plan.events):
            if on_sent is not None:
                on_sent()
            raise ResponseError("ERR user_script:1: increment would produce NaN or Infinity")
        return await super().send(plan, on_sent)


def events(n: int) -> list[Event]:
    return [Event(f"e{i}", "click", f"u{i % 7}", f"p{i % 3}", NOW - (i + 1) * SECOND, None, 1, None) for i in range(n)]


def records(values: Sequence[bytes]) -> list[Record]:
    return [Record(b"k", v, i, NOW // 1000) for i, v in enumerate(values)]


def layer_with(sinks: MemorySinks, **settings: Any) -> SpeedLayer:
    return SpeedLayer(
        StreamSettings(**settings), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: NOW
    )


def run_batches(layer: SpeedLayer, batches: list[list[Record]]) -> None:
    """What the consumer loop does with each batch: begin, finish, and isolate on a failure."""

    async def go() -> None:
        for part in batches:
            source = {"events-0": part}
            batch = await layer.try_begin(source)
            if batch is None:
                await layer.isolate(source)
                continue
            batch.task = asyncio.ensure_future(layer.finish(batch))
            await layer.settle(batch)
        await layer.flush()

    asyncio.run(go())


def test_a_poison_message_in_the_tiles_is_dead_lettered_and_the_rest_goes_through() -> None:
    evs = events(40)
    values = [message(e)[1] for e in evs]
    values[5] = b'{"event_id": 1}'  # invalid: dead-lettered by validation, once, before the poison fails
    values[31] = b"not json"
    calls: list[int] = []
    sinks = MemorySinks(current_plan())
    sinks.tiles = PoisonTiles({"e17"}, calls)
    layer = layer_with(sinks)
    run_batches(layer, [records(values)])

    reasons = Counter(sinks.dead.reasons())
    assert reasons == {"invalid_type:event_id": 1, "malformed_json": 1, "unprocessable": 1}
    (poison,) = [r for r in sinks.dead.records if r[2]["fstore-reason"] == b"unprocessable"]
    assert poison[0] == b"events-0:0:17" and poison[1] == values[17]  # keyed by position, original bytes
    assert len(calls) < 20  # bisected, not one round trip per message
    applied = {ev["event_id"] for ev, _, _ in sinks.raw.rows}
    assert applied == {e.event_id for i, e in enumerate(evs) if i not in (5, 17, 31)}
    assert sinks.tiles.seen == applied
    assert layer.pending == {"events-0": 40}  # every offset released: no crash loop on the poison's offset


def test_a_message_the_raw_sink_cannot_hold_fails_before_its_tiles(monkeypatch: pytest.MonkeyPatch) -> None:
    """A late failure (the Arrow conversion of raw_events) is raised while the batch is validated, so the
    message is dead-lettered without having been counted in the tiles."""
    evs = events(25)
    sinks = MemorySinks(current_plan())
    to_rows = sinks.raw.to_rows

    def arrow(evs_: Sequence[dict[str, Any]], hashes: Sequence[str], at: Sequence[int]) -> Any:
        if any(e["event_id"] == "e9" for e in evs_):
            raise OverflowError("value too large to convert to int32")
        return to_rows(evs_, hashes, at)

    monkeypatch.setattr(sinks.raw, "to_rows", arrow)
    layer = layer_with(sinks)
    run_batches(layer, [records([message(e)[1] for e in evs])])
    assert sinks.dead.reasons() == ["unprocessable"]
    assert "e9" not in sinks.tiles.seen and len(sinks.tiles.seen) == 24
    assert [ev["event_id"] for ev, _, _ in sinks.raw.rows] == [e.event_id for e in evs if e.event_id != "e9"]


def test_messages_that_all_fail_stop_the_worker_instead_of_filling_the_dlq() -> None:
    evs = events(30)
    sinks = MemorySinks(current_plan())
    sinks.tiles = PoisonTiles({e.event_id for e in evs}, [])
    layer = layer_with(sinks)
    with pytest.raises(SystemicFailure) as info:
        run_batches(layer, [records([message(e)[1] for e in evs])])
    assert exit_code(info.value) == EXIT_FAILURE
    assert len(sinks.dead.records) == 10  # MAX_UNPROCESSABLE_STREAK, then stop


def test_outages_and_failures_get_distinct_non_zero_exit_codes() -> None:
    assert is_outage(RedisConnectionError("down")) and exit_code(RedisConnectionError("down")) == EXIT_OUTAGE
    from redis.exceptions import RedisClusterException

    try:  # how redis-py reports a cluster none of whose seeds answers
        raise RedisClusterException("Redis Cluster cannot be connected") from RedisConnectionError("refused")
    except RedisClusterException as unreachable:
        assert is_outage(unreachable)
    assert not is_outage(RedisClusterException("Argument 'db' is not possible to use in cluster mode"))
    assert is_outage(OSError("disk")) and not is_outage(ResponseError("ERR script"))
    assert not is_outage(MessageSizeTooLargeError()) and EXIT_FAILURE != 0 != EXIT_OUTAGE


class TooLarge(ListDeadLetters):
    """A DLQ whose broker refuses records over ``limit`` bytes (as aiokafka reports it), and counts attempts."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit, self.attempts = limit, 0

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        self.attempts += 1
        if len(value) > self.limit:
            fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            fut.set_exception(MessageSizeTooLargeError())
            return fut
        return await super().send(key=key, value=value, headers=headers)


def test_oversized_dead_letters_are_cut_with_size_and_hash_and_sent_once() -> None:
    big = b'{"event_id": "' + b"x" * 1_500_000 + b'"}'  # 1.5 MB: classed oversized
    evs = events(6)
    values = [message(e)[1] for e in evs[:3]] + [big] + [message(e)[1] for e in evs[3:]]
    sinks = MemorySinks(current_plan())
    sinks.dead = TooLarge(limit=32 * 1024)  # a broker whose limit is below the worker's 64 KiB cut
    layer = layer_with(sinks)
    run_batches(layer, [records(values)])
    (rec,) = sinks.dead.records
    key, value, headers = rec
    assert key == b"events-0:0:3" and headers["fstore-reason"] == b"oversized"
    assert value == big[:FALLBACK_BYTES]
    assert headers["fstore-original-size"] == str(len(big)).encode()
    assert headers["fstore-original-hash"] == payload_hash(big).encode()
    assert sinks.dead.attempts == 2 and layer.pending == {"events-0": 7}
    assert len(sinks.raw.rows) == 6


def test_dead_letter_records_keep_small_values_and_cut_large_ones() -> None:
    small = dead_letter("events", 1, 42, b"u1", b"{}", "malformed_json", b"2026-01-01T00:00:00Z", 65_536)
    assert small.key == b"events:1:42" and small.value == b"{}"
    assert dict(small.headers) == {
        "fstore-reason": b"malformed_json",
        "fstore-ingested-at": b"2026-01-01T00:00:00Z",
        "fstore-key": b"u1",
    }
    big = dead_letter("events", 0, 7, None, b"y" * 70_000, "oversized", b"t", 65_536)
    assert len(big.value) == 65_536 and dict(big.headers)["fstore-original-size"] == b"70000"


def test_a_re_run_batch_does_not_send_its_dead_letters_again() -> None:
    """4 invalid messages and a poison in one batch: the batch fails after its dead letters were
    acknowledged, is bisected and re-run; every dead letter is still sent exactly once."""
    evs = events(20)
    values = [message(e)[1] for e in evs]
    for i in (2, 8, 13, 19):
        values[i] = b"[1, 2]"
    sinks = MemorySinks(current_plan())
    sinks.tiles = PoisonTiles({"e11"}, [])
    layer = layer_with(sinks)
    run_batches(layer, [records(values)])
    keys = Counter(k for k, _, _ in sinks.dead.records)
    assert set(keys.values()) == {1} and len(keys) == 5
    assert Counter(sinks.dead.reasons()) == {"malformed_json": 4, "unprocessable": 1}


def test_topic_changes_are_judged_once_the_topic_exists_again() -> None:
    from jobs.stream.log_guard import TopicState, compare

    known, change = compare(None, TopicState("id-1", 2))
    assert known == TopicState("id-1", 2) and not change.recreated and change.partitions is None
    known, change = compare(known, TopicState("id-1", 3))  # partitions added
    assert not change.recreated and change.partitions == (2, 3)
    gone, change = compare(known, TopicState(None, 0))  # deleted: nothing concluded yet
    assert gone == known and not change.recreated
    unanswered, change = compare(known, None)  # broker away: nothing concluded
    assert unanswered == known and not change.recreated
    known, change = compare(known, TopicState("id-2", 3))  # back with another id: re-created
    assert change.recreated and known == TopicState("id-2", 3)
