"""An in-memory :class:`~fstore.online.ports.FeatureReader`: the lambda merge over tile dicts.

Batch tiles serve ``[tail, C)`` and speed tiles ``[C, as_of)`` (docs/design.md §4), evaluated with
the core's :func:`~fstore.core.tiles.evaluate` — the reference the Redis reader is tested against. The
speed tiles can be those of the stream worker's fake (:class:`jobs.stream.fakes.MemoryTiles`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from fstore.clock import Clock, wall_clock
from fstore.core.events import Event
from fstore.core.tiles import Tile, TileKey, TileLookup, add_event, entity_of, evaluate, merge_tiles
from fstore.online.merge import EntityRead, ReadResult
from fstore.online.reader import Snapshot
from fstore.redis.layout import BatchPointer

Tiles = Mapping[str, Mapping[TileKey, Tile]]  # view name -> tiles of every entity


class MemoryReader:
    """Reads from ``batch`` tiles (the published view of ``pointer``), ``speed`` tiles and held future events.

    Args:
        speed: speed tiles per view name (only those from the cutover on are read).
        batch: batch tiles per view name (only those before the cutover are read).
        pointer: the published batch view (version and cutover C); ``None``: speed tiles only.
        clock: the default ``as_of``.
        future: future-stamped events held out of the tiles, per view name and event_id (those of
            :class:`jobs.stream.fakes.MemoryTiles`); each counts once ``as_of`` passes its event_time.
    """

    def __init__(
        self,
        speed: Tiles,
        batch: Tiles | None = None,
        pointer: BatchPointer | None = None,
        clock: Clock = wall_clock,
        future: Mapping[str, Mapping[str, Event]] | None = None,
    ) -> None:
        self.speed, self.batch, self.pointer, self.clock = speed, batch or {}, pointer, clock
        self.future = future or {}

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        t = self.clock() if as_of is None else as_of
        cutover = self.pointer.cutover if self.pointer is not None else None
        snap = Snapshot(t, self.pointer)
        for r in reads:
            due: dict[TileKey, Tile] = {}  # the held events of this entity that count at t, as tiles
            for ev in self.future.get(r.view.name, {}).values():
                if (
                    entity_of(r.view, ev) == r.entity
                    and (cutover is None or ev.event_time >= cutover)
                    and ev.event_time < t
                ):
                    add_event(due, r.view, ev)
            lookup = self._lookup(r.view.name, r.entity, cutover, due)
            speed = self.speed.get(r.view.name, {})
            mine = [k.start for k in (*speed, *due) if k.entity == r.entity and (cutover is None or k.start >= cutover)]
            snap.results.append(ReadResult(evaluate(r.view, lookup, t, r.names), max(mine, default=None)))
        return snap

    def _lookup(self, view: str, entity: str, cutover: int | None, due: Mapping[TileKey, Tile]) -> TileLookup:
        speed, batch = self.speed.get(view, {}), self.batch.get(view, {})

        def lookup(size: int, start: int) -> Tile | None:
            key = TileKey(entity, size, start)
            if cutover is not None and start < cutover:
                return batch.get(key)
            if key not in due:
                return speed.get(key)
            both: dict[TileKey, Tile] = {}
            merge_tiles(both, {key: speed.get(key, {})})
            merge_tiles(both, {key: due[key]})
            return both[key]

        return lookup
