"""In-memory fakes of the speed layer's ports (:mod:`jobs.stream.ports`), for in-process tests.

They keep the contracts the worker relies on — tiles exactly once per event_id, raw rows released in
order, dead letters acknowledged — and nothing else. Example::

    sinks = MemorySinks(list(VIEWS.values()))
    layer = SpeedLayer(settings, events_topic=None, dlq_topic=sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw)
    await layer.handle({tp: records})
    await layer.flush()
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fstore.core.events import Event
from fstore.core.features import FeatureView
from fstore.core.tiles import Tile, TileKey, add_event


class MemoryTiles:
    """:class:`~jobs.stream.ports.TileSink` over dicts: ``tiles[view name][TileKey]`` via the core's
    :func:`~fstore.core.tiles.add_event`, an event_id counted once."""

    def __init__(self, views: Sequence[FeatureView]) -> None:
        self.views = tuple(views)
        self.tiles: dict[str, dict[TileKey, Tile]] = {v.name: {} for v in self.views}
        self.seen: set[str] = set()

    def plan(self, events: Sequence[Event]) -> list[Event]:
        return list(events)

    async def send(self, plan: list[Event], on_sent: Callable[[], None] | None = None) -> set[str]:
        if on_sent is not None:
            on_sent()
        return self._apply(plan)

    async def apply(self, events: Sequence[Event]) -> set[str]:
        return self._apply(events)

    def _apply(self, events: Sequence[Event]) -> set[str]:
        skipped: set[str] = set()
        for ev in events:
            if ev.event_id in self.seen:
                skipped.add(ev.event_id)
                continue
            self.seen.add(ev.event_id)
            for view in self.views:
                add_event(self.tiles[view.name], view, ev)
        return skipped


@dataclass
class ListRaw:
    """:class:`~jobs.stream.ports.RawEventSink` that "writes" to a list (``rows``: event, hash, ingested_at)."""

    rows: list[tuple[Event, str, int]] = field(default_factory=list)
    _buffer: list[tuple[Event, str, int]] = field(default_factory=list)
    _tokens: list[Any] = field(default_factory=list)

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def add(
        self, events: Sequence[Event], hashes: Sequence[str], ingested_at: Sequence[int], tokens: Sequence[Any]
    ) -> None:
        self._buffer += zip(events, hashes, ingested_at, strict=True)
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

    def __init__(self, views: Sequence[FeatureView]) -> None:
        self.tiles = MemoryTiles(views)
        self.raw = ListRaw()
        self.dead = ListDeadLetters()
        self.kv = MemoryKV()
