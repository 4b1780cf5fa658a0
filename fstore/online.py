"""Online reads: the lambda merge of the batch view and the speed view (DESIGN.md §4, §5).

For entity ``e`` of view ``v`` at ``as_of``: tiles before the cutover C come from the batch view
version that the pointer names, tiles from C on come from the speed view; the core evaluates features
from the merged tiles. One pipelined Redis round trip per request reads the pointer and every hash
needed. The pointer is cached; when the pointer read in the same round trip differs from the cached one,
the request is re-read with the new pointer, so a response never mixes two batch versions (superseded
versions stay readable for a grace period).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fstore.core.aggregates import Partial, Value
from fstore.core.features import FeatureView, largest_hop
from fstore.core.tiles import evaluate
from fstore.core.timeutil import DAY, floor_to, iso
from fstore.redis_layout import POINTER_KEY, BatchPointer, batch_key, parse_tiles, speed_key

Clock = Callable[[], int]
Tiles = dict[tuple[int, int], dict[str, Partial]]


def wall_clock() -> int:
    """Current UTC time in epoch microseconds."""
    return time.time_ns() // 1000


@dataclass(frozen=True)
class EntityRead:
    """One entity of one view and the features wanted from it."""

    view: FeatureView
    entity: str
    names: tuple[str, ...]


@dataclass
class ReadResult:
    """Values of one :class:`EntityRead` with the metadata of the merge."""

    values: dict[str, Value]
    newest_speed_tile: int | None  # start of the newest speed tile of the entity (epoch us), if any


@dataclass
class Snapshot:
    """Everything one request returns, read against one batch pointer."""

    as_of: int
    pointer: BatchPointer | None
    results: list[ReadResult] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """JSON-able ``as_of`` / cutover / version block."""
        return {
            "as_of": iso(self.as_of),
            "as_of_us": self.as_of,
            "batch_cutoff": iso(self.pointer.cutover) if self.pointer else None,
            "batch_version": self.pointer.version if self.pointer else None,
        }


def speed_days(view: FeatureView, pointer: BatchPointer | None, as_of: int) -> list[int]:
    """Day starts (epoch us) of the speed hashes a read at ``as_of`` needs."""
    first = view.longest_window + largest_hop()
    start = as_of - first if pointer is None else max(pointer.cutover, as_of - first)
    return list(range(floor_to(start, DAY), as_of + 1, DAY))


def keys_for(read: EntityRead, pointer: BatchPointer | None, as_of: int) -> list[str]:
    """The hashes to HGETALL for one entity read: the batch hash (if any) then the speed hashes."""
    keys = [batch_key(read.view.name, read.entity, pointer.version)] if pointer else []
    return keys + [speed_key(read.view.name, read.entity, d) for d in speed_days(read.view, pointer, as_of)]


def merge(read: EntityRead, pointer: BatchPointer | None, hashes: Sequence[dict[Any, Any]],
          as_of: int) -> ReadResult:
    """Merge the batch tiles before C with the speed tiles from C on and evaluate at ``as_of``."""
    cutover = pointer.cutover if pointer else None
    tiles: Tiles = {}
    newest: int | None = None
    for i, raw in enumerate(hashes):
        is_batch = pointer is not None and i == 0
        for (size, start), partials in parse_tiles(raw).items():
            if cutover is not None and (start < cutover) != is_batch:
                continue  # each side owns its half of the timeline
            if not is_batch:
                newest = start if newest is None else max(newest, start)
            slot = tiles.setdefault((size, start), {})
            for m, p in partials.items():
                slot.setdefault(m, Partial()).merge(p)
    values = evaluate(read.view, lambda size, start: tiles.get((size, start)), as_of, read.names)
    return ReadResult(values, newest)


class OnlineReader:
    """Reads merged feature values from Redis (async; one pipelined round trip per call)."""

    def __init__(self, client: aioredis.Redis, clock: Clock = wall_clock) -> None:
        self.client = client
        self.clock = clock
        self._pointer: BatchPointer | None = None
        self._pointer_loaded = False

    async def pointer(self) -> BatchPointer | None:
        """The serving batch pointer (cached; refreshed by every read)."""
        if not self._pointer_loaded:
            self._pointer = BatchPointer.loads(await self.client.get(POINTER_KEY))
            self._pointer_loaded = True
        return self._pointer

    async def refresh_pointer(self) -> BatchPointer | None:
        """Re-read the serving batch pointer now."""
        self._pointer_loaded = False
        return await self.pointer()

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        """Values of every read at ``as_of`` (default: now), all against the same batch pointer."""
        t = self.clock() if as_of is None else as_of
        for _ in range(5):
            pointer = await self.pointer()
            pipe = self.client.pipeline(transaction=False)
            pipe.get(POINTER_KEY)
            layout = []
            for r in reads:
                keys = keys_for(r, pointer, t)
                layout.append(len(keys))
                for k in keys:
                    pipe.hgetall(k)
            out = await pipe.execute()
            current = BatchPointer.loads(out[0])
            if current != pointer:
                self._pointer = current  # the batch view moved under us: read again with the new one
                continue
            snap = Snapshot(t, pointer)
            pos = 1
            for r, n in zip(reads, layout, strict=True):
                snap.results.append(merge(r, pointer, out[pos:pos + n], t))
                pos += n
            return snap
        raise RedisError("the batch view pointer changed five times during one read")
