"""Online reads: the lambda merge of the batch view and the speed view (docs/design.md §4, §5).

For entity ``e`` of view ``v`` at ``as_of``: tiles before the cutover C come from the batch view
version that the pointer names, tiles from C on come from the speed view; windows are evaluated over the
merged tiles by :mod:`fstore.online.merge` (bit-identical to :func:`fstore.core.view_tiles.evaluate`). One
pipelined Redis round trip per request reads the pointer and every hash needed. The pointer is cached;
when the pointer read in the same round trip differs from the cached one, the request is re-read with the
new pointer, so a response never mixes two batch versions (superseded versions stay readable for a grace
period).

:class:`ReadCore` holds that logic once, without I/O: :meth:`ReadCore.attempts` yields the commands of a
round trip and receives their replies. :class:`OnlineReader` drives it over asyncio (the API, Feast's async
path), :class:`SyncOnlineReader` over a blocking redis-py client (Feast's ``online_read``).

Hot path (docs/serving.md, "Batch tile cache" and "Hot path"): a published batch version is immutable,
so the reader keeps the decoded batch tiles per (version, cutover, view, entity) in a bounded LRU; on a hit
the round trip reads only the pointer and the speed hashes. A cached version is used only when the pointer
read in that same round trip names it. The async reader sends the round trip through
:mod:`fstore.redis.resp`.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Generator, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from fstore.clock import Clock, wall_clock
from fstore.core.plan import View
from fstore.core.timeutil import DAY, SECOND, floor_to, iso
from fstore.online.merge import (
    BatchTiles,
    EntityRead,
    ReadResult,
    decode_batch,
    decode_speed,
    decode_speed_hashes,
    evaluate_columns,
    finish,
    shape_of,
)
from fstore.redis.cluster import ClusterPool, SyncClusterPool, slot_of
from fstore.redis.layout import POINTER_KEY, BatchPointer, batch_key, speed_key
from fstore.redis.resp import RespPool, command, hgetall, raise_errors, round_trip, round_trip_sync

__all__ = [
    "BatchTiles",
    "Clock",
    "EntityRead",
    "OnlineReader",
    "ReadCore",
    "ReadResult",
    "Snapshot",
    "SyncOnlineReader",
    "decode_batch",
    "decode_speed",
    "decode_speed_hashes",
    "evaluate_columns",
    "finish",
    "iso_cached",
    "merge",
    "speed_days",
    "wire_slots",
]

Attempts = Generator[list[bytes], list[Any], "Snapshot"]  # yields a round trip's commands, gets its replies

DEFAULT_BATCH_CACHE_ENTRIES = 20_000
MAX_POINTER_RETRIES = 5
GET_POINTER = command("GET", POINTER_KEY)
POINTER_SLOT = slot_of(POINTER_KEY)
_UNSET = object()


@lru_cache(maxsize=4096)
def iso_cached(us: int) -> str:
    """:func:`fstore.core.timeutil.iso` memoised, for values that repeat across requests (the cutover,
    tile starts)."""
    return iso(us)


def iso_fast(us: int) -> str:
    """:func:`fstore.core.timeutil.iso` with the whole seconds memoised (``as_of`` of successive requests)."""
    frac = us % SECOND
    whole = iso_cached(us - frac)  # no fraction in isoformat when the microseconds are 0
    return f"{whole[:-1]}.{frac:06d}Z" if frac else whole


@dataclass
class Snapshot:
    """Everything one request returns, read against one batch pointer."""

    as_of: int
    pointer: BatchPointer | None
    results: list[ReadResult] = field(default_factory=list)

    def meta(self) -> dict[str, Any]:
        """JSON-able ``as_of`` / cutover / version block."""
        return {
            "as_of": iso_fast(self.as_of),
            "as_of_us": self.as_of,
            "batch_cutoff": iso_cached(self.pointer.cutover) if self.pointer else None,
            "batch_version": self.pointer.version if self.pointer else None,
        }


def _reach(view: View) -> int:
    """How far back a read of ``view`` can need tiles: its longest window plus its largest hop (a window's
    tail ``floor(t - window, hop)`` is never earlier)."""
    return shape_of(view).reach


def speed_days(view: View, pointer: BatchPointer | None, as_of: int) -> list[int]:
    """Day starts (epoch us) of the speed hashes a read at ``as_of`` needs."""
    first = _reach(view)
    start = as_of - first if pointer is None else max(pointer.cutover, as_of - first)
    return list(range(floor_to(start, DAY), as_of + 1, DAY))


def merge(read: EntityRead, pointer: BatchPointer | None, hashes: Sequence[Any], as_of: int) -> ReadResult:
    """Merge the batch tiles before C with the speed tiles from C on and evaluate at ``as_of``.

    ``hashes`` are the HGETALL replies of the batch hash of ``pointer``'s version (when there is a pointer)
    and then of the speed hashes of :func:`speed_days`.
    """
    if pointer is None:
        return finish(read, None, None, hashes, as_of)
    return finish(read, pointer.cutover, decode_batch(read.view, hashes[0], pointer.cutover, None), hashes[1:], as_of)


class ReadCore:
    """Pointer cache, batch tile cache and the pointer-rechecking read loop, without I/O.

    Args:
        clock: time source of ``as_of``.
        batch_cache_entries: most (version, view, entity) batch tile sets kept decoded (LRU); 0 disables.
    """

    def __init__(self, clock: Clock = wall_clock, batch_cache_entries: int = DEFAULT_BATCH_CACHE_ENTRIES) -> None:
        self.clock = clock
        # (raw value of the pointer key, its parse): one attribute, so threads never see a torn pair
        self._current: tuple[Any, BatchPointer | None] = (_UNSET, None)
        self._cache: OrderedDict[tuple[str, int, str, str], BatchTiles] = OrderedDict()
        self._cache_max = batch_cache_entries
        self.cache_hits = 0
        self.cache_misses = 0

    def _parse_pointer(self, raw: Any) -> BatchPointer | None:
        """The pointer stored as ``raw`` (parsed once per distinct value), remembered as the current one."""
        known, pointer = self._current
        if raw != known:
            pointer = BatchPointer.loads(raw)
            self._current = (raw, pointer)
        return pointer

    def _store(self, key: tuple[str, int, str, str], batch: BatchTiles) -> None:
        self._cache[key] = batch
        if len(self._cache) > self._cache_max:
            self._cache.popitem(last=False)

    def attempts(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Attempts:
        """The read of ``reads`` at ``as_of``: yields the commands of a round trip (the pointer ``GET``
        first), receives their replies; repeats with the new pointer when the pointer read differs from the
        one the commands were built for. Returns the snapshot.

        ``as_of`` ``None`` (every serving read): the clock, read *after* the replies arrive. The speed
        layer puts an event in a tile only once its own clock has passed the event_time (future-stamped
        events stay exact fields until then, see :mod:`jobs.stream.speed_lua`), so every event a reply
        holds in a tile is older than that ``as_of``, and the future fields are counted by their exact
        times: no event counts before its event_time (docs/design.md §5). A clock behind the serving cutover C
        (the batch published C by another host's clock) reads at ``as_of`` = C: the batch tiles hold every
        event before C. A given ``as_of`` is used as is.

        Raises:
            RedisError: the pointer changed :data:`MAX_POINTER_RETRIES` times in a row.
        """
        cache = self._cache
        live = as_of is None
        t = self.clock() if as_of is None else as_of
        for _ in range(MAX_POINTER_RETRIES):
            pointer = self._current[1]
            cutover = pointer.cutover if pointer is not None else None
            if live and cutover is not None and t < cutover:
                # This clock is behind the one that published C (another host's): the batch tiles hold every
                # event before C, so a read before C would count events stamped after its as_of. Read at C.
                t = cutover
            # Cached batch tiles are kept only for reads at or after the cutover (they omit older tiles).
            cacheable = cutover is not None and t >= cutover and self._cache_max > 0
            wire = [GET_POINTER]
            layout: list[tuple[BatchTiles | None, tuple[str, int, str, str] | None, int]] = []
            days_of: dict[int, list[int]] = {}  # by id(view): a view hashes by value, slowly
            for r in reads:
                view = r.view
                days = days_of.get(id(view))
                if days is None:
                    days = days_of[id(view)] = speed_days(view, pointer, t)
                cached = ckey = None
                if pointer is not None:
                    if cacheable:
                        ckey = (pointer.version, pointer.cutover, view.name, r.entity)
                        cached = cache.get(ckey)
                    if cached is None:
                        wire.append(hgetall(batch_key(view.name, r.entity, pointer.version)))
                    else:
                        with suppress(KeyError):  # evicted meanwhile by another thread (Feast's sync path)
                            cache.move_to_end(ckey)  # type: ignore[arg-type]
                for d in days:
                    wire.append(hgetall(speed_key(view.name, r.entity, d)))
                layout.append((cached, ckey, len(days)))
            out = yield wire
            current = self._parse_pointer(out[0])
            if current is not pointer and current != pointer:
                continue  # the batch view moved under us: read again with the new one
            if live:
                planned, t = t, max(t, self.clock())
                if t // DAY != planned // DAY:
                    continue  # a new UTC day began during the read: its speed hashes were not read
            snap = Snapshot(t, pointer)
            results = snap.results
            pos = 1
            for r, (batch, ckey, n) in zip(reads, layout, strict=True):
                if batch is None and cutover is not None:
                    self.cache_misses += 1
                    batch = decode_batch(r.view, out[pos], cutover, cutover if cacheable else None)
                    pos += 1
                    if ckey is not None:
                        self._store(ckey, batch)
                elif batch is not None:
                    self.cache_hits += 1
                results.append(finish(r, cutover, batch, out[pos : pos + n], t))
                pos += n
            return snap
        raise RedisError("the batch view pointer changed (or a day began) five times during one read")


def wire_slots(wire: Sequence[bytes]) -> list[int]:
    """Redis Cluster hash slot of each command of a read round trip: the pointer ``GET``, or an ``HGETALL``
    whose key carries its entity's hash tag, the first ``{...}`` of the command's bytes (the command name
    and the length prefixes before the key hold no brace), so the slot is computed on the bytes as they are."""
    return [POINTER_SLOT if w is GET_POINTER else slot_of(w) for w in wire]


class OnlineReader(ReadCore):
    """Reads merged feature values from Redis (async; one pipelined round trip per call).

    Args:
        client: async Redis client (bytes responses); its connection settings are used for the read round
            trips (:class:`fstore.redis.resp.RespPool`), the client itself serves :meth:`refresh_pointer`.
            Or a :class:`fstore.redis.cluster.ClusterPool` (Redis Cluster): every round trip is split into
            one pipeline per node (:func:`wire_slots`) and the pointer check below still holds — a batch
            version's keys are complete from its publication until the grace period after it is replaced,
            so reading them in whatever order the nodes answer, with the pointer read in the same round
            trip naming that version, never mixes versions nor sees a half-loaded one.
        clock: time source of ``as_of``.
        batch_cache_entries: most (version, view, entity) batch tile sets kept decoded (LRU); 0 disables.
    """

    def __init__(
        self,
        client: aioredis.Redis | ClusterPool,
        clock: Clock = wall_clock,
        batch_cache_entries: int = DEFAULT_BATCH_CACHE_ENTRIES,
    ) -> None:
        super().__init__(clock, batch_cache_entries)
        self.client = client
        self._cluster = client if isinstance(client, ClusterPool) else None
        self._wire = None if isinstance(client, ClusterPool) else RespPool.from_client(client)

    async def pointer(self) -> BatchPointer | None:
        """The serving batch pointer (cached; refreshed by every read)."""
        known, pointer = self._current
        return await self.refresh_pointer() if known is _UNSET else pointer

    async def refresh_pointer(self) -> BatchPointer | None:
        """Re-read the serving batch pointer now."""
        return self._parse_pointer(await self.client.get(POINTER_KEY))

    async def _execute(self, wire: list[bytes]) -> list[Any]:
        if self._wire is not None:
            return await self._wire.execute(b"".join(wire), len(wire))
        if self._cluster is not None:
            return raise_errors(await self._cluster.execute(wire, wire_slots(wire)))
        return await round_trip(self.client, b"".join(wire), len(wire))  # type: ignore[arg-type]

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        """Values of every read at ``as_of`` (default: now, taken after the read; see :meth:`attempts`), all
        against the same batch pointer."""
        gen = self.attempts(reads, as_of)
        wire = next(gen)
        while True:
            out = await self._execute(wire)
            try:
                wire = gen.send(out)
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        """Close the read connections (not the client, which belongs to the caller)."""
        if self._wire is not None:
            self._wire.close()


class SyncOnlineReader(ReadCore):
    """:class:`OnlineReader` over a blocking redis-py client (for callers without an event loop).

    Args:
        client: Redis client (bytes responses).
        clock: time source of ``as_of``.
        batch_cache_entries: most (version, view, entity) batch tile sets kept decoded (LRU); 0 disables.
    """

    def __init__(
        self,
        client: redis.Redis | SyncClusterPool,
        clock: Clock = wall_clock,
        batch_cache_entries: int = DEFAULT_BATCH_CACHE_ENTRIES,
    ) -> None:
        super().__init__(clock, batch_cache_entries)
        self.client = client

    def _execute(self, wire: list[bytes]) -> list[Any]:
        if isinstance(self.client, SyncClusterPool):
            return raise_errors(self.client.execute(wire, wire_slots(wire)))
        return round_trip_sync(self.client, b"".join(wire), len(wire))

    def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        """Values of every read at ``as_of`` (default: now, taken after the read; see :meth:`attempts`), all
        against the same batch pointer."""
        gen = self.attempts(reads, as_of)
        wire = next(gen)
        while True:
            try:
                wire = gen.send(self._execute(wire))
            except StopIteration as done:
                return done.value  # type: ignore[no-any-return]
