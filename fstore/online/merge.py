"""The lambda merge of one entity read (docs/design.md §4): decode tile hashes, fold windows, evaluate features.

Pure (no client imports): :mod:`fstore.online.reader` feeds it the replies of its Redis round trip, the Feast
online store the replies of its own. Everything comes from the compiled plan's view
(:class:`fstore.core.plan.View`); values equal :func:`fstore.core.view_tiles.evaluate` over
:func:`fstore.redis.layout.parse_states` of the same hashes (tested), for every function.

* Tiles are held per (tile size, measure) as start-sorted series of ``(count, sum, min, max, m2)`` holding
  only the tiles that exist (plus, for a measure that keeps them, each tile's distinct members), so a
  window visits the few tiles an entity has instead of probing every tile slot; each (measure, window) is
  merged once per entity even when several aggregations use it.
* The arithmetic is :class:`fstore.core.tile_state.Acc`'s on tuples: window bounds from
  :func:`fstore.core.windows.tile_bounds`, tiles merged in ascending start order (batch tiles before speed
  tiles, so sums are bit-identical to the reference), the variance state merged with Chan's formula only
  for a (size, measure) that a std/var reads, members united only where a count_distinct reads them, values
  by §3's empty-window rules (:func:`value_of`).
* A speed hash's field names repeat across entities and requests (same tile starts, same measures), so
  each distinct name is parsed once (:func:`_field`); decoding a hash is then a dictionary lookup and a
  ``float`` per field. Distinct-member fields (one per member) are parsed each time, never cached.
* :class:`BatchTiles` (the decoded batch hash of one entity, kept across requests by the reader while its
  version serves) memoises the fold of its tiles per (tile size, measure, window tail): the batch part of a
  window changes only when the tail moves to the next tile, once per hop.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from math import gcd
from typing import Any, NamedTuple

from fstore.core.functions import Function, State
from fstore.core.plan import RatioFeature, View
from fstore.core.tile_state import Value
from fstore.core.timeutil import SECOND, floor_to
from fstore.core.windows import tail, tile_bounds, tile_start
from fstore.redis.layout import FUTURE_PREFIX, parse_future

#: A tile's partial aggregate of one measure: ``(count, sum, min, max, m2)`` (min/max ``None`` when no number).
Stats = tuple[int, float, float | None, float | None, float]
Members = frozenset[str]
#: A window's running merge: the stats and the distinct members (``None``: the measure keeps none).
Fold = tuple[int, float, float | None, float | None, float, Members | None]
EMPTY: Fold = (0, 0.0, None, None, 0.0, None)
# Tile starts (ascending), their stats and (when the measure keeps them) their distinct members. Tuples
# of tuples of numbers: the garbage collector untracks them, so a full batch cache adds nothing to the
# cost (and pauses) of collections.
Series = tuple[tuple[int, ...], tuple[Stats, ...], tuple[Members | None, ...] | None]
ColumnKey = tuple[int, str]  # (tile size, measure)
Columns = dict[ColumnKey, Series]
Future = tuple[int, dict[str, float | str]]  # a future-stamped event's exact time and its value per measure
_FUTURE = FUTURE_PREFIX.encode()


class EntityRead(NamedTuple):
    """One entity of one view and the features wanted from it (a tuple: built per entity per request)."""

    view: View
    entity: str
    names: tuple[str, ...]


@dataclass
class ReadResult:
    """Values of one :class:`EntityRead` with the metadata of the merge."""

    values: dict[str, Value]
    newest_speed_tile: int | None  # start of the newest speed tile of the entity (epoch us), if any


# -- decoding ---------------------------------------------------------------------------------------------

# field name -> ((column key, tile start), tile start, stat index 0-4, -1 packed, -3 distinct member); None: junk
FieldInfo = tuple[tuple[ColumnKey, int], int, int]
_FIELDS: dict[bytes, FieldInfo | None] = {}
_FIELDS_MAX = 50_000  # a day of speed tiles of every view has a few thousand distinct field names
_STAT = {b"c": 0, b"s": 1, b"n": 2, b"x": 3, b"v": 4}
_MEMBER = -3
_UNSEEN: FieldInfo = (((0, ""), 0), 0, -2)


def _field(name: bytes) -> FieldInfo | None:
    """Parse a tile field name (remembered unless it is a distinct member's); ``None`` for another shape."""
    info: FieldInfo | None = None
    parts = name.split(b":", 4)
    try:
        n = len(parts)
        if n == 5 and parts[3] == b"d":
            start = int(parts[1]) * SECOND
            return ((int(parts[0]) * SECOND, parts[2].decode()), start), start, _MEMBER
        if n == 4 and parts[3] in _STAT:
            start = int(parts[1]) * SECOND
            info = (((int(parts[0]) * SECOND, parts[2].decode()), start), start, _STAT[parts[3]])
        elif n == 3:
            start = int(parts[1]) * SECOND
            info = (((int(parts[0]) * SECOND, parts[2].decode()), start), start, -1)
    except (ValueError, UnicodeDecodeError):  # not a tile field after all: parse_states ignores it as well
        info = None
    if len(_FIELDS) >= _FIELDS_MAX:
        _FIELDS.clear()
    _FIELDS[name] = info
    return info


def _pairs(raw: Any) -> Iterable[tuple[bytes, bytes]]:
    """(field, value) pairs of an HGETALL reply: a flat RESP2 list, or a mapping (RESP3, redis-py)."""
    if isinstance(raw, list):
        it = iter(raw)
        return zip(it, it, strict=False)
    if raw and not isinstance(next(iter(raw)), bytes):  # a client with decode_responses
        return [(str(k).encode(), str(v).encode()) for k, v in raw.items()]
    items: Iterable[tuple[bytes, bytes]] = raw.items()
    return items


TileAcc = dict[tuple[ColumnKey, int], list[Any]]
TileMembers = dict[tuple[ColumnKey, int], set[str]]


def _decode(raws: Iterable[Any], floor: int, future: list[Future] | None) -> tuple[TileAcc, TileMembers]:
    """The numbers and members of every tile starting at or after ``floor`` in HGETALL replies (both
    field forms, also mixed; other shapes and malformed numbers ignored, as :func:`parse_states` does).
    Future-event fields from ``floor`` on go to ``future`` when it is given."""
    acc: TileAcc = {}
    members: TileMembers = {}
    fields = _FIELDS
    for raw in raws:
        if not raw:
            continue
        for k, v in _pairs(raw):
            info = fields.get(k, _UNSEEN)
            if info is _UNSEEN:
                if k[:2] == _FUTURE:  # one field per event: parsed here, never cached
                    ev = parse_future(k, v) if future is not None else None
                    if ev is not None and ev[0] >= floor:
                        future.append(ev)  # type: ignore[union-attr]
                    continue
                info = _field(k)
            if info is None:
                continue
            tile, start, i = info
            if start < floor:
                continue
            try:
                if i >= 0:
                    stats = acc.get(tile)
                    if stats is None:
                        stats = acc[tile] = [0, 0.0, None, None, 0.0]
                    stats[i] = None if v == b"None" else float(v)
                elif i == -1:
                    values = v.split(b" ")
                    if len(values) == 5:
                        acc[tile] = [None if x == b"None" else float(x) for x in values]
                    elif len(values) == 4:
                        acc[tile] = [*(None if x == b"None" else float(x) for x in values), 0.0]
                else:
                    got = members.get(tile)
                    if got is None:
                        got = members[tile] = set()
                    got.add(k.split(b":", 4)[4].decode())
            except (ValueError, UnicodeDecodeError):  # a malformed number or member: skip the field
                continue
    return acc, members


def _series(
    acc: TileAcc, members: TileMembers, keep: Callable[[int, int, str], bool] | None
) -> tuple[Columns, int | None]:
    """Series per (size, measure) of decoded tiles with a count (that ``keep(size, start, measure)``), and
    the newest tile start kept."""
    by: dict[ColumnKey, list[tuple[int, Stats]]] = {}
    newest: int | None = None
    for tile, (c, s, mn, mx, m2) in acc.items():
        if not c:
            continue
        key, start = tile
        if keep is not None and not keep(key[0], start, key[1]):
            continue
        item = (start, (int(c), 0.0 if s is None else s, mn, mx, 0.0 if m2 is None else m2))
        series = by.get(key)
        if series is None:
            by[key] = [item]
        else:
            series.append(item)
        if newest is None or start > newest:
            newest = start
    out: Columns = {}
    for key, items in by.items():
        if len(items) > 1:
            items.sort(key=lambda it: it[0])
        starts = tuple(st for st, _ in items)
        sets: tuple[Members | None, ...] | None = None
        if members:  # only a measure that a count_distinct reads has member fields
            got = [members.get((key, st)) for st in starts]
            if any(m is not None for m in got):
                sets = tuple(None if m is None else frozenset(m) for m in got)
        out[key] = (starts, tuple(x for _, x in items), sets)
    return out, newest


def decode_speed_hashes(
    raws: Iterable[Any], cutover: int | None, future: list[Future] | None = None
) -> tuple[Columns, int | None]:
    """Decode an entity's speed hashes (HGETALL replies, ascending days) into series of the tiles from
    ``cutover`` on, plus the newest such tile start.

    Same rules as :func:`fstore.redis.layout.parse_states`: both field forms (also mixed), the variance
    state, distinct members, other shapes ignored, tiles with a count of 0 dropped. The exact fields of
    future-stamped events (event_time from ``cutover`` on) are appended to ``future`` when it is given,
    else ignored.
    """
    floor = -(1 << 62) if cutover is None else cutover
    acc, members = _decode(raws, floor, future)
    if not acc:
        return {}, None
    return _series(acc, members, None)


def decode_speed(raw: Any, cutover: int | None) -> tuple[Columns, int | None]:
    """:func:`decode_speed_hashes` of one hash."""
    return decode_speed_hashes((raw,), cutover)


class ViewShape(NamedTuple):
    """What the merge needs to know of a view, computed once per view."""

    retention: dict[ColumnKey, int]  # (size, measure) -> longest window served by those tiles
    variance: frozenset[ColumnKey]  # columns a std/var reads (m2 merged with Chan's formula)
    distinct: frozenset[ColumnKey]  # columns a count_distinct reads (members united)
    finest: int  # the smallest hop
    reach: int  # how far back a read needs tiles: the longest window plus the largest hop


# Per-view caches are keyed by the view's id (a plan's views hash by value, which walks every feature and
# expression: too slow per request); each entry keeps its view, so an id is never reused while cached.
_SHAPES: dict[int, tuple[View, ViewShape]] = {}
_PLANS: dict[tuple[int, tuple[str, ...]], tuple[View, Plan]] = {}
_CACHE_MAX = 1024


def shape_of(view: View) -> ViewShape:
    """The :class:`ViewShape` of ``view`` (memoised per view object)."""
    hit = _SHAPES.get(id(view))
    if hit is not None and hit[0] is view:
        return hit[1]
    shape = _shape(view)
    if len(_SHAPES) >= _CACHE_MAX:
        _SHAPES.clear()
    _SHAPES[id(view)] = (view, shape)
    return shape


def _shape(view: View) -> ViewShape:
    retention: dict[ColumnKey, int] = {}
    for f in view.windowed:
        k = (f.hop, f.measure)
        retention[k] = max(retention.get(k, 0), f.window)
    variance, distinct = set(), set()
    for g in view.tiles:
        for tm in g.measures:
            if State.M2 in tm.states:
                variance.add((g.hop, tm.measure))
            if State.DISTINCT in tm.states:
                distinct.add((g.hop, tm.measure))
    return ViewShape(
        retention, frozenset(variance), frozenset(distinct), min(view.hops), view.longest_window + max(view.hops)
    )


# -- window folds -----------------------------------------------------------------------------------------


def merge_series(acc: Fold, series: Series, lo: int, hi: int, variance: bool, distinct: bool) -> Fold:
    """``acc`` merged with the tiles of ``series`` that start in ``[lo, hi)``, ascending (as
    :meth:`fstore.core.tile_state.Acc.merge`; ``m2`` only when ``variance``, members only when ``distinct``)."""
    starts, stats, sets = series
    i = bisect_left(starts, lo)
    j = bisect_left(starts, hi, i)
    if i >= j:
        return acc
    c, total, mn, mx, m2, members = acc
    if variance:
        for oc, ot, on, ox, om in stats[i:j]:
            if c:
                delta = ot / oc - total / c
                m2 += om + delta * delta * c * oc / (c + oc)
            else:
                m2 = om
            c += oc
            total += ot
            if mn is None or (on is not None and on < mn):
                mn = on
            if mx is None or (ox is not None and ox > mx):
                mx = ox
    else:
        for oc, ot, on, ox, _ in stats[i:j]:
            c += oc
            total += ot
            if mn is None or (on is not None and on < mn):
                mn = on
            if mx is None or (ox is not None and ox > mx):
                mx = ox
    if distinct and sets is not None:
        parts = [m for m in sets[i:j] if m]
        if parts:
            members = frozenset().union(members or (), *parts)
    return c, total, mn, mx, m2, members


def member(value: float | str) -> str:
    """A distinct member as the tile layout writes it (:func:`fstore.core.view_tiles_frame.member`: -0.0 as 0.0)."""
    return value if isinstance(value, str) else repr(float(value) + 0.0)


def fold_future(acc: Fold, future: Sequence[Future], measure: str, lo: int, t: int, distinct: bool) -> Fold:
    """``acc`` with the future-stamped events (exact times) of ``measure`` in ``[lo, t)`` added one by one
    (as :meth:`fstore.core.tile_state.Acc.add`)."""
    c, total, mn, mx, m2, members = acc
    added: set[str] = set()
    for te, values in future:
        if not lo <= te < t or measure not in values:
            continue
        x = values[measure]
        if distinct:
            added.add(member(x))
        if not isinstance(x, str):
            if c:
                delta = x - total / c
                m2 += delta * delta * c / (c + 1)
            total += x
            if mn is None or x < mn:
                mn = x
            if mx is None or x > mx:
                mx = x
        c += 1
    if added:
        members = frozenset().union(members or (), added)
    return c, total, mn, mx, m2, members


def value_of(function: Function, acc: Fold) -> Value:
    """The value of ``function`` over a window's merge, with §3's empty-window rules (the same as
    :func:`fstore.core.tile_state.result`)."""
    c = acc[0]
    if function is Function.COUNT:
        return c
    if function is Function.SUM:
        return acc[1] if c else 0.0
    if function is Function.COUNT_DISTINCT:
        return 0 if acc[5] is None else len(acc[5])
    if c == 0:
        return None
    if function is Function.MEAN:
        return acc[1] / c
    if function is Function.MIN or function is Function.MAX:
        x = acc[2] if function is Function.MIN else acc[3]
        return None if x is None else x + 0.0  # one zero whatever the order of -0.0 and 0.0 (as result())
    if c < 2:
        return None
    var = max(acc[4], 0.0) / (c - 1)
    return var if function is Function.VAR else math.sqrt(var)


def ratio(numerator: Value, denominator: Value) -> float | None:
    """A ratio feature's value: ``None`` when the denominator is 0 or missing."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


class BatchTiles:
    """The batch tiles (all before ``cutover``) of one entity, with memoised window folds.

    Args:
        columns: the tiles as series.
        cutover: the batch view's cutover C; every tile starts before it.
    """

    __slots__ = ("_folds", "_values", "columns", "cutover")
    MAX_FOLDS = 64
    MAX_VALUES = 8

    def __init__(self, columns: Columns, cutover: int) -> None:
        self.columns = columns
        self.cutover = cutover
        self._folds: dict[tuple[int, str, int], Fold] = {}
        self._values: dict[tuple[tuple[str, ...], int], dict[str, Value]] = {}

    def values(self, view: View, names: tuple[str, ...], t: int) -> dict[str, Value]:
        """The values of ``names`` at ``t >= cutover`` from these tiles alone (an entity without speed
        tiles), memoised per grain of ``t`` (:func:`_plan`): within one grain every window covers the same
        batch tiles. Returns a new dict."""
        key = (names, floor_to(t, _plan(view, names)[2]))
        hit = self._values.get(key)
        if hit is None:
            hit = evaluate_columns(view, names, self, {}, t)
            if len(self._values) >= self.MAX_VALUES:
                self._values.clear()
            self._values[key] = hit
        return dict(hit)

    def fold(self, size: int, measure: str, lo: int, hi: int, variance: bool, distinct: bool) -> Fold:
        """Merge of the tiles of (``size``, ``measure``) starting in ``[lo, hi)``, in ascending start order
        (``variance``/``distinct`` are fixed per (size, measure) by the view: :func:`shape_of`)."""
        series = self.columns.get((size, measure))
        if series is None:
            return EMPTY
        memo = hi >= self.cutover  # then the range is [lo, end): it depends on ``lo`` only
        if memo:
            hit = self._folds.get((size, measure, lo))
            if hit is not None:
                return hit
        out = merge_series(EMPTY, series, lo, hi, variance, distinct)
        if memo:
            if len(self._folds) >= self.MAX_FOLDS:
                self._folds.clear()
            self._folds[(size, measure, lo)] = out
        return out


def decode_batch(view: View, raw: Mapping[Any, Any] | list[Any], cutover: int, since: int | None) -> BatchTiles:
    """The batch tiles before ``cutover`` that a read at any ``t >= since`` can use.

    ``since`` ``None``: every batch tile before the cutover (no assumption about ``t``).
    """
    retention = shape_of(view).retention

    def keep(size: int, start: int, measure: str) -> bool:
        if start >= cutover:
            return False  # the speed view owns [C, ...)
        if since is None:
            return True
        window = retention.get((size, measure))
        return window is not None and start >= tail(since, window, size)

    acc, members = _decode((raw,), -(1 << 62), None)
    return BatchTiles(_series(acc, members, keep)[0], cutover)


# -- evaluation -------------------------------------------------------------------------------------------

# tile size, window, measure, m2 needed, members needed, (feature, function)
Group = tuple[int, int, str, bool, bool, tuple[tuple[str, Function], ...]]
Plan = tuple[tuple[Group, ...], tuple[tuple[str, str | None, str | None], ...], int]


def _plan(view: View, names: tuple[str, ...]) -> Plan:
    """:func:`_merge_plan`, memoised per (view object, names)."""
    key = (id(view), names)
    hit = _PLANS.get(key)
    if hit is not None and hit[0] is view:
        return hit[1]
    plan = _merge_plan(view, names)
    if len(_PLANS) >= _CACHE_MAX:
        _PLANS.clear()
    _PLANS[key] = (view, plan)
    return plan


def _merge_plan(view: View, names: tuple[str, ...]) -> Plan:
    """What to merge for ``names``: per distinct (size, window, measure) the (feature, function) it
    yields; per requested name either itself or its ratio's numerator and denominator; and the grain: the
    gcd of those sizes and windows, so every window tail ``floor(t - window, size)`` is the same for all
    ``t`` in one grain-aligned interval.

    Raises:
        KeyError: naming an unknown feature of the view.
    """
    needed: set[str] = set()
    outputs: list[tuple[str, str | None, str | None]] = []
    for n in names:
        f = view.feature(n)
        if isinstance(f, RatioFeature):
            needed.update((f.numerator, f.denominator))
            outputs.append((n, f.numerator, f.denominator))
        else:
            needed.add(n)
            outputs.append((n, None, None))
    groups: dict[tuple[int, int, str], list[tuple[str, Function]]] = {}
    for w in view.windowed:
        if w.name in needed:
            groups.setdefault((w.hop, w.window, w.measure), []).append((w.name, w.function))
    grain = gcd(*(x for s, win, _ in groups for x in (s, win))) or 1
    shape = shape_of(view)
    return (
        tuple(
            (s, win, m, (s, m) in shape.variance, (s, m) in shape.distinct, tuple(fs))
            for (s, win, m), fs in groups.items()
        ),
        tuple(outputs),
        grain,
    )


def evaluate_columns(
    view: View,
    names: tuple[str, ...],
    batch: BatchTiles | None,
    speed: Columns,
    t: int,
    future: Sequence[Future] = (),
) -> dict[str, Value]:
    """Feature values at ``t`` from an entity's batch tiles (all before the cutover), speed tiles (all
    from it on) and future-stamped events (exact times, counted when before ``t``). Same results as
    :func:`fstore.core.view_tiles.evaluate` over the union of the tiles."""
    groups, outputs, _ = _plan(view, names)
    windowed: dict[str, Value] = {}
    for size, window, measure, variance, distinct, feats in groups:
        lo, hi = tile_bounds(t, window, size)
        acc = EMPTY if batch is None else batch.fold(size, measure, lo, hi, variance, distinct)
        series = speed.get((size, measure)) if speed else None
        if series is not None:
            acc = merge_series(acc, series, lo, hi, variance, distinct)
        if future:
            acc = fold_future(acc, future, measure, lo, t, distinct)
        for name, function in feats:
            windowed[name] = value_of(function, acc)
    return {
        name: windowed[name] if num is None or den is None else ratio(windowed[num], windowed[den])
        for name, num, den in outputs
    }


def finish(
    read: EntityRead, cutover: int | None, batch: BatchTiles | None, speed_hashes: Sequence[Any], as_of: int
) -> ReadResult:
    """Evaluate ``read`` at ``as_of`` over its batch tiles and its speed hashes (replies, ascending days).

    Future-stamped events count only when their event_time is before ``as_of`` (docs/design.md §5); every
    tile holds events older than the clock of its write, so with ``as_of`` taken after the read
    (:class:`fstore.online.reader.ReadCore`) no event counts early.
    """
    future: list[Future] = []
    speed, newest = decode_speed_hashes(speed_hashes, cutover, future)
    if future:
        future = [f for f in future if f[0] < as_of]
        if future:
            last = tile_start(max(te for te, _ in future), shape_of(read.view).finest)
            newest = last if newest is None else max(newest, last)
    if not speed and not future and batch is not None and as_of >= batch.cutover:
        return ReadResult(batch.values(read.view, read.names, as_of), None)
    return ReadResult(evaluate_columns(read.view, read.names, batch, speed, as_of, future), newest)
