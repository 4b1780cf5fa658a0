"""An in-memory :class:`~fstore.online.ports.FeatureReader`: the lambda merge over tile dicts.

Batch tiles serve ``[tail, C)`` and speed tiles ``[C, as_of)`` (docs/design.md §4), evaluated with
the core's :func:`~fstore.core.view_tiles.evaluate` — the reference the Redis reader is tested against.
Tiles are :class:`~fstore.core.view_tiles.TileKey` → ``{measure: Acc}`` per view name (those of the stream
worker's fake, :class:`jobs.stream.fakes.MemoryTiles`, or of :class:`~fstore.core.view_tiles.ViewTiler`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fstore.clock import Clock, wall_clock
from fstore.core.tile_state import Acc
from fstore.core.view_tiles import Tile, TileKey, TileLookup, ViewTiler, evaluate
from fstore.online.merge import EntityRead, ReadResult
from fstore.online.reader import Snapshot
from fstore.redis.layout import BatchPointer

Tiles = Mapping[str, Mapping[TileKey, Mapping[str, Acc]]]  # view name -> tiles of every entity
Row = Mapping[str, Any]


class MemoryReader:
    """Reads from ``batch`` tiles (the published view of ``pointer``), ``speed`` tiles and held future events.

    Args:
        speed: speed tiles per view name (only those from the cutover on are read).
        batch: batch tiles per view name (only those before the cutover are read).
        pointer: the published batch view (version and cutover C); ``None``: speed tiles only.
        clock: the default ``as_of``.
        future: future-stamped events (normalised rows) held out of the tiles, per view name and event id;
            each counts once ``as_of`` passes its timestamp.
        timestamp_field: the plan's timestamp field (needed with ``future``).
    """

    def __init__(
        self,
        speed: Tiles,
        batch: Tiles | None = None,
        pointer: BatchPointer | None = None,
        clock: Clock = wall_clock,
        future: Mapping[str, Mapping[str, Row]] | None = None,
        timestamp_field: str | None = None,
    ) -> None:
        self.speed, self.batch, self.pointer, self.clock = speed, batch or {}, pointer, clock
        self.future = future or {}
        self.ts = timestamp_field

    def _timestamp_field(self) -> str:
        if self.ts is None:
            raise ValueError("MemoryReader needs the plan's timestamp_field to count held future events")
        return self.ts

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        t = self.clock() if as_of is None else as_of
        cutover = self.pointer.cutover if self.pointer is not None else None
        snap = Snapshot(t, self.pointer)
        for r in reads:
            due: dict[TileKey, Tile] = {}  # the held events of this entity that count at t, as tiles
            held = self.future.get(r.view.name, {})
            if held:
                ts = self._timestamp_field()
                tiler = ViewTiler(r.view, ts)
                for row in held.values():
                    if (
                        str(row.get(r.view.entity.join_key)) == r.entity
                        and (cutover is None or row[ts] >= cutover)
                        and row[ts] < t
                    ):
                        tiler.add(due, row)
            lookup = self._lookup(r.view.name, r.entity, cutover, due)
            speed = self.speed.get(r.view.name, {})
            mine = [k.start for k in (*speed, *due) if k.entity == r.entity and (cutover is None or k.start >= cutover)]
            snap.results.append(ReadResult(evaluate(r.view, lookup, t, r.names), max(mine, default=None)))
        return snap

    def _lookup(self, view: str, entity: str, cutover: int | None, due: Mapping[TileKey, Tile]) -> TileLookup:
        speed, batch = self.speed.get(view, {}), self.batch.get(view, {})

        def lookup(size: int, start: int) -> Mapping[str, Acc] | None:
            key = TileKey(entity, size, start)
            if cutover is not None and start < cutover:
                return batch.get(key)
            if key not in due:
                return speed.get(key)
            both: dict[str, Acc] = {}
            for part in (speed.get(key, {}), due[key]):
                for m, acc in part.items():
                    mine = both.get(m)
                    if mine is None:
                        mine = both[m] = Acc(distinct=None if acc.distinct is None else set())
                    mine.merge(acc)
            return both

        return lookup
