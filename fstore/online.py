"""Online reads: the lambda merge of the batch view and the speed view (DESIGN.md §4, §5).

For entity ``e`` of view ``v`` at ``as_of``: tiles before the cutover C come from the batch view
version that the pointer names, tiles from C on come from the speed view; windows are evaluated over the
merged tiles with the arithmetic of :mod:`fstore.core.tiles` (:func:`fstore.core.tiles.evaluate`). One
pipelined Redis round trip per request reads the pointer and every hash needed. The pointer is cached;
when the pointer read in the same round trip differs from the cached one, the request is re-read with the
new pointer, so a response never mixes two batch versions (superseded versions stay readable for a grace
period).

Hot path (see docs/serving.md, "Performance"):

* A published batch version is immutable, so :class:`OnlineReader` keeps the decoded batch tiles per
  (version, cutover, view, entity) in a bounded LRU; on a hit the round trip reads only the pointer and
  the speed hashes. A cached version is used only when the pointer read in that same round trip names it.
* Tiles are held per (tile size, measure) as start-sorted series of ``(count, sum, min, max)`` holding
  only the tiles that exist, so a window merges the few tiles an entity has instead of probing every
  tile slot; each (measure, window) is merged once per entity even when several aggregations use it.
  Merge order and arithmetic are those of :meth:`fstore.core.aggregates.Partial.merge` (ascending tile
  start), so values are bit-identical to :func:`fstore.core.tiles.evaluate`.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError

from fstore.core.aggregates import Agg, Partial, Value
from fstore.core.features import FeatureView, RatioFeature, largest_hop
from fstore.core.timeutil import DAY, SECOND, floor_to, iso
from fstore.redis_layout import POINTER_KEY, BatchPointer, batch_key, parse_tiles, speed_key

Clock = Callable[[], int]
Tiles = dict[tuple[int, int], dict[str, Partial]]
Stats = tuple[int, float, float | None, float | None]  # count, sum, min, max of one measure of one tile
# Tile starts (ascending) and their stats. Tuples of tuples of numbers: the garbage collector untracks
# them, so a full cache adds nothing to the cost (and pauses) of collections.
Series = tuple[tuple[int, ...], tuple[Stats, ...]]
Columns = dict[tuple[int, str], Series]  # (tile size, measure) -> series

DEFAULT_BATCH_CACHE_ENTRIES = 20_000


@lru_cache(maxsize=4096)
def iso_cached(us: int) -> str:
    """:func:`fstore.core.timeutil.iso` memoised, for values that repeat across requests (the cutover,
    tile starts)."""
    return iso(us)


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
            "batch_cutoff": iso_cached(self.pointer.cutover) if self.pointer else None,
            "batch_version": self.pointer.version if self.pointer else None,
        }


@lru_cache(maxsize=64)
def _reach(view: FeatureView) -> int:
    """How far back a read of ``view`` can need tiles: its longest window plus the largest hop."""
    return view.longest_window + largest_hop()


def speed_days(view: FeatureView, pointer: BatchPointer | None, as_of: int) -> list[int]:
    """Day starts (epoch us) of the speed hashes a read at ``as_of`` needs."""
    first = _reach(view)
    start = as_of - first if pointer is None else max(pointer.cutover, as_of - first)
    return list(range(floor_to(start, DAY), as_of + 1, DAY))


def keys_for(read: EntityRead, pointer: BatchPointer | None, as_of: int) -> list[str]:
    """The hashes to HGETALL for one entity read: the batch hash (if any) then the speed hashes."""
    keys = [batch_key(read.view.name, read.entity, pointer.version)] if pointer else []
    return keys + [speed_key(read.view.name, read.entity, d) for d in speed_days(read.view, pointer, as_of)]


# -- decoding ---------------------------------------------------------------------------------------------

def _columns(tiles: Tiles, keep: Callable[[int, int, str], bool] | None = None) -> Columns:
    """Series per (size, measure) of decoded tiles, optionally only those ``keep(size, start, measure)``."""
    acc: dict[tuple[int, str], list[tuple[int, Stats]]] = {}
    for (size, start), partials in tiles.items():
        for m, p in partials.items():
            if keep is None or keep(size, start, m):
                acc.setdefault((size, m), []).append((start, (p.count, p.total, p.minimum, p.maximum)))
    out: Columns = {}
    for k, items in acc.items():
        items.sort(key=lambda it: it[0])
        out[k] = (tuple(s for s, _ in items), tuple(st for _, st in items))
    return out


def _num(v: bytes) -> float | None:
    return None if v == b"None" else float(v)


def decode_speed(raw: Mapping[Any, Any], cutover: int | None) -> tuple[Columns, int | None]:
    """Decode a speed hash (HGETALL) into series of its tiles from ``cutover`` on, plus its newest tile start.

    Same rules as :func:`fstore.redis_layout.parse_tiles` (both field forms, other shapes ignored, tiles
    with a count of 0 dropped), on ``bytes`` without intermediate :class:`Partial` objects. Falls back to
    :func:`parse_tiles` for ``str`` hashes.
    """
    if not raw:
        return {}, None
    if not isinstance(next(iter(raw)), bytes):
        tiles = parse_tiles(raw)
        keep = None if cutover is None else (lambda size, start, m: start >= cutover)
        cols = _columns(tiles, keep)
        starts = [s for (_, s) in tiles if cutover is None or s >= cutover]
        return cols, max(starts) if starts else None
    floor = -(1 << 62) if cutover is None else cutover
    acc: dict[tuple[int, int, bytes], list[Any]] = {}
    for k, v in raw.items():
        parts = k.split(b":")
        n = len(parts)
        try:
            if n == 4:
                stat = parts[3]
                if stat == b"c":
                    i = 0
                elif stat == b"s":
                    i = 1
                elif stat == b"n":
                    i = 2
                elif stat == b"x":
                    i = 3
                else:
                    continue
                start = int(parts[1]) * SECOND
                if start < floor:
                    continue
                key = (int(parts[0]) * SECOND, start, parts[2])
                stats = acc.get(key)
                if stats is None:
                    stats = acc[key] = [0, 0.0, None, None]
                stats[i] = _num(v)
            elif n == 3:
                values = v.split(b" ")
                if len(values) != 4:
                    continue
                start = int(parts[1]) * SECOND
                if start < floor:
                    continue
                acc[(int(parts[0]) * SECOND, start, parts[2])] = [_num(t) for t in values]
        except ValueError:  # not a tile field after all: parse_tiles would ignore it as well
            continue
    by: dict[tuple[int, str], list[tuple[int, Stats]]] = {}
    newest: int | None = None
    for (size, start, measure), (c, s, mn, mx) in acc.items():
        if c:
            by.setdefault((size, measure.decode()), []).append((start, (int(c), float(s or 0.0), mn, mx)))
            if newest is None or start > newest:
                newest = start
    out: Columns = {}
    for key2, items in by.items():
        items.sort(key=lambda it: it[0])
        out[key2] = (tuple(st for st, _ in items), tuple(x for _, x in items))
    return out, newest


@lru_cache(maxsize=64)
def _retention(view: FeatureView) -> dict[tuple[int, str], int]:
    """(size, measure) -> longest window served by those tiles."""
    out: dict[tuple[int, str], int] = {}
    for f in view.windowed:
        k = (f.hop, f.measure.name)
        out[k] = max(out.get(k, 0), f.window)
    return out


def decode_batch(view: FeatureView, raw: Mapping[Any, Any], cutover: int, since: int | None) -> Columns:
    """Series of the batch tiles before ``cutover`` that a read at any ``t >= since`` can use.

    ``since`` ``None``: every batch tile before the cutover (no assumption about ``t``).
    """
    retention = _retention(view)

    def keep(size: int, start: int, measure: str) -> bool:
        if start >= cutover:
            return False  # the speed view owns [C, ...)
        if since is None:
            return True
        window = retention.get((size, measure))
        return window is not None and start >= floor_to(since - window, size)

    return _columns(parse_tiles(raw), keep)


# -- evaluation -------------------------------------------------------------------------------------------

Plan = tuple[tuple[tuple[int, int, str, tuple[tuple[str, Agg], ...]], ...],
             tuple[tuple[str, str | None, str | None], ...]]


@lru_cache(maxsize=1024)
def _plan(view: FeatureView, names: tuple[str, ...]) -> Plan:
    """What to merge for ``names``: per distinct (size, window, measure) the (feature, agg) it yields; and
    per requested name either itself or its ratio's numerator and denominator.

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
    return tuple((s, win, m, tuple(fs)) for (s, win, m), fs in groups.items()), tuple(outputs)


def _result(agg: Agg, c: int, total: float, mn: float | None, mx: float | None) -> Value:
    """:meth:`Partial.result` on loose fields."""
    if agg is Agg.COUNT:
        return c
    if agg is Agg.SUM:
        return total if c else 0.0
    if c == 0:
        return None
    if agg is Agg.AVG:
        return total / c
    if agg is Agg.MIN:
        return mn
    return mx


def evaluate_columns(view: FeatureView, names: tuple[str, ...], parts: Iterable[Columns], t: int) -> dict[str, Value]:
    """Feature values at ``t`` from tile series; ``parts`` cover disjoint, ascending time ranges (batch
    before speed). Same results as :func:`fstore.core.tiles.evaluate` over the union of the tiles."""
    groups, outputs = _plan(view, names)
    sides = tuple(parts)
    windowed: dict[str, Value] = {}
    for size, window, measure, feats in groups:
        lo = t - window
        lo -= lo % size
        head = t - t % size
        hi = head + size if t > head else head
        c, total = 0, 0.0
        mn: float | None = None
        mx: float | None = None
        key = (size, measure)
        for cols in sides:
            series = cols.get(key)
            if series is None:
                continue
            starts, stats = series
            i = bisect_left(starts, lo)
            end = len(starts)
            while i < end and starts[i] < hi:
                oc, ot, on, ox = stats[i]
                i += 1
                if oc == 0:
                    continue
                c += oc
                total += ot
                if mn is None or (on is not None and on < mn):
                    mn = on
                if mx is None or (ox is not None and ox > mx):
                    mx = ox
        for name, agg in feats:
            windowed[name] = _result(agg, c, total, mn, mx)
    out: dict[str, Value] = {}
    for name, num, den in outputs:
        if num is None or den is None:
            out[name] = windowed[name]
        else:
            a, b = windowed[num], windowed[den]
            out[name] = None if a is None or b is None or b == 0 else float(a) / float(b)
    return out


def merge(read: EntityRead, pointer: BatchPointer | None, hashes: Sequence[Mapping[Any, Any]],
          as_of: int) -> ReadResult:
    """Merge the batch tiles before C with the speed tiles from C on and evaluate at ``as_of``.

    ``hashes`` are the HGETALL results of :func:`keys_for` (the batch hash first when there is a pointer).
    """
    batch: Columns | None = None
    if pointer is not None:
        batch = decode_batch(read.view, hashes[0], pointer.cutover, None)
        hashes = hashes[1:]
    return _finish(read, pointer, batch, hashes, as_of)


def _finish(read: EntityRead, pointer: BatchPointer | None, batch: Columns | None,
            speed_hashes: Sequence[Mapping[Any, Any]], as_of: int) -> ReadResult:
    """Evaluate ``read`` over its batch series and speed hashes.

    Sides are disjoint and ascending in time: batch tiles start before C, each speed hash holds the tiles
    starting on its UTC day and :func:`speed_days` lists the days in order, so merging side after side
    visits tiles in ascending start order, as :func:`fstore.core.tiles.window_partial` does.
    """
    cutover = pointer.cutover if pointer else None
    parts: list[Columns] = [batch] if batch else []
    newest: int | None = None
    for raw in speed_hashes:
        cols, top = decode_speed(raw, cutover)
        if cols:
            parts.append(cols)
        if top is not None and (newest is None or top > newest):
            newest = top
    return ReadResult(evaluate_columns(read.view, read.names, parts, as_of), newest)


# -- reader -----------------------------------------------------------------------------------------------

def _command(*args: str) -> bytes:
    """One Redis command in RESP (what redis-py's ``pack_command`` sends for string arguments)."""
    out = [b"*%d\r\n" % len(args)]
    for a in args:
        b = a.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(b), b))
    return b"".join(out)


_GET_POINTER = _command("GET", POINTER_KEY)
_HGETALL = b"*2\r\n$7\r\nHGETALL\r\n"


def _hgetall(key: str) -> bytes:
    b = key.encode()
    return _HGETALL + b"$%d\r\n%s\r\n" % (len(b), b)


def _pairs(flat: list[Any]) -> dict[Any, Any]:
    """An HGETALL reply in RESP2 (flat field, value list) as a dict (RESP3 already gives one)."""
    it = iter(flat)
    return dict(zip(it, it, strict=False))


class OnlineReader:
    """Reads merged feature values from Redis (async; one pipelined round trip per call).

    Args:
        client: async Redis client (bytes responses).
        clock: time source of ``as_of``.
        batch_cache_entries: most (version, view, entity) batch tile sets kept decoded (LRU); 0 disables.
    """

    def __init__(self, client: aioredis.Redis, clock: Clock = wall_clock,
                 batch_cache_entries: int = DEFAULT_BATCH_CACHE_ENTRIES) -> None:
        self.client = client
        self.clock = clock
        self._pointer: BatchPointer | None = None
        self._pointer_loaded = False
        self._cache: OrderedDict[tuple[str, int, str, str], Columns] = OrderedDict()
        self._cache_max = batch_cache_entries
        self.cache_hits = 0
        self.cache_misses = 0

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

    def _cached(self, key: tuple[str, int, str, str]) -> Columns | None:
        cols = self._cache.get(key)
        if cols is not None:
            self._cache.move_to_end(key)
        return cols

    def _store(self, key: tuple[str, int, str, str], cols: Columns) -> None:
        if self._cache_max <= 0:
            return
        self._cache[key] = cols
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    async def _execute(self, wire: list[bytes]) -> list[Any]:
        """Send pre-encoded commands in one write and read every reply: a pipeline without redis-py's
        per-command packing and bookkeeping (a third less CPU for 100 entities).

        On any error or cancellation the connection is dropped (never returned half-read); a broken pooled
        connection (e.g. after a Redis restart) is retried once on a fresh one, as the client's own retry
        would. Timeouts are not retried, so an outage still answers within the socket timeout.
        """
        pool = self.client.connection_pool
        payload = b"".join(wire)
        for attempt in (0, 1):
            conn = await pool.get_connection()  # type: ignore[no-untyped-call]
            try:
                await conn.send_packed_command(payload, check_health=False)
                out = [await conn.read_response() for _ in wire]
            except RedisConnectionError:
                await conn.disconnect()
                if attempt:
                    raise
                continue
            except BaseException:
                await conn.disconnect()
                raise
            finally:
                await pool.release(conn)
            return [_pairs(x) if isinstance(x, list) else x for x in out]
        raise AssertionError("unreachable")

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        """Values of every read at ``as_of`` (default: now), all against the same batch pointer."""
        t = self.clock() if as_of is None else as_of
        for _ in range(5):
            pointer = await self.pointer()
            # Cached batch tiles are kept only for reads at or after the cutover (they omit older tiles).
            cacheable = pointer is not None and t >= pointer.cutover and self._cache_max > 0
            wire = [_GET_POINTER]
            layout: list[tuple[Columns | None, bool, int]] = []  # cached batch, batch hash read, #speed
            for r in reads:
                cached = None
                if pointer is not None:
                    if cacheable:
                        cached = self._cached((pointer.version, pointer.cutover, r.view.name, r.entity))
                    if cached is None:
                        wire.append(_hgetall(batch_key(r.view.name, r.entity, pointer.version)))
                days = speed_days(r.view, pointer, t)
                for d in days:
                    wire.append(_hgetall(speed_key(r.view.name, r.entity, d)))
                layout.append((cached, pointer is not None and cached is None, len(days)))
            out = await self._execute(wire)
            current = BatchPointer.loads(out[0])
            if current != pointer:
                self._pointer = current  # the batch view moved under us: read again with the new one
                continue
            snap = Snapshot(t, pointer)
            pos = 1
            for r, (cached, has_batch, n) in zip(reads, layout, strict=True):
                batch = cached
                if has_batch:
                    assert pointer is not None
                    self.cache_misses += 1
                    batch = decode_batch(r.view, out[pos], pointer.cutover, pointer.cutover if cacheable else None)
                    pos += 1
                    if cacheable:
                        self._store((pointer.version, pointer.cutover, r.view.name, r.entity), batch)
                elif cached is not None:
                    self.cache_hits += 1
                snap.results.append(_finish(r, pointer, batch, out[pos:pos + n], t))
                pos += n
            return snap
        raise RedisError("the batch view pointer changed five times during one read")
