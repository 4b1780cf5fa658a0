"""The Lua script that applies speed-tile deltas to Redis exactly once per event (docs/design.md §2, §4, §8).

The stream worker pre-aggregates a batch in memory as if every event were new, grouped by
``(view, entity)`` — a *subgroup*: the events' de-duplication markers plus the summed tile deltas of
that entity. One script call carries several subgroups (all of one hash slot on Redis Cluster) and,
for each subgroup atomically:

* if any of its markers exists, applies nothing and reports the duplicate markers;
* otherwise sets every marker, adds the deltas to the tile hashes and refreshes the hashes' TTL. A delta
  is ``HINCRBY`` of the count, then by the cell's kind (:mod:`jobs.stream.tile_steps`): for a count-style
  measure (every value is 1) the sum (= the new count; on a new cell also min = max = ``1.0``); for a
  number ``HINCRBYFLOAT`` of the sum and min/max set outright on a new cell (the new count equals the
  delta's), compare-and-set otherwise; with the variance state also ``m2``, merged with the stored one by
  the parallel formula of Chan et al. (:class:`fstore.core.tile_state.Acc`) from the old count, sum and
  m2, written with ``%.17g`` so the double round-trips; for text values the count alone. A measure that a
  count_distinct reads also sets its members, one field each (:func:`fstore.redis.layout.distinct_field`).
  The fields to set in one hash go out in one ``HSET`` (the client sends the deltas grouped by hash).

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
exact field of its day hash, ``f:<event_time µs>:<event_id>`` = ``{"<measure>": <value>, ...}`` (JSON,
numbers or text; :func:`fstore.redis.layout.future_field`), which readers fold in only while ``event_time < as_of``.
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
n_fields``, its ``n_markers`` event ids, then deltas filling ``n_slots`` array slots, each ``(code, field
prefix, count, ...)`` with ``code = 8·i + 4·d + kind`` (``i`` the tile key index within the subgroup,
``d`` 1 when members follow): kind 0 (count-style) and 3 (text) stop there, kind 1 adds ``sum, min,
max``, kind 2 ``sum, min, max, m2``; with ``d``, ``n`` then ``n`` members follow. Then ``n_fields``
triples ``(i, field, value)`` of future-event fields to set (``value`` null: to delete, when moving).
Sums, minima, maxima and m2 travel as strings in ``repr`` form, so the floats stored are bit-identical to
the client's. The
reply is the list of the 1-based positions, among the call's markers in order, of those that already
existed.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from operator import itemgetter
from typing import Any

import orjson
from redis.crc import key_slot

from fstore.core.events import Row
from fstore.core.tile_state import Acc
from fstore.core.timeutil import DAY, SECOND
from fstore.core.view_tiles import TileKey
from fstore.core.view_tiles_frame import member
from fstore.redis.layout import PREFIX, entity_tag, future_field, future_value, speed_key
from fstore.redis.resp import bulk, command
from jobs.stream.tile_steps import NUMBER_M2, TEXT, Step, ViewSteps

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
      local code, f, n = d[a], d[a + 1], d[a + 2]
      local kind = code % 4
      local dist = (code - kind) % 8
      local key = KEYS[last + 1 + (code - kind - dist) / 8]
      if key ~= hk or #h > 900 then
        h = hset(hk, h)
        hk = key
      end
      local c = redis.call('HINCRBY', key, f .. ':c', n)
      if kind == 0 then
        h[#h + 1] = f .. ':s'
        h[#h + 1] = c
        if c == n then
          h[#h + 1] = f .. ':n'
          h[#h + 1] = '1.0'
          h[#h + 1] = f .. ':x'
          h[#h + 1] = '1.0'
        end
        a = a + 3
      elseif kind == 3 then
        a = a + 3
      else
        local lo, hi = d[a + 4], d[a + 5]
        if kind == 2 then
          if c == n then
            h[#h + 1] = f .. ':v'
            h[#h + 1] = d[a + 6]
          else
            local old = redis.call('HMGET', key, f .. ':s', f .. ':v')
            local na = c - n
            local delta = tonumber(d[a + 3]) / n - tonumber(old[1] or '0') / na
            local m2 = tonumber(old[2] or '0') + (tonumber(d[a + 6]) + delta * delta * na * n / (na + n))
            h[#h + 1] = f .. ':v'
            h[#h + 1] = string.format('%.17g', m2)
          end
        end
        redis.call('HINCRBYFLOAT', key, f .. ':s', d[a + 3])
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
        a = a + (kind == 2 and 7 or 6)
      end
      if dist > 0 then
        local nm = d[a]
        for j = a + 1, a + nm do
          h[#h + 1] = f .. ':d:' .. d[j]
          h[#h + 1] = '1'
        end
        a = a + 1 + nm
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
#: the list of measured values in event order (any other measure), folded by :func:`_numbers`.
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


def _cell_info(steps: ViewSteps, cell: tuple[int, int, str]) -> tuple[str, int, bool]:
    """``(field prefix, kind, distinct)`` of a cell of a view, memoised in ``steps.cell_cache`` (one lookup per
    cell in :meth:`Subgroup.encode`)."""
    cache = steps.cell_cache
    if len(cache) > _CACHE_MAX:
        cache.clear()
    kind, distinct = steps.kinds[(cell[0], cell[2])]
    info = cache[cell] = (_prefix(cell), kind, distinct)
    return info


def _bucket_cells(steps: ViewSteps, bucket: tuple[Any, int]) -> tuple[tuple[int, str], ...]:
    """``(UTC day, field prefix)`` of each cell a count of a count-only dispatch value at a bucket start adds
    to (:attr:`Subgroup.cells`' expansion, in its order), memoised in ``steps.bucket_cells``."""
    expand = steps.bucket_cells
    if len(expand) > _CACHE_MAX:
        expand.clear()
    value, start = bucket
    cells = [(size, start - start % size, name) for size, name in steps.counted[value]]
    out = expand[bucket] = tuple((cell[1] // DAY, _prefix(cell)) for cell in cells)
    return out


def _fold(cells: Cells, steps: tuple[Step, ...], row: Row, t: int) -> None:
    """Add one event to a subgroup's cells: count it, or keep its measured value (see :data:`Cells`)."""
    for st in steps:
        if st.where is not None and not st.where(row):
            continue
        size = st.size
        key = (size, t - t % size, st.name)
        if st.value is None:
            cells[key] = cells.get(key, 0) + 1
            continue
        x = st.value(row)
        if x is None:
            continue
        values = cells.get(key)
        if values is None:
            cells[key] = [x]
        else:
            values.append(x)


def _numbers(values: list[Any]) -> tuple[int, float, float, float, float]:
    """``(count, sum, min, max, m2)`` of measured numbers in event order, exactly as
    :meth:`fstore.core.tile_state.Acc.add` folds them."""
    n, total, m2 = 0, 0.0, 0.0
    lo = hi = float(values[0])
    for x in values:
        v = float(x)
        if n:
            delta = v - total / n
            m2 += delta * delta * n / (n + 1)
        total += v
        n += 1
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return n, total, lo, hi, m2


class Subgroup:
    """The events of one entity of one view in a batch, and their pre-aggregated tile cells.

    ``future`` holds the events stored as exact fields instead of tile cells (event time not before the
    processing clock); in move mode (``moving``) the subgroup instead carries the cells of due future
    events and deletes their fields, guarded by ``moved`` markers.
    """

    __slots__ = ("_cells", "_counts", "entity", "events", "future", "moving", "steps", "view")

    def __init__(self, steps: ViewSteps, entity: str, moving: bool = False) -> None:
        self.steps, self.view, self.entity = steps, steps.view, entity
        self.events: list[Row] = []
        self._cells: Cells = {}
        # events of count-only dispatch values, counted per (value, event time floored to the bucket width
        # of ViewSteps.unit): a session's events share a few buckets, so the cells are built once per bucket
        self._counts: dict[tuple[Any, int], int] = {}
        self.future: list[Row] = []
        self.moving = moving

    @property
    def cells(self) -> Cells:
        """The pre-aggregated cells (the bucket counts folded in)."""
        counts = self._counts
        if counts:
            cells = self._cells
            counted = self.steps.counted
            for (value, bucket), n in counts.items():
                for size, name in counted[value]:
                    key = (size, bucket - bucket % size, name)
                    cells[key] = cells.get(key, 0) + n
            counts.clear()
        return self._cells

    @property
    def slot(self) -> int:
        """Redis Cluster hash slot of every key of this subgroup."""
        return int(key_slot(entity_tag(self.view.name, self.entity).encode()))

    @property
    def states(self) -> dict[TileKey, dict[str, Acc]]:
        """The cells as the core's partial aggregates (``{TileKey: {measure: Acc}}``; members as text)."""
        out: dict[TileKey, dict[str, Acc]] = {}
        kinds = self.steps.kinds
        for (size, start, name), c in self.cells.items():
            values = [1.0] * c if c.__class__ is int else c
            distinct = kinds[(size, name)][1]
            acc = Acc(distinct=set() if distinct else None)
            for x in values:
                acc.add(x)
            if distinct:
                acc.distinct = {member(x) for x in values}
            out.setdefault(TileKey(self.entity, size, start), {})[name] = acc
        return out

    def rebuild(self, drop: set[str]) -> None:
        """Remove the events in ``drop`` (duplicates) and re-aggregate the cells from the rest."""
        idf, ts = self.steps.id_field, self.steps.ts
        self.events = [ev for ev in self.events if ev[idf] not in drop]
        self.future = [ev for ev in self.future if ev[idf] not in drop]
        later = set() if self.moving else {ev[idf] for ev in self.future}
        self._cells, self._counts = {}, {}
        steps = self.steps.steps
        for ev in self.events:
            if ev[idf] not in later:
                _fold(self._cells, steps(ev), ev, ev[ts])

    def encode(self, keys: list[str], data: list[Any], generations: tuple[str, str, str]) -> int:
        """Append this subgroup's KEYS and its part of the JSON argument (markers checked in the generations
        g − 1, g, g + 1 given as text, set in g; see the module docstring); returns its number of markers."""
        tag = f"{PREFIX}:{entity_tag(self.view.name, self.entity)}:"  # the keys of marker_key and speed_key
        marker = tag + ("mv:" if self.moving else "m:")
        keys += (marker + generations[0], marker + generations[1], marker + generations[2])
        # UTC day -> its hash's deltas (the script writes a hash's cells at once), headed by its index among
        # the subgroup's hashes (dropped below)
        by_day = self._counted_deltas() if not self._cells else self._deltas()
        fields: list[Any] = []
        if self.future:
            ts, idf = self.steps.ts, self.steps.id_field
            for ev in self.future:
                t = ev[ts]
                day = t // DAY
                deltas = by_day.get(day)
                if deltas is None:
                    deltas = by_day[day] = [len(by_day)]
                value = None if self.moving else future_value(self.steps.measured(ev))
                fields += (deltas[0], future_field(t, ev[idf]), value)
        hashes, days = tag + "s:", _DAYS
        events = self.events
        if len(by_day) == 1:  # most subgroups: one hash
            ((day, deltas),) = by_day.items()
            keys.append(hashes + (days.get(day) or _day_suffix(day)))
            data += (len(events), 1, len(deltas) - 1, len(self.future))
            data += map(itemgetter(self.steps.id_field), events)
            data += islice(deltas, 1, None)
        else:
            keys += [hashes + (days.get(day) or _day_suffix(day)) for day in by_day]
            data += (len(events), len(by_day), sum(map(len, by_day.values())) - len(by_day), len(self.future))
            data += map(itemgetter(self.steps.id_field), events)
            for deltas in by_day.values():
                data += islice(deltas, 1, None)
        data += fields
        return len(events)

    def _counted_deltas(self) -> dict[int, list[Any]]:
        """The deltas by day of a subgroup whose cells are all bucket counts (no value kept, no member): the
        counts summed per cell straight from the buckets, in the order :attr:`cells` would give them."""
        expand = self.steps.bucket_cells
        cells: dict[tuple[int, str], int] = {}  # (day, field prefix) -> count
        for bucket, n in self._counts.items():
            targets = expand.get(bucket)
            if targets is None:
                targets = _bucket_cells(self.steps, bucket)
            for cell in targets:
                cells[cell] = cells.get(cell, 0) + n
        by_day: dict[int, list[Any]] = {}
        for (day, prefix), c in cells.items():
            deltas = by_day.get(day)
            if deltas is None:
                deltas = by_day[day] = [len(by_day)]
            deltas += (deltas[0] * 8, prefix, c)
        return by_day

    def _deltas(self) -> dict[int, list[Any]]:
        """The deltas by day of :attr:`cells` (any kind of cell)."""
        by_day: dict[int, list[Any]] = {}
        cache = self.steps.cell_cache
        for cell, c in self.cells.items():
            info = cache.get(cell)
            if info is None:
                info = _cell_info(self.steps, cell)
            prefix, kind, distinct = info
            day = cell[1] // DAY
            deltas = by_day.get(day)
            if deltas is None:
                deltas = by_day[day] = [len(by_day)]
            if c.__class__ is int:
                if not distinct:
                    deltas += (deltas[0] * 8, prefix, c)
                    continue
                c = [1.0] * c
            code = deltas[0] * 8 + 4 * distinct + kind
            if kind == TEXT:
                deltas += (code, prefix, len(c))
            else:
                n, total, lo, hi, m2 = _numbers(c)
                if kind == NUMBER_M2:
                    deltas += (code, prefix, n, repr(total), repr(lo), repr(hi), repr(m2))
                else:
                    deltas += (code, prefix, n, repr(total), repr(lo), repr(hi))
            if distinct:
                members = sorted({member(x) for x in c})
                deltas.append(len(members))
                deltas += members
        return by_day


def group_events(
    views: Iterable[ViewSteps], events: Iterable[Row], now: int | None = None
) -> dict[tuple[str, str], Subgroup]:
    """Pre-aggregate events (already unique by id) into subgroups per ``(view, entity)``.

    Args:
        views: the compiled steps of the feature views to maintain (:func:`jobs.stream.tile_steps.view_steps`).
        events: the rows, unique by the schema's id field.
        now: the processing clock (epoch µs): events with a time ``>= now`` that some measure of a view
            counts are stored as exact future fields, not folded into tiles. ``None``: fold everything.
    """
    groups: dict[tuple[str, str], Subgroup] = {}
    events = list(events)
    horizon = (1 << 63) if now is None else now
    for vs in views:
        unit, counted, key, ts = vs.unit, vs.counted, vs.key, vs.ts
        field, by_value, always = vs.field, vs.by_value, vs.always
        subs: dict[str, Subgroup] = {}
        for ev in events:
            entity = ev[key]
            if entity is None:
                continue
            if entity.__class__ is not str:
                entity = str(entity)
            sub = subs.get(entity)
            if sub is None:
                sub = subs[entity] = Subgroup(vs, entity)
            sub.events.append(ev)
            value = ev[field] if field is not None else None
            t: int
            if value in counted:  # most events: one lookup
                t = ev[ts]
                if t < horizon:
                    counts = sub._counts
                    bucket = (value, t - t % unit)
                    counts[bucket] = counts.get(bucket, 0) + 1
                elif vs.measured(ev):
                    sub.future.append(ev)
                continue
            steps = by_value.get(value, always) if field is not None else always
            if steps:
                t = ev[ts]
                if t < horizon:
                    _fold(sub._cells, steps, ev, t)
                elif vs.measured(ev):
                    sub.future.append(ev)
        name = vs.name
        for entity, sub in subs.items():
            groups[(name, entity)] = sub
    return groups


def move_subgroups(due: Iterable[tuple[ViewSteps, str, Row]]) -> list[Subgroup]:
    """Move-mode subgroups for future events whose time has come: per ``(view, entity)``, the events' tile
    cells and the deletion of their fields. Only events this worker stored as fields of that view and
    entity may be given (a move applies their cells whether the field is there or not)."""
    subs: dict[tuple[str, str], Subgroup] = {}
    for vs, entity, ev in due:
        sub = subs.get((vs.name, entity))
        if sub is None:
            sub = subs[(vs.name, entity)] = Subgroup(vs, entity, moving=True)
        sub.events.append(ev)
        sub.future.append(ev)
        _fold(sub._cells, vs.steps(ev), ev, ev[vs.ts])
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
        return {base + j: (sub, ev[sub.steps.id_field]) for base, sub in self.subs for j, ev in enumerate(sub.events)}

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
        return sub, sub.events[idx - base][sub.steps.id_field]

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
