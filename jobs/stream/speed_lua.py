"""The Lua script that applies speed-tile deltas to Redis exactly once per event (docs/design.md §2, §4, §8).

The stream worker pre-aggregates a batch in memory as if every event were new, grouped by
``(view, entity)`` — a *subgroup*: the events' de-duplication markers plus the summed tile deltas of
that entity. One script call carries several subgroups (all of one hash slot on Redis Cluster) and,
for each subgroup atomically:

* if any of its markers exists, applies nothing and reports the duplicate markers;
* otherwise sets every marker, adds the deltas to the tile hashes and refreshes the hashes' TTL. A delta
  is ``HINCRBY`` of the count, then: for a count-style measure (every value is 1) the sum (= the new
  count; on a new cell also min = max = ``1.0``); otherwise ``HINCRBYFLOAT`` of the sum and min/max set
  outright on a new cell (the new count equals the delta's), compare-and-set otherwise. The fields to set
  in one hash go out in one ``HSET`` (the client sends the deltas grouped by hash).

Markers are fields (the event_id) of one hash per ``(view, entity)`` and *marker generation*
(:func:`fstore.redis.layout.marker_key`), not a key per event: Redis is about half the speed layer's CPU,
and a key per marker (``SET .. EX .. NX``, about two per event) was most of it — a new key and an expiry
entry each, where a hash field is one small entry and a subgroup's markers are checked with one
``HMGET`` and set with one ``HSET``. Generation ``g = ⌊now / T⌋`` (T = the marker TTL, ``now`` the
writer's processing clock) expires at ``(g + 2)·T``, so every marker lives at least T (at most 2T). A
subgroup checks its event_ids in generations g − 1, g and g + 1 (a writer whose clock is behind another's
across a generation boundary still sees the other's markers) and sets them in g; one ``EXISTS`` skips
g − 1 and g + 1 when neither hash exists. A lone marker is checked and set by one ``HSETNX``.

Future-stamped events (docs/design.md §5: no event counts before its event_time). An event whose event_time
is not before the worker's processing clock is not folded into a tile: its subgroup stores it as one
exact field of its day hash, ``f:<event_time µs>:<event_id>`` = ``"<measure>=<value> ..."``
(:func:`fstore.redis.layout.future_field`), which readers fold in only while ``event_time < as_of``.
Every tile therefore holds only events older than the clock of the write, and a reader that takes
``as_of`` after its read (:class:`fstore.online.reader.ReadCore`) never counts an event too early. Once the
clock passes the event_time, the worker *moves* it: a subgroup in move mode carries the event's cells
and deletes the field in the same atomic step, guarded by markers in the ``mv`` hashes instead of the
``m`` ones (a repeated move applies nothing). A field never moved (the worker died first) stays exact until its
hash expires.

The client drops the reported duplicates, re-aggregates only those subgroups and calls again: optimistic,
one round trip per batch when there are no duplicates, and markers never disagree with the tiles,
whatever crashes or redeliveries happen in between. Keys and fields come from :mod:`fstore.redis.layout`.

Script arguments: ``KEYS`` = per subgroup its marker hashes of generations g − 1, g, g + 1, then its tile
hashes; ``ARGV`` = the seconds generation g has left to live, the tile TTL, the number of subgroups and one
JSON array (decoded by the script with ``cjson``; encoding thousands of separate arguments cost more
client CPU than anything else in the worker) holding per subgroup ``n_markers, n_tile_keys, n_slots,
n_fields``, its ``n_markers`` event_ids, then deltas filling ``n_slots`` array slots: ``(i, field prefix,
count, sum, min, max)`` with ``i >= 0`` the tile key index within the subgroup, or ``(-1 - i, field
prefix, count)`` for a count-style measure (sum = count, min = max = 1); then ``n_fields`` triples ``(i,
field, value)`` of future-event fields to set (``value`` null: to delete, when moving). Sums, minima and
maxima travel as strings in ``repr`` form, so the floats stored are bit-identical to the client's. The
reply is the list of the 1-based positions, among the call's markers in order, of those that already
existed.
"""

from __future__ import annotations

import hashlib
import math
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
from fstore.redis.layout import PREFIX, entity_tag, future_field, future_value, speed_key
from fstore.redis.resp import bulk, command

APPLY_TILES = r"""
local mttl, tttl = ARGV[1], ARGV[2]
local nsub = tonumber(ARGV[3])
local d = cjson.decode(ARGV[4])
local a, k, m = 1, 1, 0
local dups = {}
local function hset(key, h)
  if #h > 0 then redis.call('HSET', key, unpack(h)) end
  return {}
end
local function check(key, first, nm, flags)
  local found = false
  for s = first, first + nm - 1, 500 do
    local r = redis.call('HMGET', key, unpack(d, s, math.min(s + 499, first + nm - 1)))
    for j = 1, #r do
      if r[j] then
        flags[s - first + j] = true
        found = true
      end
    end
  end
  return found
end
for g = 1, nsub do
  local nm, nk, nd, nf = d[a], d[a + 1], d[a + 2], d[a + 3]
  local first = a + 4
  a = first + nm
  local prev, cur, nxt = KEYS[k], KEYS[k + 1], KEYS[k + 2]
  local last = k + 2
  local found, flags = false, {}
  local others = redis.call('EXISTS', prev, nxt) > 0
  if nm == 1 then
    if redis.call('HSETNX', cur, d[first], 1) == 0 then
      found = true
    elseif others and (redis.call('HEXISTS', prev, d[first]) == 1 or redis.call('HEXISTS', nxt, d[first]) == 1) then
      redis.call('HDEL', cur, d[first])
      found = true
    end
    if found then flags[1] = true end
  else
    if others then
      found = check(prev, first, nm, flags)
      found = check(nxt, first, nm, flags) or found
    end
    found = check(cur, first, nm, flags) or found
    if not found then
      for s = first, a - 1, 500 do
        local h = {}
        for i = s, math.min(s + 499, a - 1) do
          h[#h + 1] = d[i]
          h[#h + 1] = 1
        end
        redis.call('HSET', cur, unpack(h))
      end
    end
  end
  if found then
    for j = 1, nm do
      if flags[j] then dups[#dups + 1] = m + j end
    end
    a = a + nd + 3 * nf
  else
    redis.call('EXPIRE', cur, mttl)
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
          local old = redis.call('HMGET', key, f .. ':n', f .. ':x')
          local cn, cx = tonumber(old[1] or ''), tonumber(old[2] or '')
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
  m = m + nm
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


def _day_suffix(day: int) -> str:
    """The speed-hash key suffix of UTC day number ``day``."""
    s = _DAYS.get(day)
    if s is None:
        if len(_DAYS) > _CACHE_MAX:
            _DAYS.clear()
        s = _DAYS[day] = speed_key("", "", day * DAY).rsplit(":", 1)[1]
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


#: Per view: the bucket width (the gcd of its tile sizes: every tile start of an event follows from its
#: event_time floored to it) and, per event_type, its steps when every measure it feeds is count-style.
CountPlan = tuple[int, dict[str, tuple[tuple[int, str], ...]]]


@cache
def count_plan(view: FeatureView) -> CountPlan:
    """``(bucket width, {event_type: ((tile size, measure name), ...)})`` for the count-only event types."""
    plan = fast_plan(view)
    unit = math.gcd(*(size for steps in plan.values() for size, _, _ in steps)) if plan else 1
    only = {k: tuple((size, name) for size, name, _ in v) for k, v in plan.items() if all(m is None for *_, m in v)}
    return unit, only


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

    __slots__ = ("_cells", "_counts", "entity", "events", "future", "moving", "view")

    def __init__(self, view: FeatureView, entity: str, moving: bool = False) -> None:
        self.view, self.entity = view, entity
        self.events: list[Event] = []
        self._cells: Cells = {}
        # events of count-only types, counted per (event_type, event_time floored to the bucket width of
        # count_plan): a session's events share a few buckets, so the cells are built once per bucket
        self._counts: dict[tuple[str, int], int] = {}
        self.future: list[Event] = []
        self.moving = moving

    @property
    def cells(self) -> Cells:
        """The pre-aggregated cells (the bucket counts folded in)."""
        counts = self._counts
        if counts:
            cells = self._cells
            steps = count_plan(self.view)[1]
            for (etype, bucket), n in counts.items():
                for size, name in steps[etype]:
                    key = (size, bucket - bucket % size, name)
                    cells[key] = cells.get(key, 0) + n
            counts.clear()
        return self._cells

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
        self._cells, self._counts = {}, {}
        plan = fast_plan(self.view)
        for ev in self.events:
            steps = plan.get(ev.event_type)
            if steps and ev.event_id not in later:
                _fold(self._cells, steps, ev)

    def encode(self, keys: list[str], data: list[Any], generations: tuple[str, str, str]) -> int:
        """Append this subgroup's KEYS and its part of the JSON argument (markers checked in the generations
        g − 1, g, g + 1 given as text, set in g; see the module docstring); returns its number of markers."""
        tag = f"{PREFIX}:{entity_tag(self.view.name, self.entity)}:"  # the keys of marker_key and speed_key
        marker = tag + ("mv:" if self.moving else "m:")
        keys += (marker + generations[0], marker + generations[1], marker + generations[2])
        by_day: dict[int, list[Any]] = {}  # UTC day -> its hash's deltas (the script writes a hash's cells at once)
        for cell, c in self.cells.items():
            day = cell[1] // DAY
            deltas = by_day.get(day)
            if deltas is None:
                deltas = by_day[day] = [len(by_day)]  # its index among the subgroup's hashes, dropped below
            if c.__class__ is int:
                deltas += (-1 - deltas[0], _prefix(cell), c)
            else:
                n, total, lo, hi = fold(EMPTY, c)
                deltas += (deltas[0], _prefix(cell), n, repr(total), repr(lo), repr(hi))
        fields: list[Any] = []
        if self.future:
            measures = future_measures(self.view)
            for ev in self.future:
                day = ev.event_time // DAY
                deltas = by_day.get(day)
                if deltas is None:
                    deltas = by_day[day] = [len(by_day)]
                if self.moving:
                    value = None
                else:
                    value = future_value(
                        {name: 1.0 if m is None else m.of(ev.price, ev.quantity) for name, m in measures[ev.event_type]}
                    )
                fields += (deltas[0], future_field(ev.event_time, ev.event_id), value)
        hashes = tag + "s:"
        keys += [hashes + _day_suffix(day) for day in by_day]
        data += (len(self.events), len(by_day), sum(map(len, by_day.values())) - len(by_day), len(self.future))
        data += [ev[0] for ev in self.events]
        for deltas in by_day.values():
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
        unit, counted = count_plan(view)
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
            etype: str = ev[1]
            steps = plan.get(etype)
            if steps:
                t: int = ev[4]
                if t >= horizon:
                    sub.future.append(ev)
                elif etype in counted:
                    counts = sub._counts
                    key = (etype, t - t % unit)
                    counts[key] = counts.get(key, 0) + 1
                else:
                    _fold(sub._cells, steps, ev)
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
        _fold(sub._cells, fast_plan(view)[ev.event_type], ev)
    return list(subs.values())


@dataclass
class ScriptCall:
    """One EVALSHA: its KEYS, ARGV and the subgroups it carries (with the 1-based position of their first
    marker among the call's markers, as the script reports duplicates)."""

    keys: list[str]
    argv: list[str | int | float | bytes]
    subs: list[tuple[int, Subgroup]]

    @property
    def markers(self) -> dict[int, tuple[Subgroup, str]]:
        """1-based position of each marker in the call → ``(subgroup, event_id)``, as the script reports them."""
        return {base + j: (sub, ev.event_id) for base, sub in self.subs for j, ev in enumerate(sub.events)}

    def owner(self, idx: int) -> tuple[Subgroup, str]:
        """``(subgroup, event_id)`` of the marker the script reported at position ``idx``."""
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
    subgroups: Sequence[Subgroup],
    marker_ttl: int,
    tile_ttl: int,
    *,
    cluster: bool,
    chunk: int,
    generation: int,
) -> Iterator[ScriptCall]:
    """Pack subgroups into script calls.

    Args:
        subgroups: what to apply.
        marker_ttl: seconds the hash of marker generation ``generation`` has left (:func:`marker_generation`).
        tile_ttl: seconds a tile hash lives after its last write.
        cluster: Redis Cluster — one call per hash slot (every key of a call must share it).
        chunk: otherwise, start a new call once this many markers are packed.
        generation: the marker generation of the writer's clock (see the module docstring).
    """
    generations = (str(generation - 1), str(generation), str(generation + 1))
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
        markers = 1  # 1-based, as the script reports them
        for sub in pack_:
            subs.append((markers, sub))
            markers += sub.encode(keys, data, generations)
        yield ScriptCall(keys, [marker_ttl, tile_ttl, len(pack_), orjson.dumps(data)], subs)


def marker_generation(now: int, marker_ttl: int) -> tuple[int, int]:
    """``(generation, ttl)``: the marker generation of processing clock ``now`` (epoch µs) for a marker TTL of
    ``marker_ttl`` seconds, and the seconds its hashes have left from ``now`` until ``(generation + 2) ·
    marker_ttl`` (see the module docstring). Sent as a relative TTL, so a clock injected in the past (a
    replay, a test) does not expire the markers at once."""
    seconds = now // SECOND
    generation = seconds // marker_ttl
    return generation, (generation + 2) * marker_ttl - seconds


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
