"""The Lua script that applies speed-tile deltas to Redis exactly once per event (docs/design.md §2, §4, §8).

The stream worker pre-aggregates a batch in memory as if every event were new, grouped by
``(view, entity)`` — a *subgroup*: the events' de-duplication markers plus the summed tile deltas of
that entity. One script call carries several subgroups (all of one hash slot on Redis Cluster) and,
for each subgroup atomically:

* if any of its markers exists, applies nothing and reports the duplicate markers (a lone marker is
  checked and set by one ``SET .. EX .. NX``; several by one multi-key ``EXISTS``, then one by one only
  if that finds any);
* otherwise sets every marker (``SET .. EX``), adds the deltas to the tile hashes and refreshes the
  hashes' TTL. A delta is ``HINCRBY`` of the count, then: for a count-style measure (every value is 1)
  the sum (= the new count; on a new cell also min = max = ``1.0``); otherwise ``HINCRBYFLOAT`` of the
  sum and min/max set outright on a new cell (the new count equals the delta's), compare-and-set
  otherwise. The fields to set in one hash go out in one ``HSET`` (the client sends the deltas grouped
  by hash). Redis is about half the speed layer's CPU, so the script issues few commands; most of its
  time is spent in the keyspace itself (one new key per marker). Setting every marker with ``NX`` and
  undoing on a duplicate was tried and costs as much: hot products' subgroups hold hundreds of markers,
  undone and set again for one duplicate.

Future-stamped events (docs/design.md §5: no event counts before its event_time). An event whose event_time
is not before the worker's processing clock is not folded into a tile: its subgroup stores it as one
exact field of its day hash, ``f:<event_time µs>:<event_id>`` = ``"<measure>=<value> ..."``
(:func:`fstore.redis.layout.future_field`), which readers fold in only while ``event_time < as_of``.
Every tile therefore holds only events older than the clock of the write, and a reader that takes
``as_of`` after its read (:class:`fstore.online.reader.ReadCore`) never counts an event too early. Once the
clock passes the event_time, the worker *moves* it: a subgroup in move mode carries the event's cells
and deletes the field in the same atomic step, guarded by a ``moved`` marker instead of the ``seen`` one
(a repeated move applies nothing). A field never moved (the worker died first) stays exact until its
hash expires.

The client drops the reported duplicates, re-aggregates only those subgroups and calls again: optimistic,
one round trip per batch when there are no duplicates, and markers never disagree with the tiles,
whatever crashes or redeliveries happen in between. Keys and fields come from :mod:`fstore.redis.layout`.

Script arguments: ``KEYS`` = per subgroup its markers then its tile hashes; ``ARGV`` = marker TTL, tile
TTL, number of subgroups and one JSON array (decoded by the script with ``cjson``; encoding thousands of
separate arguments cost more client CPU than anything else in the worker) holding per subgroup
``n_markers, n_tile_keys, n_slots, n_fields`` followed by deltas filling ``n_slots`` array slots: ``(i,
field prefix, count, sum, min, max)`` with ``i >= 0`` the tile key index within the subgroup, or ``(-1 -
i, field prefix, count)`` for a count-style measure (sum = count, min = max = 1); then ``n_fields``
triples ``(i, field, value)`` of future-event fields to set (``value`` null: to delete, when moving).
Sums, minima and maxima travel as strings in ``repr`` form, so the floats stored are bit-identical to the
client's. The reply is the list of 1-based ``KEYS`` indexes of markers that already existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from functools import cache
from typing import Any

import orjson
from redis.crc import key_slot

from fstore.core.aggregates import EMPTY, Partial, Stats, fold, ones
from fstore.core.events import Event
from fstore.core.features import FeatureView, Measure, ValueKind
from fstore.core.tiles import Tile, TileKey, tile_plan
from fstore.core.timeutil import DAY, SECOND
from fstore.core.windows import tile_start
from fstore.redis.layout import entity_tag, future_field, future_value, moved_key, seen_key, speed_key
from fstore.redis.resp import bulk, command

APPLY_TILES = r"""
local mttl, tttl = ARGV[1], ARGV[2]
local nsub = tonumber(ARGV[3])
local d = cjson.decode(ARGV[4])
local a, k = 1, 1
local dups = {}
local function hset(key, h)
  if #h > 0 then redis.call('HSET', key, unpack(h)) end
  return {}
end
for g = 1, nsub do
  local nm, nk, nd, nf = d[a], d[a + 1], d[a + 2], d[a + 3]
  a = a + 4
  local last = k + nm - 1
  local found = false
  if nm == 1 then
    if not redis.call('SET', KEYS[k], '1', 'EX', mttl, 'NX') then
      dups[#dups + 1] = k
      found = true
    end
  else
    for i = k, last, 500 do
      if redis.call('EXISTS', unpack(KEYS, i, math.min(i + 499, last))) > 0 then found = true end
    end
    if found then
      for i = k, last do
        if redis.call('EXISTS', KEYS[i]) == 1 then dups[#dups + 1] = i end
      end
    else
      for i = k, last do
        redis.call('SET', KEYS[i], '1', 'EX', mttl)
      end
    end
  end
  if found then
    a = a + nd + 3 * nf
  else
    local stop, hk, h = a + nd, nil, {}
    while a < stop do
      local ki, f, n = d[a], d[a + 1], d[a + 2]
      local key = KEYS[ki < 0 and last - ki or last + 1 + ki]
      if key ~= hk or #h > 900 then
        h = hset(hk, h)
        hk = key
      end
      local c = redis.call('HINCRBY', key, f .. ':c', n)
      if ki < 0 then
        h[#h + 1] = f .. ':s'
        h[#h + 1] = c
        if c == n then
          h[#h + 1] = f .. ':n'
          h[#h + 1] = '1.0'
          h[#h + 1] = f .. ':x'
          h[#h + 1] = '1.0'
        end
        a = a + 3
      else
        redis.call('HINCRBYFLOAT', key, f .. ':s', d[a + 3])
        local lo, hi = d[a + 4], d[a + 5]
        if c == n then
          h[#h + 1] = f .. ':n'
          h[#h + 1] = lo
          h[#h + 1] = f .. ':x'
          h[#h + 1] = hi
        else
          local cur = redis.call('HMGET', key, f .. ':n', f .. ':x')
          local cn, cx = tonumber(cur[1] or ''), tonumber(cur[2] or '')
          if cn == nil or tonumber(lo) < cn then
            h[#h + 1] = f .. ':n'
            h[#h + 1] = lo
          end
          if cx == nil or tonumber(hi) > cx then
            h[#h + 1] = f .. ':x'
            h[#h + 1] = hi
          end
        end
        a = a + 6
      end
    end
    hset(hk, h)
    for j = 1, nf do
      local key, f, v = KEYS[last + 1 + d[a]], d[a + 1], d[a + 2]
      if v == cjson.null then
        redis.call('HDEL', key, f)
      else
        redis.call('HSET', key, f, v)
      end
      a = a + 3
    end
    for i = last + 1, last + nk do
      redis.call('EXPIRE', KEYS[i], tttl)
    end
  end
  k = last + nk + 1
end
return dups
"""

#: What ``EVALSHA`` calls the script (Redis names a script by the SHA-1 of its text).
APPLY_TILES_SHA = hashlib.sha1(APPLY_TILES.encode()).hexdigest()

#: A cell of a subgroup: ``(size, start, measure)`` → the count (count-style measure: every value is 1) or
#: the list of measured values in event order (any other measure), folded by the core (:func:`_stats`).
Cells = dict[tuple[int, int, str], Any]

# Day-hash suffixes and field prefixes repeat across batches; formatting them was the costly part.
_DAYS: dict[int, str] = {}
_PREFIXES: dict[tuple[int, int, str], str] = {}
_CACHE_MAX = 200_000


def _day_suffix(start: int) -> str:
    day = start // DAY
    s = _DAYS.get(day)
    if s is None:
        if len(_DAYS) > _CACHE_MAX:
            _DAYS.clear()
        s = _DAYS[day] = speed_key("", "", start).rsplit(":", 1)[1]
    return s


def _prefix(cell: tuple[int, int, str]) -> str:
    s = _PREFIXES.get(cell)
    if s is None:
        if len(_PREFIXES) > _CACHE_MAX:
            _PREFIXES.clear()
        size, start, measure = cell
        s = _PREFIXES[cell] = f"{size // SECOND}:{start // SECOND}:{measure}"
    return s


@cache
def fast_plan(view: FeatureView) -> dict[str, tuple[tuple[int, str, Measure | None], ...]]:
    """event_type → ``(tile size, measure name, measure or None for count-style)`` over every size."""
    out: dict[str, list[tuple[int, str, Measure | None]]] = {}
    for size, by_type in tile_plan(view):
        for etype, measures in by_type.items():
            for m in measures:
                out.setdefault(etype, []).append((size, m.name, None if m.value is ValueKind.ONE else m))
    return {k: tuple(v) for k, v in out.items()}


def _fold(cells: Cells, steps: tuple[tuple[int, str, Measure | None], ...], ev: Event) -> None:
    """Add one event to a subgroup's cells: count it, or keep its measured value for :func:`_stats`."""
    t = ev.event_time
    for size, name, m in steps:
        key = (size, tile_start(t, size), name)
        if m is None:
            cells[key] = cells.get(key, 0) + 1
            continue
        values = cells.get(key)
        if values is None:
            cells[key] = [m.of(ev.price, ev.quantity)]
        else:
            values.append(m.of(ev.price, ev.quantity))


def _stats(cell: int | list[float]) -> Stats:
    """The partial aggregate of a cell: the core's :func:`~fstore.core.aggregates.fold` of its values in
    event order (so the sums are those of ``Partial.add``), or :func:`~fstore.core.aggregates.ones`."""
    return ones(cell) if isinstance(cell, int) else fold(EMPTY, cell)


@cache
def future_measures(view: FeatureView) -> dict[str, tuple[tuple[str, Measure | None], ...]]:
    """event_type → the distinct ``(measure name, measure or None for count-style)`` it feeds in ``view``."""
    return {etype: tuple(dict.fromkeys((name, m) for _, name, m in steps)) for etype, steps in fast_plan(view).items()}


class Subgroup:
    """The events of one entity of one view in a batch, and their pre-aggregated tile cells.

    ``future`` holds the events stored as exact fields instead of tile cells (event_time not before the
    processing clock); in move mode (``moving``) the subgroup instead carries the cells of due future
    events and deletes their fields, guarded by ``moved`` markers.
    """

    __slots__ = ("cells", "entity", "events", "future", "moving", "view")

    def __init__(self, view: FeatureView, entity: str, moving: bool = False) -> None:
        self.view, self.entity = view, entity
        self.events: list[Event] = []
        self.cells: Cells = {}
        self.future: list[Event] = []
        self.moving = moving

    @property
    def slot(self) -> int:
        """Redis Cluster hash slot of every key of this subgroup."""
        return int(key_slot(entity_tag(self.view.name, self.entity).encode()))

    @property
    def tiles(self) -> dict[TileKey, Tile]:
        """The cells in the core tile form (``{TileKey: {measure: Partial}}``)."""
        out: dict[TileKey, Tile] = {}
        for (size, start, name), c in self.cells.items():
            out.setdefault(TileKey(self.entity, size, start), {})[name] = Partial(*_stats(c))
        return out

    def rebuild(self, drop: set[str]) -> None:
        """Remove the events in ``drop`` (duplicates) and re-aggregate the cells from the rest."""
        self.events = [ev for ev in self.events if ev.event_id not in drop]
        self.future = [ev for ev in self.future if ev.event_id not in drop]
        later = set() if self.moving else {ev.event_id for ev in self.future}
        self.cells = {}
        plan = fast_plan(self.view)
        for ev in self.events:
            steps = plan.get(ev.event_type)
            if steps and ev.event_id not in later:
                _fold(self.cells, steps, ev)

    def encode(self, keys: list[str], data: list[Any]) -> int:
        """Append this subgroup's KEYS and its part of the JSON argument; returns its number of markers."""
        seen = seen_key(self.view.name, self.entity, "")  # fs:{view|entity}:seen:
        tag = seen[:-5]
        marker = moved_key(self.view.name, self.entity, "") if self.moving else seen
        keys += [marker + ev.event_id for ev in self.events]
        hashes: dict[str, list[Any]] = {}  # day hash -> its deltas (the script writes a hash's cells at once)
        for cell, c in self.cells.items():
            hkey = tag + "s:" + _day_suffix(cell[1])
            deltas = hashes.get(hkey)
            if deltas is None:
                deltas = hashes[hkey] = [len(hashes)]  # its index among the subgroup's hashes, dropped below
            idx = deltas[0]
            if c.__class__ is int:
                deltas += (-1 - idx, _prefix(cell), c)
            else:
                n, total, lo, hi = fold(EMPTY, c)
                deltas += (idx, _prefix(cell), n, repr(total), repr(lo), repr(hi))
        fields: list[Any] = []
        if self.future:
            measures = future_measures(self.view)
            for ev in self.future:
                hkey = tag + "s:" + _day_suffix(ev.event_time)
                deltas = hashes.get(hkey)
                if deltas is None:
                    deltas = hashes[hkey] = [len(hashes)]
                if self.moving:
                    value = None
                else:
                    value = future_value(
                        {name: 1.0 if m is None else m.of(ev.price, ev.quantity) for name, m in measures[ev.event_type]}
                    )
                fields += (deltas[0], future_field(ev.event_time, ev.event_id), value)
        keys += hashes
        data += (len(self.events), len(hashes), sum(map(len, hashes.values())) - len(hashes), len(self.future))
        for deltas in hashes.values():
            data += deltas[1:]
        data += fields
        return len(self.events)


def group_events(
    views: Iterable[FeatureView], events: Iterable[Event], now: int | None = None
) -> dict[tuple[str, str], Subgroup]:
    """Pre-aggregate events (already unique by event_id) into subgroups per ``(view, entity)``.

    Args:
        views: the feature views to maintain.
        events: the events, unique by event_id.
        now: the processing clock (epoch µs): events with ``event_time >= now`` that feed a view are
            stored as exact future fields, not folded into tiles. ``None``: fold everything.
    """
    groups: dict[tuple[str, str], Subgroup] = {}
    events = list(events)
    horizon = (1 << 63) if now is None else now
    for view in views:
        plan = fast_plan(view)
        at = 2 if view.entity.join_key == "user_id" else 3  # Event.user_id / Event.product_id
        subs: dict[str, Subgroup] = {}
        for ev in events:
            entity: str | None = ev[at]  # type: ignore[assignment]
            if entity is None:
                continue
            sub = subs.get(entity)
            if sub is None:
                sub = subs[entity] = Subgroup(view, entity)
            sub.events.append(ev)
            steps = plan.get(ev[1])
            if steps:
                if ev[4] < horizon:
                    _fold(sub.cells, steps, ev)
                else:
                    sub.future.append(ev)
        name = view.name
        for entity, sub in subs.items():
            groups[(name, entity)] = sub
    return groups


def move_subgroups(due: Iterable[tuple[FeatureView, str, Event]]) -> list[Subgroup]:
    """Move-mode subgroups for future events whose time has come: per ``(view, entity)``, the events' tile
    cells and the deletion of their fields. Only events this worker stored as fields of that view and
    entity may be given (a move applies their cells whether the field is there or not)."""
    subs: dict[tuple[str, str], Subgroup] = {}
    for view, entity, ev in due:
        sub = subs.get((view.name, entity))
        if sub is None:
            sub = subs[(view.name, entity)] = Subgroup(view, entity, moving=True)
        sub.events.append(ev)
        sub.future.append(ev)
        _fold(sub.cells, fast_plan(view)[ev.event_type], ev)
    return list(subs.values())


@dataclass
class ScriptCall:
    """One EVALSHA: its KEYS, ARGV and the subgroups it carries (with their first KEYS index)."""

    keys: list[str]
    argv: list[str | int | float | bytes]
    subs: list[tuple[int, Subgroup]]

    @property
    def markers(self) -> dict[int, tuple[Subgroup, str]]:
        """1-based KEYS index of each marker → ``(subgroup, event_id)``, as the script reports them."""
        return {base + j: (sub, ev.event_id) for base, sub in self.subs for j, ev in enumerate(sub.events)}

    def owner(self, idx: int) -> tuple[Subgroup, str]:
        """``(subgroup, event_id)`` of the marker the script reported as KEYS index ``idx``."""
        lo, hi = 0, len(self.subs) - 1
        while lo < hi:  # last subgroup whose base <= idx
            mid = (lo + hi + 1) // 2
            if self.subs[mid][0] <= idx:
                lo = mid
            else:
                hi = mid - 1
        base, sub = self.subs[lo]
        return sub, sub.events[idx - base].event_id

    def packed(self, sha: str = APPLY_TILES_SHA) -> bytes:
        """The call as one RESP request, ``EVALSHA sha numkeys *KEYS *ARGV``, ready for the socket.

        Exactly the bytes a Redis client would send (see :func:`pack`), built with one string join:
        redis-py's per-argument encoding of thousands of keys cost more than the rest of the call.
        """
        keys = self.keys
        body = "".join([f"${len(k)}\r\n{k}\r\n" for k in keys])
        if not body.isascii():  # lengths above are in characters; RESP wants bytes
            return command("EVALSHA", sha, len(keys), *keys, *self.argv)
        nkeys = str(len(keys))
        head = (
            f"*{3 + len(keys) + len(self.argv)}\r\n$7\r\nEVALSHA\r\n${len(sha)}\r\n{sha}\r\n"
            f"${len(nkeys)}\r\n{nkeys}\r\n"
        )
        return b"".join([head.encode(), body.encode(), *(bulk(a) for a in self.argv)])


def plan_calls(
    subgroups: Sequence[Subgroup], marker_ttl: int, tile_ttl: int, *, cluster: bool, chunk: int
) -> Iterator[ScriptCall]:
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
    for pack_ in packs:
        keys: list[str] = []
        data: list[Any] = []
        subs: list[tuple[int, Subgroup]] = []
        for sub in pack_:
            subs.append((len(keys) + 1, sub))  # 1-based, as Lua reports it
            sub.encode(keys, data)
        yield ScriptCall(keys, [marker_ttl, tile_ttl, len(pack_), orjson.dumps(data)], subs)


def _chunks(subgroups: Sequence[Subgroup], chunk: int) -> Iterator[list[Subgroup]]:
    pack_: list[Subgroup] = []
    n = 0
    for sub in subgroups:
        pack_.append(sub)
        n += len(sub.events)
        if n >= chunk:
            yield pack_
            pack_, n = [], 0
    if pack_:
        yield pack_
