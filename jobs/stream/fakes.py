"""In-memory fakes of the speed layer's ports (:mod:`jobs.stream.ports`), for in-process tests.

They keep the contracts the worker relies on — tiles exactly once per event_id, raw rows released in
order, dead letters acknowledged — and nothing else. Example::

    sinks = MemorySinks(plan)
    layer = SpeedLayer(settings, events_topic=None, dlq_topic=sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw)
    await layer.handle({tp: records})
    await layer.flush()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fstore.core.events import Row
from fstore.core.plan import Plan, View
from fstore.core.view_tiles import Tile, TileKey, ViewTiler
from jobs.stream.pipeline import Claims

Held = tuple[View, str, Row]


@dataclass
class MemoryPlan:
    """A :class:`MemoryTiles` plan: rows to apply (``now``: the processing clock), held future events to
    move; ``held`` lists, once sent, the future events it held."""

    events: list[Row]
    now: int | None = None
    moves: list[Held] = field(default_factory=list)
    held: list[Held] = field(default_factory=list)


class MemoryTiles:
    """:class:`~jobs.stream.ports.TileSink` over dicts: ``tiles[view name][TileKey]`` via the core's
    :class:`~fstore.core.view_tiles.ViewTiler`, an id counted once per (view, entity) — markers, as the
    script's — and once in all with its claims; an event stamped at or after the
    plan's ``now`` is held in ``future[view name][id]`` instead, until moved."""

    def __init__(self, plan: Plan) -> None:
        self.views = plan.views
        self.id_field, self.ts = plan.schema.id_field, plan.schema.timestamp_field
        self.tilers = {v.name: ViewTiler(v, self.ts) for v in self.views}
        self.tiles: dict[str, dict[TileKey, Tile]] = {v.name: {} for v in self.views}
        self.future: dict[str, dict[str, Row]] = {v.name: {} for v in self.views}
        self.markers: set[tuple[str, str, str]] = set()  # (view, entity, event_id), as the script's
        self.claims: dict[str, str] = {}  # event_id -> payload hash of the copy that claimed it

    @property
    def seen(self) -> set[str]:
        """The event_ids counted."""
        return {m[2] for m in self.markers}

    def plan(self, events: Sequence[Row], now: int | None = None) -> MemoryPlan:
        return MemoryPlan(list(events), now)

    async def claim(self, claims: Claims, now: int | None = None) -> set[str]:
        lost: set[str] = set()
        for eid, digest, row in claims:  # the first claim of an id stands
            if self.claims.setdefault(eid, digest) != digest and row is not None:
                lost.add(eid)
        return lost

    def drop(self, plan: MemoryPlan, lost: set[str]) -> set[str]:
        idf = self.id_field
        dropped = {ev[idf] for ev in plan.events if ev[idf] in lost}
        plan.events = [ev for ev in plan.events if ev[idf] not in lost]
        return dropped

    async def send(self, plan: MemoryPlan, on_sent: Callable[[], None] | None = None) -> set[str]:
        if on_sent is not None:
            on_sent()
        return self._apply(plan)

    async def apply(self, events: Sequence[Row], now: int | None = None) -> set[str]:
        return self._apply(self.plan(events, now))

    def stored_future(self, plan: MemoryPlan) -> list[Held]:
        return plan.held

    def plan_moves(self, due: Sequence[Held]) -> MemoryPlan:
        return MemoryPlan([], moves=list(due))

    def _apply(self, plan: MemoryPlan) -> set[str]:
        idf = self.id_field
        for view, _, ev in plan.moves:
            if self.future[view.name].pop(ev[idf], None) is not None:
                self.tilers[view.name].add(self.tiles[view.name], ev)
        skipped: set[str] = set()
        for ev in plan.events:
            marks = [(v.name, str(ev.get(v.entity.join_key)), ev[idf]) for v in self.views]
            if any(m in self.markers for m in marks):  # like the script: markers per (view, entity)
                skipped.add(ev[idf])
                continue
            self.markers.update(marks)
            for view in self.views:
                entity = ev.get(view.entity.join_key)
                if plan.now is not None and ev[self.ts] >= plan.now and entity is not None:
                    self.future[view.name][ev[idf]] = ev
                    plan.held.append((view, str(entity), ev))
                else:
                    self.tilers[view.name].add(self.tiles[view.name], ev)
        return skipped


@dataclass
class ListRaw:
    """:class:`~jobs.stream.ports.RawEventSink` that "writes" to a list (``rows``: event, hash, ingested_at)."""

    rows: list[tuple[Row, str, int]] = field(default_factory=list)
    _buffer: list[tuple[Row, str, int]] = field(default_factory=list)
    _tokens: list[Any] = field(default_factory=list)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def to_rows(
        self, events: Sequence[Row], hashes: Sequence[str], ingested_at: Sequence[int]
    ) -> list[tuple[Row, str, int]]:
        return list(zip(events, hashes, ingested_at, strict=True))

    def add(self, rows: list[tuple[Row, str, int]], tokens: Sequence[Any]) -> None:
        self._buffer += rows
        self._tokens += tokens

    def warm(self) -> None:
        return None

    def due(self) -> bool:
        return False  # flushed by the test (or at shutdown)

    async def flush(self) -> tuple[list[Any], int]:
        return self.flush_sync()

    def flush_sync(self) -> tuple[list[Any], int]:
        rows, tokens = self._buffer, self._tokens
        self._buffer, self._tokens = [], []
        self.rows += rows
        return tokens, len(rows)


@dataclass
class ListDeadLetters:
    """:class:`~jobs.stream.ports.DeadLetterSink` that acknowledges at once (``records``: key, value, headers)."""

    records: list[tuple[bytes | None, bytes, dict[str, bytes]]] = field(default_factory=list)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def reset(self) -> None:
        return None

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[None]:
        self.records.append((key, value, dict(headers)))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    def reasons(self) -> list[str]:
        return [h["fstore-reason"].decode() for _, _, h in self.records]


@dataclass
class MemoryKV:
    """:class:`~jobs.stream.ports.KeyValue` over a dict (expiry ignored)."""

    data: dict[str, Any] = field(default_factory=dict)

    async def get(self, key: str) -> Any:
        return self.data.get(key)

    async def set(self, key: str, value: bytes | str, ex: int | None = None) -> bool:
        self.data[key] = value.encode() if isinstance(value, str) else value
        return True


class MemorySinks:
    """One of each fake, for one :class:`~jobs.stream.layer.SpeedLayer`."""

    def __init__(self, plan: Plan) -> None:
        self.tiles = MemoryTiles(plan)
        self.raw = ListRaw()
        self.dead = ListDeadLetters()
        self.kv = MemoryKV()
