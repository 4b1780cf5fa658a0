"""The speed layer's batch path in-process: SpeedLayer over the in-memory fakes of its ports.

Generated traffic (duplicates with other payloads, late and malformed messages) goes through
``SpeedLayer.handle`` exactly as the consumer loop hands it over; the fake sinks must then hold the
contract (docs/design.md §3): every feature value from the tiles equals the brute force over the first copy of each
valid event_id, every valid copy reached the raw sink, every malformed message was dead-lettered once
with its reason.
"""

from __future__ import annotations

import asyncio
import re
from collections import Counter
from typing import NamedTuple

import pytest
from prometheus_client import generate_latest

from examples.synth.generator import GeneratorConfig, generate
from fstore.core.aggregates import isclose
from fstore.core.event_check import EventCheck
from fstore.core.events import Rejection, Row, parse_row
from fstore.core.plan import Plan
from fstore.core.tile_state import Acc
from fstore.core.timeutil import HOUR
from fstore.core.view_tiles import TileKey, TileLookup, Tiles, ViewTiler, evaluate, lookup_in
from fstore.plan_source import current_plan
from jobs.stream import metrics
from jobs.stream.fakes import MemorySinks
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings
from tests.support import plan_bruteforce
from tests.support.legacy.events_example import Event
from tests.support.paths import message

pytestmark = pytest.mark.unit

SECOND = 1_000_000


class Record(NamedTuple):
    """What the consumer loop reads from aiokafka."""

    key: bytes | None
    value: bytes | None  # None: a tombstone
    offset: int
    timestamp: int  # epoch ms


def merged(a: Tiles, b: Tiles, entity: str) -> TileLookup:
    """A lookup over the merge of two tile sets (speed tiles and the held events a reader folds in)."""

    def lookup(size: int, start: int) -> dict[str, Acc] | None:
        parts = [t for t in (a.get(TileKey(entity, size, start)), b.get(TileKey(entity, size, start))) if t]
        if not parts:
            return None
        out: dict[str, Acc] = {}
        for part in parts:
            for m, acc in part.items():
                out.setdefault(m, Acc(distinct=None if acc.distinct is None else set())).merge(acc)
        return out

    return lookup


def checked(plan: Plan, values: list[bytes], now: int) -> list[tuple[int, Row | Rejection]]:
    """Each message's verdict by the plan's generic check."""
    check = EventCheck(plan.schema, {e.join_key for e in plan.entities}).check
    return [(i, parse_row(v, now, check)) for i, v in enumerate(values)]


def test_speed_layer_pipeline_over_fakes(plan: Plan) -> None:
    now = 1_767_225_600_000_000 + 10 * 86_400 * SECOND
    cfg = GeneratorConfig(
        start=now - 3 * 3600 * SECOND,
        end=now - 60 * SECOND,
        events=4_000,
        users=40,
        products=15,
        duplicate_rate=0.05,
        late_rate=0.05,
        malformed_rate=0.03,
    )
    batches = list(generate(cfg, seed=7))
    keys = [k for b in batches for k in b.keys]
    values = [v for b in batches for v in b.values]
    records = [
        Record(None if k is None else k.encode(), v, i, now // 1000)
        for i, (k, v) in enumerate(zip(keys, values, strict=True))
    ]

    sinks = MemorySinks(plan)
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: now
    )
    for lo in range(0, len(records), 700):
        asyncio.run(layer.handle({"events-0": records[lo : lo + 700]}))
    asyncio.run(layer.flush())

    parsed = checked(plan, values, now)
    valid = [(i, ev) for i, ev in parsed if not isinstance(ev, Rejection)]
    firsts = list({ev["event_id"]: ev for _, ev in reversed(valid)}.values())
    for view in plan.views:
        key = view.entity.join_key
        for entity in sorted({e[key] for e in firsts if e[key]}):
            got = evaluate(view, lookup_in(sinks.tiles.tiles[view.name], entity), now)
            want = plan_bruteforce.values(plan, view.name, firsts, entity, now)
            assert got.keys() == want.keys() and all(isclose(got[n], want[n]) for n in want), (entity, got, want)
    assert [ev["event_id"] for ev, _, _ in sinks.raw.rows] == [ev["event_id"] for _, ev in valid]
    bad = Counter(r.reason for _, r in parsed if isinstance(r, Rejection))
    assert Counter(sinks.dead.reasons()) == bad and sum(bad.values()) > 50
    assert layer.pending == {"events-0": len(records)}  # every offset released for commit


def test_a_record_without_a_value_is_dead_lettered_as_malformed(plan: Plan) -> None:
    now = 1_767_225_600_000_000
    ev = Event("e1", "click", "u1", "p1", now - HOUR, None, 1, None)
    records = [Record(None, message(ev)[1], 0, now // 1000), Record(b"u2", None, 1, now // 1000)]
    sinks = MemorySinks(plan)
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: now
    )
    asyncio.run(layer.handle({"events-0": records}))
    asyncio.run(layer.flush())
    assert sinks.dead.reasons() == ["malformed_json"] and [v for _, v, _ in sinks.dead.records] == [b""]
    assert [row["event_id"] for row, _, _ in sinks.raw.rows] == ["e1"]
    assert layer.pending == {"events-0": 2}


def test_future_stamped_events_count_from_their_time_then_move(plan: Plan) -> None:
    """docs/design.md §5 in-process: events stamped ahead of the worker's clock are held out of the tiles;
    the online merge counts each exactly once as_of passes its time; once due, the worker moves them."""
    now = 1_767_225_600_000_000 + 10 * 86_400 * SECOND + 7 * 60 * SECOND
    clock = [now]
    events = [
        Event(f"e{i}", ["click", "purchase", "page_view"][i % 3], f"u{i % 4}", f"p{i % 3}", t, 10.0 + i, 1, None)
        for i, t in enumerate([now - 10 * SECOND * k for k in range(1, 30)] + [now + 7 * SECOND * k for k in range(30)])
    ]
    records = [Record(k.encode(), v, i, now // 1000) for i, (k, v) in enumerate(message(e) for e in events)]
    rows = [ev for _, ev in checked(plan, [message(e)[1] for e in events], now + HOUR)]
    sinks = MemorySinks(plan)
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: clock[0]
    )
    asyncio.run(layer.handle({"events-0": records}))
    held = {eid for by_id in sinks.tiles.future.values() for eid in by_id}
    assert held == {e.event_id for e in events if e.event_time >= now}

    def check(as_of: int) -> None:
        """The tiles plus the held events before ``as_of`` (what a reader merges) give the contract's values."""
        for view in plan.views:
            key = view.entity.join_key
            due = [ev for ev in sinks.tiles.future[view.name].values() if ev["event_time"] < as_of]
            extra = ViewTiler(view, "event_time").build(due)
            for entity in sorted({e[key] for e in rows if isinstance(e, dict) and e[key]}):
                got = evaluate(view, merged(sinks.tiles.tiles[view.name], extra, entity), as_of)
                want = plan_bruteforce.values(plan, view.name, [e for e in rows if isinstance(e, dict)], entity, as_of)
                assert all(isclose(got[n], w) for n, w in want.items()), (as_of, entity, got, want)

    for as_of in (now, now + 1, now + 7 * SECOND, now + 7 * SECOND + 1, now + 100 * SECOND, now + 400 * SECOND):
        check(as_of)
    clock[0] = now + 100 * SECOND
    asyncio.run(layer.move_due())
    still = {eid for by_id in sinks.tiles.future.values() for eid in by_id}
    assert still == {e.event_id for e in events if e.event_time >= now + 100 * SECOND}
    for as_of in (now + 100 * SECOND, now + 100 * SECOND + 1, now + 400 * SECOND):
        check(as_of)


class RecordingConsumer:
    """The two consumer calls a rebalance makes: ``assignment()`` and ``commit(offsets)`` (refused for a
    partition it does not own, as aiokafka does)."""

    def __init__(self, owned: set[str]) -> None:
        self.owned = owned
        self.commits: list[dict[str, int]] = []

    def assignment(self) -> set[str]:
        return set(self.owned)

    async def commit(self, offsets: dict[str, int]) -> None:
        if set(offsets) - self.owned:
            raise RuntimeError(f"not assigned: {set(offsets) - self.owned}")
        self.commits.append(dict(offsets))


def test_rebalance_finishes_the_taken_batch_and_commits_it_before_giving_up_partitions() -> None:
    """A batch taken from the consumer (validated, not yet applied) when the group rebalances: the revoke
    callback waits for it, flushes the raw sink and commits its offsets, so the partition's next owner
    starts after it; offsets of partitions no longer owned are then forgotten."""
    now = 1_767_225_600_000_000
    events = [
        Event(f"e{i}", "click", f"u{i % 7}", f"p{i % 3}", now - (i + 1) * SECOND, None, 1, None) for i in range(300)
    ]
    records = [Record(k.encode(), v, i, now // 1000) for i, (k, v) in enumerate(message(e) for e in events)]
    sinks = MemorySinks(current_plan())
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: now
    )
    consumer = RecordingConsumer({"events-0", "events-1"})
    layer.consumer = consumer

    async def rebalance_during_a_batch() -> None:
        batch = await layer.take({"events-0": records})
        revoke = asyncio.ensure_future(layer.on_revoked())
        await asyncio.sleep(0.05)
        assert not revoke.done(), "the revoke callback must wait for the batch taken from the consumer"
        await layer.finish(batch)
        await asyncio.wait_for(revoke, 5)

    asyncio.run(rebalance_during_a_batch())
    assert consumer.commits == [{"events-0": len(records)}]
    assert len(sinks.raw.rows) == len(records)

    layer.pending = {"events-0": 7, "events-1": 9}
    layer.on_assigned({"events-1"})
    assert layer.pending == {"events-1": 9}


def test_later_copies_with_other_entities_or_after_a_too_old_first_copy_do_not_count(plan: Plan) -> None:
    """docs/design.md §2, through the layer: a copy re-sent with another user and product, and a copy of an
    event whose first copy was too old for the tiles, count nowhere (the fake keeps markers per (view,
    entity) as the script does, so only the event_id claims can tell)."""
    now = 1_767_225_600_000_000 + 10 * 86_400 * SECOND

    def msg(eid: str, user: str, product: str, t: int) -> bytes:
        body = f'{{"event_id":"{eid}","event_type":"click","user_id":"{user}","product_id":"{product}",'
        return (body + f'"event_time":{t // 1000}}}').encode()

    batches = [
        [msg("a", "u1", "p1", now - 60 * SECOND), msg("b", "u3", "p3", now - 30 * 86_400 * SECOND)],
        [msg("a", "u2", "p2", now - 30 * SECOND), msg("b", "u3", "p3", now - 20 * SECOND)],
        [msg("b", "u4", "p4", now - 10 * SECOND)],
    ]
    sinks = MemorySinks(plan)
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: now
    )
    offset = 0
    for values in batches:
        asyncio.run(
            layer.handle({"events-0": [Record(None, v, offset + i, now // 1000) for i, v in enumerate(values)]})
        )
        offset += len(values)
    firsts = [
        {"event_id": "a", "event_type": "click", "user_id": "u1", "product_id": "p1", "event_time": now - 60 * SECOND}
    ]
    for view in plan.views:
        for entity in ("u1", "u2", "u3", "u4") if view.entity.join_key == "user_id" else ("p1", "p2", "p3", "p4"):
            got = evaluate(view, lookup_in(sinks.tiles.tiles[view.name], entity), now)
            want = plan_bruteforce.values(plan, view.name, firsts, entity, now)
            assert all(isclose(got[n], want[n]) for n in want), (view.name, entity, got, want)


class HoldingControl:
    """The backfill's side of a hold, in memory: ``poll`` finds the hold, ``ack`` records the clock."""

    def __init__(self) -> None:
        self.acks: list[int] = []

    async def poll(self) -> str | None:
        return "backfill-1"

    async def ack(self, token: str, clock: int) -> None:
        self.acks.append(clock)

    async def still_held(self, token: str) -> bool | None:
        return False  # released at once

    async def reregister(self) -> None:
        pass


class PausedConsumer:
    """What a hold asks of the consumer: its assignment, pause and resume, and polls that bring nothing."""

    def assignment(self) -> set[str]:
        return set()

    def pause(self, *tps: str) -> None:
        pass

    def resume(self, *tps: str) -> None:
        pass

    async def getmany(self, timeout_ms: int = 0) -> dict[str, list[object]]:
        return {}


def test_a_hold_is_acknowledged_with_the_clock_its_moves_used(plan: Plan, monkeypatch: pytest.MonkeyPatch) -> None:
    """``fstore backfill`` folds into its tiles every event before the clock a worker acknowledges, and writes
    later ones as fields the worker moves when due: so no event before that clock may still wait in the worker
    for a move, or it counts twice. The raw flush between the move and the acknowledgement takes time (a
    Delta write): the acknowledgement must carry the move's clock, not one read after the flush."""
    now = 1_767_225_600_000_000 + 10 * 86_400 * SECOND
    clock = [now]
    events = [Event(f"e{k}", "click", "u1", "p1", now + 7 * SECOND * k, None, 1, None) for k in range(1, 30)]
    records = [Record(b"u1", message(e)[1], i, now // 1000) for i, e in enumerate(events)]
    sinks = MemorySinks(plan)
    layer = SpeedLayer(
        StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw, clock=lambda: clock[0]
    )
    asyncio.run(layer.handle({"events-0": records}))
    assert {row["event_id"] for _, _, (_, _, row) in layer.future} == {e.event_id for e in events}  # all queued
    control = HoldingControl()
    layer.control, layer.consumer = control, PausedConsumer()  # type: ignore[assignment]
    flush = layer.flush

    async def slow_flush() -> None:
        await flush()
        clock[0] += 20 * SECOND  # the Delta write took 20 s of processing clock

    monkeypatch.setattr(layer, "flush", slow_flush)
    clock[0] = now + 30 * SECOND
    asyncio.run(layer.follow(None))
    (acked,) = control.acks
    queued = [t for t, _, _ in layer.future]
    assert queued and min(queued) >= acked, (acked, sorted(queued)[:3])  # nothing before the ack waits for a move
    moved = {e.event_id for e in events if e.event_time < acked}
    assert moved and not moved & {eid for by_id in sinks.tiles.future.values() for eid in by_id}


def test_every_dead_letter_reason_is_declared_at_zero_before_any_message(plan: Plan) -> None:
    """A ``{reason}`` series born with its first burst adds nothing to ``rate()`` (probe-ops: 3,000 invalid
    messages in one burst left FstoreDeadLetterRateHigh at 0), so the worker creates each at 0 on start."""
    metrics.EVENTS_INVALID.clear()
    sinks = MemorySinks(plan)
    SpeedLayer(StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw)
    body = generate_latest(metrics.REGISTRY).decode()
    declared = dict(re.findall(r'^fstore_stream_events_invalid_total\{reason="([^"]+)"\} (\S+)$', body, re.M))
    # every reason the generator's invalid traffic gets (it cycles through the contract's list) is there
    now = 1_767_225_600_000_000
    cfg = GeneratorConfig(start=now - HOUR, end=now, events=2_000, users=5, products=5, malformed_rate=0.5)
    values = [v for b in generate(cfg, seed=3) for v in b.values]
    seen = {r.reason for _, r in checked(plan, values, now) if isinstance(r, Rejection)}
    assert len(seen) >= 8 and seen <= declared.keys(), seen - declared.keys()
    assert {"malformed_json", "oversized", "unprocessable", "future_timestamp"} <= declared.keys()
    assert set(declared.values()) == {"0.0"}
