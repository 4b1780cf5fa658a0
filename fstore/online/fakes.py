"""An in-memory :class:`~fstore.online.ports.FeatureReader`: the lambda merge over tile dicts.

Batch tiles serve ``[tail, C)`` and speed tiles ``[C, as_of)`` (docs/design.md §4), evaluated with
the core's :func:`~fstore.core.tiles.evaluate` — the reference the Redis reader is tested against. The
speed tiles can be those of the stream worker's fake (:class:`jobs.stream.fakes.MemoryTiles`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fstore.clock import Clock, wall_clock
from fstore.core.tiles import Tile, TileKey, TileLookup, evaluate
from fstore.online.merge import EntityRead, ReadResult
from fstore.online.reader import Snapshot
from fstore.redis.layout import BatchPointer

Tiles = Mapping[str, Mapping[TileKey, Tile]]  # view name -> tiles of every entity


class MemoryReader:
    """Reads from ``batch`` tiles (the published view of ``pointer``) and ``speed`` tiles.

    Args:
        speed: speed tiles per view name (only those from the cutover on are read).
        batch: batch tiles per view name (only those before the cutover are read).
        pointer: the published batch view (version and cutover C); ``None``: speed tiles only.
        clock: the default ``as_of``.
    """

    def __init__(
        self, speed: Tiles, batch: Tiles | None = None, pointer: BatchPointer | None = None, clock: Clock = wall_clock
    ) -> None:
        self.speed, self.batch, self.pointer, self.clock = speed, batch or {}, pointer, clock

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        t = self.clock() if as_of is None else as_of
        cutover = self.pointer.cutover if self.pointer is not None else None
        snap = Snapshot(t, self.pointer)
        for r in reads:
            lookup = self._lookup(r.view.name, r.entity, cutover)
            speed = self.speed.get(r.view.name, {})
            mine = [k.start for k in speed if k.entity == r.entity and (cutover is None or k.start >= cutover)]
            snap.results.append(ReadResult(evaluate(r.view, lookup, t, r.names), max(mine, default=None)))
        return snap

    def _lookup(self, view: str, entity: str, cutover: int | None) -> TileLookup:
        speed, batch = self.speed.get(view, {}), self.batch.get(view, {})

        def lookup(size: int, start: int) -> Tile | None:
            if cutover is not None and start < cutover:
                return batch.get(TileKey(entity, size, start))
            return speed.get(TileKey(entity, size, start))

        return lookup
