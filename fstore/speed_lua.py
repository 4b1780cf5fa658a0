"""The Lua script that applies speed-tile deltas to Redis exactly once per event (DESIGN.md §2, §4, §8).

The stream worker pre-aggregates a batch in memory as if every event were new, grouped by
``(view, entity)`` — a *subgroup*: the events' de-duplication markers plus the summed tile deltas of
that entity. One script call carries several subgroups (all of one hash slot on Redis Cluster) and,
for each subgroup atomically:

* if any of its markers exists, applies nothing and reports the duplicate markers;
* otherwise sets every marker (``SET .. EX``), adds the deltas to the tile hashes (``HINCRBY`` count,
  ``HINCRBYFLOAT`` sum, compare-and-set min and max) and refreshes the hashes' TTL.

The client drops the reported duplicates, re-aggregates only those subgroups and calls again: optimistic,
one round trip per batch when there are no duplicates, and markers never disagree with the tiles,
whatever crashes or redeliveries happen in between. Keys and fields come from :mod:`fstore.redis_layout`.

Script arguments: ``KEYS`` = per subgroup its markers then its tile hashes; ``ARGV`` = marker TTL, tile
TTL, number of subgroups, then per subgroup ``n_markers, n_tile_keys, n_deltas`` followed by ``n_deltas``
6-tuples ``(tile key index within the subgroup, field prefix, count, sum, min, max)``. The reply is the
list of 1-based ``KEYS`` indexes of markers that already existed.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

from redis.crc import key_slot

from fstore.core.aggregates import Partial
from fstore.core.events import Event
from fstore.core.features import FeatureView
from fstore.core.tiles import Tile, TileKey, add_event, entity_of, tile_plan
from fstore.core.timeutil import DAY, floor_to
from fstore.redis_layout import entity_tag, seen_key, speed_key
from fstore.redis_layout import field as tile_field

APPLY_TILES = r"""
local mttl, tttl = ARGV[1], ARGV[2]
local nsub = tonumber(ARGV[3])
local a, k = 4, 1
local dups = {}
for g = 1, nsub do
  local nm, nk, nd = tonumber(ARGV[a]), tonumber(ARGV[a + 1]), tonumber(ARGV[a + 2])
  a = a + 3
  local found = false
  for i = k, k + nm - 1 do
    if redis.call('EXISTS', KEYS[i]) == 1 then
      dups[#dups + 1] = i
      found = true
    end
  end
  if not found then
    for i = k, k + nm - 1 do
      redis.call('SET', KEYS[i], '1', 'EX', mttl)
    end
    for d = 0, nd - 1 do
      local b = a + d * 6
      local key = KEYS[k + nm + tonumber(ARGV[b])]
      local f = ARGV[b + 1]
      redis.call('HINCRBY', key, f .. ':c', ARGV[b + 2])
      redis.call('HINCRBYFLOAT', key, f .. ':s', ARGV[b + 3])
      local lo = tonumber(ARGV[b + 4])
      local cur = tonumber(redis.call('HGET', key, f .. ':n') or '')
      if cur == nil or lo < cur then redis.call('HSET', key, f .. ':n', ARGV[b + 4]) end
      local hi = tonumber(ARGV[b + 5])
      cur = tonumber(redis.call('HGET', key, f .. ':x') or '')
      if cur == nil or hi > cur then redis.call('HSET', key, f .. ':x', ARGV[b + 5]) end
    end
    for i = k + nm, k + nm + nk - 1 do
      redis.call('EXPIRE', KEYS[i], tttl)
    end
  end
  a = a + nd * 6
  k = k + nm + nk
end
return dups
"""


@dataclass
class Subgroup:
    """The events of one entity of one view in a batch, and their pre-aggregated tiles."""

    view: FeatureView
    entity: str
    events: list[Event] = field(default_factory=list)
    tiles: dict[TileKey, Tile] = field(default_factory=dict)

    @property
    def slot(self) -> int:
        """Redis Cluster hash slot of every key of this subgroup."""
        return int(key_slot(entity_tag(self.view.name, self.entity).encode()))

    def rebuild(self, drop: set[str]) -> None:
        """Remove the events in ``drop`` (duplicates) and re-aggregate the tiles from the rest."""
        self.events = [ev for ev in self.events if ev.event_id not in drop]
        self.tiles = {}
        for ev in self.events:
            add_event(self.tiles, self.view, ev)

    def encode(self, keys: list[str], argv: list[str | int | float]) -> list[tuple[int, str]]:
        """Append this subgroup's KEYS and ARGV; returns ``(KEYS index, event_id)`` of its markers."""
        view, entity = self.view.name, self.entity
        markers = []
        for ev in self.events:
            keys.append(seen_key(view, entity, ev.event_id))
            markers.append((len(keys), ev.event_id))  # 1-based, as Lua reports it
        hashes: dict[str, int] = {}
        days: dict[int, str] = {}  # UTC day -> hash key (formatting the date is the costly part)
        deltas: list[str | int | float] = []
        for tk, tile in self.tiles.items():
            hkey = days.get(tk.start // DAY)
            if hkey is None:
                hkey = days[tk.start // DAY] = speed_key(view, entity, tk.start)
            idx = hashes.setdefault(hkey, len(hashes))
            for measure, p in tile.items():
                prefix = tile_field(tk.size, tk.start, measure, "c")[:-2]
                deltas += (idx, prefix, p.count, repr(p.total), repr(p.minimum), repr(p.maximum))
        keys.extend(hashes)
        argv += (len(markers), len(hashes), len(deltas) // 6)
        argv += deltas
        return markers


def group_events(views: Iterable[FeatureView], events: Iterable[Event]) -> dict[tuple[str, str], Subgroup]:
    """Pre-aggregate events (already unique by event_id) into subgroups per ``(view, entity)``."""
    groups: dict[tuple[str, str], Subgroup] = {}
    events = list(events)
    for view in views:
        # core.tiles.add_event, with the view's tile plan looked up once per batch instead of per event
        # (the lookup hashes the whole FeatureView and was half of add_event's cost).
        plan = tile_plan(view)
        for ev in events:
            entity = entity_of(view, ev)
            if entity is None:
                continue
            sub = groups.get((view.name, entity))
            if sub is None:
                sub = groups[(view.name, entity)] = Subgroup(view, entity)
            sub.events.append(ev)
            tiles = sub.tiles
            for size, by_type in plan:
                measures = by_type.get(ev.event_type)
                if not measures:
                    continue
                tkey = TileKey(entity, size, floor_to(ev.event_time, size))
                tile = tiles.get(tkey)
                if tile is None:
                    tile = tiles[tkey] = {}
                for m in measures:
                    part = tile.get(m.name)
                    if part is None:
                        part = tile[m.name] = Partial()
                    part.add(m.of(ev.price, ev.quantity))
    return groups


@dataclass
class ScriptCall:
    """One EVALSHA: its KEYS, ARGV and what each marker index means."""

    keys: list[str]
    argv: list[str | int | float]
    markers: dict[int, tuple[Subgroup, str]]


def plan_calls(subgroups: Sequence[Subgroup], marker_ttl: int, tile_ttl: int, *, cluster: bool,
               chunk: int) -> Iterator[ScriptCall]:
    """Pack subgroups into script calls.

    Args:
        subgroups: what to apply.
        marker_ttl: seconds a de-duplication marker lives.
        tile_ttl: seconds a tile hash lives after its last write.
        cluster: Redis Cluster — one call per hash slot (every key of a call must share it).
        chunk: otherwise, start a new call once this many markers are packed.
    """
    if cluster:
        by_slot: dict[int, list[Subgroup]] = {}
        for sub in subgroups:
            by_slot.setdefault(sub.slot, []).append(sub)
        packs: Iterable[list[Subgroup]] = by_slot.values()
    else:
        packs = _chunks(subgroups, chunk)
    for pack in packs:
        keys: list[str] = []
        argv: list[str | int | float] = [marker_ttl, tile_ttl, len(pack)]
        markers: dict[int, tuple[Subgroup, str]] = {}
        for sub in pack:
            for idx, event_id in sub.encode(keys, argv):
                markers[idx] = (sub, event_id)
        yield ScriptCall(keys, argv, markers)


def _chunks(subgroups: Sequence[Subgroup], chunk: int) -> Iterator[list[Subgroup]]:
    pack: list[Subgroup] = []
    n = 0
    for sub in subgroups:
        pack.append(sub)
        n += len(sub.events)
        if n >= chunk:
            yield pack
            pack, n = [], 0
    if pack:
        yield pack
