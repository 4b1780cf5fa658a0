"""The lambda merge of one entity read (docs/design.md §4): decode tile hashes, fold windows, evaluate features.

Pure (no client imports): :mod:`fstore.online.reader` feeds it the replies of its Redis round trip, the Feast
online store the replies of its own. Values are bit-identical to :func:`fstore.core.tiles.evaluate` over
:func:`fstore.redis.layout.parse_tiles` of the same hashes (tested).

* Tiles are held per (tile size, measure) as start-sorted series of ``(count, sum, min, max)`` holding
  only the tiles that exist, so a window visits the few tiles an entity has instead of probing every tile
  slot; each (measure, window) is merged once per entity even when several aggregations use it.
* The arithmetic is the core's: window bounds from :func:`fstore.core.windows.tile_bounds`, merges by
  :func:`fstore.core.tiles.merge_series` (ascending tile start, batch tiles before speed tiles, so sums
  are bit-identical to :func:`fstore.core.tiles.evaluate`), values by :func:`fstore.core.aggregates.result`
  and :func:`fstore.core.aggregates.ratio`.
* A speed hash's field names repeat across entities and requests (same tile starts, same measures), so
  each distinct name is parsed once (:func:`_field`); decoding a hash is then a dictionary lookup and a
  ``float`` per field.
* :class:`BatchTiles` (the decoded batch hash of one entity, kept across requests by the reader while its
  version serves) memoises the fold of its tiles per (tile size, measure, window tail): the batch part of a
  window changes only when the tail moves to the next tile, once per hop.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from math import gcd
from typing import Any, NamedTuple

from fstore.core.aggregates import EMPTY, Agg, Partial, Stats, Value, fold, ratio, result
from fstore.core.features import FeatureView, RatioFeature
from fstore.core.tiles import merge_series
from fstore.core.timeutil import SECOND, floor_to
from fstore.core.windows import tail, tile_bounds, tile_start
from fstore.redis.layout import FUTURE_PREFIX, parse_future, parse_tiles

# Tile starts (ascending) and their stats. Tuples of tuples of numbers: the garbage collector untracks
# them, so a full batch cache adds nothing to the cost (and pauses) of collections.
Series = tuple[tuple[int, ...], tuple[Stats, ...]]
ColumnKey = tuple[int, str]  # (tile size, measure)
Columns = dict[ColumnKey, Series]
Tiles = dict[tuple[int, int], dict[str, Partial]]
Future = tuple[int, dict[str, float]]  # a future-stamped event's exact time and its value per measure
_FUTURE = FUTURE_PREFIX.encode()


class EntityRead(NamedTuple):
    """One entity of one view and the features wanted from it (a tuple: built per entity per request)."""

    view: FeatureView
    entity: str
    names: tuple[str, ...]


@dataclass
class ReadResult:
    """Values of one :class:`EntityRead` with the metadata of the merge."""

    values: dict[str, Value]
    newest_speed_tile: int | None  # start of the newest speed tile of the entity (epoch us), if any


# -- decoding ---------------------------------------------------------------------------------------------

# field name -> ((column key, tile start), tile start, stat index 0-3 or -1 for the packed form); None: junk
FieldInfo = tuple[tuple[ColumnKey, int], int, int]
_FIELDS: dict[bytes, FieldInfo | None] = {}
_FIELDS_MAX = 50_000  # a day of speed tiles of every view has a few thousand distinct field names
_STAT = {b"c": 0, b"s": 1, b"n": 2, b"x": 3}
_UNSEEN: FieldInfo = (((0, ""), 0), 0, -2)


def _field(name: bytes) -> FieldInfo | None:
    """Parse (and remember) a tile field name; ``None`` for a field of another shape."""
    info: FieldInfo | None = None
    parts = name.split(b":")
    try:
        if len(parts) == 4 and parts[3] in _STAT:
            start = int(parts[1]) * SECOND
            info = (((int(parts[0]) * SECOND, parts[2].decode()), start), start, _STAT[parts[3]])
        elif len(parts) == 3:
            start = int(parts[1]) * SECOND
            info = (((int(parts[0]) * SECOND, parts[2].decode()), start), start, -1)
    except ValueError:  # not a tile field after all: parse_tiles ignores it as well
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


def decode_speed_hashes(
    raws: Iterable[Any], cutover: int | None, future: list[Future] | None = None
) -> tuple[Columns, int | None]:
    """Decode an entity's speed hashes (HGETALL replies, ascending days) into series of the tiles from
    ``cutover`` on, plus the newest such tile start.

    Same rules as :func:`fstore.redis.layout.parse_tiles`: both field forms (also mixed), other shapes
    ignored, tiles with a count of 0 dropped. The exact fields of future-stamped events (event_time from
    ``cutover`` on) are appended to ``future`` when it is given, else ignored.
    """
    floor = -(1 << 62) if cutover is None else cutover
    acc: dict[tuple[ColumnKey, int], list[Any]] = {}
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
                        future.append(ev)  # type: ignore[union-attr,arg-type]
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
                        stats = acc[tile] = [0, 0.0, None, None]
                    stats[i] = None if v == b"None" else float(v)
                else:
                    values = v.split(b" ")
                    if len(values) == 4:
                        acc[tile] = [None if x == b"None" else float(x) for x in values]
            except ValueError:  # a malformed number: parse_tiles would fail on it; skip the field
                continue
    if not acc:
        return {}, None
    by: dict[ColumnKey, list[tuple[int, Stats]]] = {}
    newest = floor
    for (key, start), (c, s, mn, mx) in acc.items():
        if c:
            item = (start, (int(c), 0.0 if s is None else float(s), mn, mx))
            series = by.get(key)
            if series is None:
                by[key] = [item]
            else:
                series.append(item)
            if start > newest:
                newest = start
    out: Columns = {}
    for key, items in by.items():
        if len(items) > 1:
            items.sort(key=lambda it: it[0])
        out[key] = (tuple(st for st, _ in items), tuple(x for _, x in items))
    return out, newest if by else None


def decode_speed(raw: Any, cutover: int | None) -> tuple[Columns, int | None]:
    """:func:`decode_speed_hashes` of one hash."""
    return decode_speed_hashes((raw,), cutover)


def _columns(tiles: Tiles, keep: Callable[[int, int, str], bool]) -> Columns:
    """Series per (size, measure) of decoded tiles that ``keep(size, start, measure)``."""
    acc: dict[ColumnKey, list[tuple[int, Stats]]] = {}
    for (size, start), partials in tiles.items():
        for m, p in partials.items():
            if keep(size, start, m):
                acc.setdefault((size, m), []).append((start, p.to_tuple()))
    out: Columns = {}
    for k, items in acc.items():
        items.sort(key=lambda it: it[0])
        out[k] = (tuple(s for s, _ in items), tuple(st for _, st in items))
    return out


@lru_cache(maxsize=64)
def _retention(view: FeatureView) -> dict[ColumnKey, int]:
    """(size, measure) -> longest window served by those tiles."""
    out: dict[ColumnKey, int] = {}
    for f in view.windowed:
        k = (f.hop, f.measure.name)
        out[k] = max(out.get(k, 0), f.window)
    return out


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
        self._folds: dict[tuple[int, str, int], Stats] = {}
        self._values: dict[tuple[tuple[str, ...], int], dict[str, Value]] = {}

    def values(self, view: FeatureView, names: tuple[str, ...], t: int) -> dict[str, Value]:
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

    def fold(self, size: int, measure: str, lo: int, hi: int) -> Stats:
        """Merge of the tiles of (``size``, ``measure``) starting in ``[lo, hi)``, in ascending start order."""
        series = self.columns.get((size, measure))
        if series is None:
            return EMPTY
        memo = hi >= self.cutover  # then the range is [lo, end): it depends on ``lo`` only
        if memo:
            hit = self._folds.get((size, measure, lo))
            if hit is not None:
                return hit
        out = merge_series(EMPTY, *series, lo, hi)
        if memo:
            if len(self._folds) >= self.MAX_FOLDS:
                self._folds.clear()
            self._folds[(size, measure, lo)] = out
        return out


def decode_batch(view: FeatureView, raw: Mapping[Any, Any] | list[Any], cutover: int, since: int | None) -> BatchTiles:
    """The batch tiles before ``cutover`` that a read at any ``t >= since`` can use.

    ``since`` ``None``: every batch tile before the cutover (no assumption about ``t``).
    """
    retention = _retention(view)

    def keep(size: int, start: int, measure: str) -> bool:
        if start >= cutover:
            return False  # the speed view owns [C, ...)
        if since is None:
            return True
        window = retention.get((size, measure))
        return window is not None and start >= tail(since, window, size)

    mapping = dict(_pairs(raw)) if isinstance(raw, list) else raw
    return BatchTiles(_columns(parse_tiles(mapping), keep), cutover)


# -- evaluation -------------------------------------------------------------------------------------------

Group = tuple[int, int, str, tuple[tuple[str, Agg], ...]]  # tile size, window, measure, (feature, agg)
Plan = tuple[tuple[Group, ...], tuple[tuple[str, str | None, str | None], ...], int]


@lru_cache(maxsize=1024)
def _plan(view: FeatureView, names: tuple[str, ...]) -> Plan:
    """What to merge for ``names``: per distinct (size, window, measure) the (feature, agg) it yields; per
    requested name either itself or its ratio's numerator and denominator; and the grain: the gcd of those
    sizes and windows, so every window tail ``floor(t - window, size)`` is the same for all ``t`` in one
    grain-aligned interval.

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
    groups: dict[tuple[int, int, str], list[tuple[str, Agg]]] = {}
    for w in view.windowed:
        if w.name in needed:
            groups.setdefault((w.hop, w.window, w.measure.name), []).append((w.name, w.agg))
    grain = gcd(*(x for s, win, _ in groups for x in (s, win))) or 1
    return tuple((s, win, m, tuple(fs)) for (s, win, m), fs in groups.items()), tuple(outputs), grain


def fold_future(acc: Stats, future: Sequence[Future], measure: str, lo: int, t: int) -> Stats:
    """``acc`` folded with the future-stamped events (exact times) of ``measure`` in ``[lo, t)``."""
    return fold(acc, [values[measure] for te, values in future if measure in values and lo <= te < t])


def evaluate_columns(
    view: FeatureView,
    names: tuple[str, ...],
    batch: BatchTiles | None,
    speed: Columns,
    t: int,
    future: Sequence[Future] = (),
) -> dict[str, Value]:
    """Feature values at ``t`` from an entity's batch tiles (all before the cutover), speed tiles (all
    from it on) and future-stamped events (exact times, counted when before ``t``). Same results as
    :func:`fstore.core.tiles.evaluate` over the union of the tiles."""
    groups, outputs, _ = _plan(view, names)
    windowed: dict[str, Value] = {}
    for size, window, measure, feats in groups:
        lo, hi = tile_bounds(t, window, size)
        acc = EMPTY if batch is None else batch.fold(size, measure, lo, hi)
        series = speed.get((size, measure)) if speed else None
        if series is not None:
            acc = merge_series(acc, *series, lo, hi)
        if future:
            acc = fold_future(acc, future, measure, lo, t)
        for name, agg in feats:
            windowed[name] = result(agg, acc)
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
            last = tile_start(max(te for te, _ in future), min(read.view.hops))
            newest = last if newest is None else max(newest, last)
    if not speed and not future and batch is not None and as_of >= batch.cutover:
        return ReadResult(batch.values(read.view, read.names, as_of), None)
    return ReadResult(evaluate_columns(read.view, read.names, batch, speed, as_of, future), newest)
