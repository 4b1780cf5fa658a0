"""Vectorised kernels of the point-in-time engine (docs/design.md §3), numpy only.

The events of one measure are sorted by ``(entity code, event_time)`` once. A window query for entity
``e`` and bounds ``[lo_time, hi_time)`` is then two binary searches that give an index range ``[lo, hi)``
of that order; count is ``hi - lo``, sum a difference of prefix sums, and min/max a sparse-table lookup
(two overlapping power-of-two blocks). Every query costs ``O(log n)``, whatever the window holds, so the
engine scales with rows × features, not rows × events in the window.

Prefix sums are accumulated in ``numpy.longdouble`` (64-bit mantissa on x86-64): the difference of two
large prefix sums then keeps the relative accuracy of a direct sum of the window (the brute force) — as
long as the window's sum is not tiny next to the prefixes it is read from. float64 is not enough: on the
benchmark (10M events) float64 prefix sums put the example's 7-day and 24-hour revenue sums up to 7e-9 away
(relative) from the longdouble values, beyond the 1e-9 the contract allows. The prefixes run over every
entity's events, so one entity's huge values (1e15, or products of two fields up to 1e30) would leave the
small windows sorted after it with no correct digit: a window whose rounding bound (one rounding of the
largest prefix per addition) is not well below its sum is summed again directly (:meth:`SortedMeasure.sums`),
as std/var ranges are (:meth:`SortedMeasure.m2`).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

I64 = NDArray[np.int64]
F64 = NDArray[np.float64]
Bool = NDArray[np.bool_]

_MAX_KEY = 2**62
#: A std/var range is recomputed directly when its sum of squared deviations is below this share of the
#: long-double prefix of squares it is read from (whose rounding error is 1e-19 of it per addition, about
#: 1e-16 after ten million): every other range then keeps about ten correct digits.
_CANCELLATION = 1e-6
#: A sum is recomputed directly when the rounding bound of its prefix difference exceeds this share of it.
_SUM_TOLERANCE = 1e-10
#: Values per chunk of the direct recomputation (bounds its temporary arrays).
_DIRECT_CHUNK = 1 << 22
_EPS = float(np.finfo(np.longdouble).eps)


def radix_order(values: I64, high: int) -> I64:
    """Stable order of non-negative integers below ``2**32`` (``high``: their maximum).

    numpy sorts 8- and 16-bit integers stably by radix: one pass over the low 16 bits, then, above
    ``2**16``, one over the rest — as 8 bits when they fit (half the work of a second 16-bit pass).
    """
    order: I64 = np.argsort(values.astype(np.uint16), kind="stable")  # the cast keeps the low 16 bits
    if high >= 2**16:
        rest = np.right_shift(values[order], 16)
        narrow = np.uint8 if high < 2**24 else np.uint16
        order = order[np.argsort(rest.astype(narrow), kind="stable")]
    return order


def _order(codes: I64, times: I64, keys: I64, n_codes: int, times_sorted: bool | None = None) -> I64:
    """Stable order of ``keys = (code, time)``.

    Events usually arrive in time order (one file per day, written in time order); then a stable sort by
    entity code alone is enough (:func:`radix_order`, about 1.5× faster than sorting the 64-bit keys).
    Otherwise: a stable sort of the keys. Either way, events with equal keys keep their input order.
    ``times_sorted``: whether ``times`` ascend, when the caller knows (``None``: checked here).
    """
    if times_sorted is None:
        times_sorted = len(times) > 1 and bool((times[1:] >= times[:-1]).all())
    if n_codes <= 2**32 and times_sorted:
        return radix_order(codes, n_codes - 1)
    by_key: I64 = np.argsort(keys, kind="stable")
    return by_key


#: Needles per block of :func:`search_sorted` (a block's share of the keys then fits in the core's cache).
SEARCH_BLOCK = 4096


def search_sorted(keys: I64, needles: I64) -> I64:
    """``np.searchsorted(keys, needles)`` (left), faster for many ascending needles.

    numpy restarts each needle's binary search over the rest of ``keys``, its first steps far apart in
    memory. Ascending needles are cut into blocks of :data:`SEARCH_BLOCK`: the first needles of the blocks
    are searched first; each block's needles then lie between its first needle's position and the next
    block's, and are searched in that slice only (the same positions; about 25 % less CPU on 1M needles in
    7M keys). Needles not in ascending order are searched the plain way.
    """
    m = len(needles)
    if m < 4 * SEARCH_BLOCK or not bool((needles[1:] >= needles[:-1]).all()):
        plain: I64 = np.searchsorted(keys, needles).astype(np.int64, copy=False)
        return plain
    found: I64 = np.empty(m, np.int64)
    starts = np.searchsorted(keys, needles[::SEARCH_BLOCK]).tolist()
    for j, start in enumerate(starts):
        first = j * SEARCH_BLOCK
        end = starts[j + 1] if j + 1 < len(starts) else len(keys)
        part = found[first : first + SEARCH_BLOCK]
        part[:] = np.searchsorted(keys[start:end], needles[first : first + SEARCH_BLOCK])
        part += start
    return found


def _ties_by_value(keys: I64, values: F64, order: I64) -> I64:
    """``order`` with each run of equal sorted ``keys`` (same entity, same instant) ordered by value.

    Sums add the values in sorted order; ties would otherwise keep their input order, so the same events
    stored in another order could round differently. Ties are rare: one comparison pass when there are none.
    """
    same = keys[1:] == keys[:-1]
    if not same.any():
        return order
    tied = np.zeros(len(keys), bool)
    tied[1:] = same
    tied[:-1] |= same
    run = np.cumsum(np.concatenate([[True], ~same]))  # run number of every sorted position
    at = np.flatnonzero(tied)
    by_value = at[np.lexsort((values[order[at]], run[at]))]
    fixed = order.copy()
    fixed[at] = order[by_value]
    return fixed


class SortedMeasure:
    """Events of one measure sorted by ``(entity code, event_time)`` with prefix sums.

    Args:
        codes: entity code of each event, in ``[0, n_codes)``.
        times: event_time of each event, UTC epoch microseconds.
        values: measured value of each event (``None``: every value is 1, counts only).
        n_codes: number of distinct entity codes (size of the key space).
        origin: ``(first, span)`` of a time range that holds every ``times`` value: measures built with the
            same origin share their key space, so one set of needles (:meth:`needles`) serves them all.
        times_sorted: whether ``times`` ascend, when the caller knows (``None``: checked).
    """

    def __init__(
        self,
        codes: I64,
        times: I64,
        values: F64 | None,
        n_codes: int,
        origin: tuple[int, int] | None = None,
        times_sorted: bool | None = None,
    ) -> None:
        self.n = len(codes)
        self._values: F64 | None = None
        self._prefix: NDArray[np.longdouble] | None = None
        self._prefix_max: float | None = None
        self._tables: list[F64] = []
        self._tables_min: list[F64] = []
        self._ranks: I64 | None = None
        self._order: I64 = np.empty(0, np.int64)
        self._squares: NDArray[np.longdouble] | None = None
        self._centred: NDArray[np.longdouble] | None = None
        self._value_changes: I64 | None = None
        self._distinct: RangeCounter | None = None
        if self.n == 0:
            self._keys: I64 = np.empty(0, np.int64)
            self._tmin, self._span = 0, 1
            self._ranks = None
            return
        self._tmin, tmax = int(times.min()), int(times.max())
        span = tmax - self._tmin + 1
        if origin is not None and origin[0] <= self._tmin and self._tmin + span <= origin[0] + origin[1]:
            self._tmin, span = origin
        self._ranks = None
        if n_codes * (span + 1) >= _MAX_KEY:  # very long ranges: compress times to their dense rank
            self._ranks = np.unique(times)
            rel = np.searchsorted(self._ranks, times).astype(np.int64)
            span = len(self._ranks)
            keys = np.multiply(codes, span, dtype=np.int64)
            keys += rel
        elif tmax < 2**62:  # code * span + time stays below 2**63: no temporary for time - first
            keys = np.multiply(codes, span, dtype=np.int64)
            keys += times
            keys -= self._tmin
        else:
            keys = np.multiply(codes, span, dtype=np.int64)
            keys += times - self._tmin
        self._span = span
        order = _order(codes, times, keys, n_codes, times_sorted)
        self._keys = keys[order]
        if values is not None:
            order = _ties_by_value(self._keys, values, order)
        self._order = order
        if values is not None:
            self._values = np.ascontiguousarray(values[order], dtype=np.float64)
            self._prefix = np.concatenate([np.zeros(1, np.longdouble), np.cumsum(self._values, dtype=np.longdouble)])

    @property
    def key_space(self) -> tuple[int, int] | None:
        """``(first, span)`` of the keys' time axis (``None`` when times are ranked): measures with equal key
        spaces take the same needles."""
        return None if self._ranks is not None or self.n == 0 else (self._tmin, self._span)

    def needles(self, codes: I64, bounds: I64) -> I64:
        """Search keys of ``(code, bound)`` queries (see :meth:`position_of`); a code of ``-1`` (an entity
        without events) gives a key below every event's, i.e. position 0."""
        if self._ranks is not None:
            rel = np.searchsorted(self._ranks, bounds).astype(np.int64, copy=False)
        else:
            rel = bounds - self._tmin
            np.maximum(rel, 0, out=rel)
            np.minimum(rel, self._span, out=rel)
        keys: I64 = codes * self._span
        keys += rel
        return keys

    def position_of(self, needles: I64) -> I64:
        """:meth:`position` from :meth:`needles` (of this measure or of one with the same key space)."""
        if self.n == 0:
            return np.zeros(len(needles), np.int64)
        return search_sorted(self._keys, needles)

    def position(self, codes: I64, bounds: I64) -> I64:
        """Index of the first event of each entity whose time is ``>= bound``.

        Args:
            codes: entity code per query, ``-1`` for entities without events (answer: 0).
            bounds: time per query, UTC epoch microseconds.

        Queries sorted by ``(code, bound)`` are fastest (binary searches then walk forward in memory).
        """
        if self.n == 0:
            return np.zeros(len(codes), np.int64)
        return self.position_of(self.needles(codes, bounds))

    def sums(self, lo: I64, hi: I64) -> F64:
        """Sum of the values in each index range ``[lo, hi)`` (0.0 when empty)."""
        if self._prefix is None:
            return (hi - lo).astype(np.float64)
        window = self._prefix[hi]
        window -= self._prefix[lo]
        out: F64 = window.astype(np.float64)
        # Each addition between lo and hi rounded a prefix of at most M = max|prefix|: the difference is off by at
        # most (hi - lo + 1)·eps·M. Where that is not well below the sum (a small window sorted after huge values,
        # or a sum near 0), the window is summed again from its own values.
        if self._prefix_max is None:
            self._prefix_max = float(np.abs(self._prefix).max())
        bound = (hi - lo + 1).astype(np.float64)
        bound *= _EPS * self._prefix_max
        suspect = np.flatnonzero((bound > _SUM_TOLERANCE * np.abs(out)) & (hi > lo))
        if len(suspect):
            self._direct(suspect, lo, hi, self._sums_direct, out)
        return out

    def _sums_direct(self, lo: I64, hi: I64) -> F64:
        """Sum of each (non-empty) range ``[lo, hi)`` from its own values (long double, in sorted order)."""
        x, starts = self._gather(lo, hi)
        direct: F64 = np.add.reduceat(x, starts).astype(np.float64)
        return direct

    def _gather(self, lo: I64, hi: I64) -> tuple[NDArray[np.longdouble], I64]:
        """The values of the (non-empty) ranges ``[lo, hi)`` one after another, and where each range starts."""
        assert self._values is not None
        length = hi - lo
        starts = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
        idx = np.repeat(lo - starts, length) + np.arange(int(length.sum()))
        return self._values[idx].astype(np.longdouble), starts

    @staticmethod
    def _direct(suspect: I64, lo: I64, hi: I64, compute: Callable[[I64, I64], F64], out: F64) -> None:
        """``out[suspect] = compute(lo[suspect], hi[suspect])``, in chunks of about :data:`_DIRECT_CHUNK` values."""
        lengths = (hi - lo)[suspect]
        chunk = (np.cumsum(lengths) - lengths) // _DIRECT_CHUNK  # by the offset where each range starts
        bounds = np.flatnonzero(np.diff(chunk)) + 1  # chunk is non-decreasing: one slice per chunk
        for part in np.split(suspect, bounds):
            out[part] = compute(lo[part], hi[part])

    def _spread(self) -> tuple[NDArray[np.longdouble], NDArray[np.longdouble]]:
        """Prefix sums of ``x - c`` and ``(x - c)²`` with ``c`` the mean of the event's entity (built once)."""
        if self.n == 0:  # no event: every range is empty
            zero = np.zeros(1, np.longdouble)
            return zero, zero
        if self._squares is None or self._centred is None:
            assert self._values is not None, "std/var need measured values"
            entity = self._keys // self._span
            first = np.flatnonzero(np.concatenate([[True], entity[1:] != entity[:-1]]))
            counts = np.diff(np.append(first, self.n))
            means = np.add.reduceat(self._values, first) / counts
            d = self._values - np.repeat(means, counts)
            zero = np.zeros(1, np.longdouble)
            self._centred = np.concatenate([zero, np.cumsum(d, dtype=np.longdouble)])
            self._squares = np.concatenate([zero, np.cumsum(d * d, dtype=np.longdouble)])
        return self._centred, self._squares

    def m2(self, lo: I64, hi: I64) -> F64:
        """Sum of squared deviations from the range's mean of each index range ``[lo, hi)`` (0.0 when empty).

        A numerically stable direct form: the values are first centred on their entity's mean (a range
        never spans two entities), so ``Σd² - (Σd)²/n`` does not cancel, and the prefix sums are long doubles.
        """
        centred, squares = self._spread()
        n = np.maximum(hi - lo, 1).astype(np.longdouble)
        s = centred[hi] - centred[lo]
        prefix = squares[hi]
        out = (prefix - squares[lo]) - s * s / n
        m2: F64 = np.maximum(out.astype(np.float64), 0.0)
        # The difference of two prefix sums is only accurate to a few ulps of the prefix (everything sorted before
        # ``hi``, every entity's): a range whose spread is tiny next to it — identical values above all, whose
        # std must be 0, not the square root of rounding noise — is recomputed directly, in two passes. (So one
        # entity of a huge spread sends the ranges of every entity sorted after it here: exact, but up to ~50x
        # the cost of std/var; prefix sums restarted per entity would avoid it.)
        limit = prefix.astype(np.float64)
        limit *= _CANCELLATION
        # (a prefix that overflowed — a deviation past ~1e154 earlier in the sort — leaves NaN or inf: recomputed too)
        suspect = np.flatnonzero(((m2 <= limit) | ~np.isfinite(m2)) & (hi - lo >= 2))
        if len(suspect):
            changes = self._changes()  # a range of one value has no change inside: its m2 is 0, no pass needed
            flat = changes[hi[suspect] - 1] == changes[lo[suspect]]
            m2[suspect[flat]] = 0.0
            suspect = suspect[~flat]
        if len(suspect):
            self._direct(suspect, lo, hi, self._m2_direct, m2)
        return m2

    def _changes(self) -> I64:
        """Per position ``i`` of the sorted values: how many ``j <= i`` differ from the value before them
        (built once; -0.0 and 0.0 are one value)."""
        if self._value_changes is None:
            assert self._values is not None, "std/var need measured values"
            differs = self._values[1:] != self._values[:-1]
            self._value_changes = np.concatenate([[0], np.cumsum(differs, dtype=np.int64)])
        return self._value_changes

    def _m2_direct(self, lo: I64, hi: I64) -> F64:
        """Sum of squared deviations of each (non-empty) range ``[lo, hi)``, from its own values: the mean
        first (long double), then the squared deviations from it."""
        assert self._values is not None, "std/var need measured values"
        length = hi - lo
        x, starts = self._gather(lo, hi)
        mean = np.add.reduceat(x, starts) / length
        d = x - np.repeat(mean, length)
        direct: F64 = np.add.reduceat(d * d, starts).astype(np.float64)
        return direct

    def distinct(self, lo: I64, hi: I64, members: I64) -> I64:
        """Number of distinct ``members`` (integer codes, one per event in input order) in each range ``[lo, hi)``."""
        if self._distinct is None:
            self._distinct = RangeCounter(_previous_same(self._keys // self._span, members[self._order]))
        counted: I64 = self._distinct.count_below(lo, hi, lo)
        return counted

    def _levels(self, longest: int, minimum: bool) -> list[F64]:
        tables = self._tables_min if minimum else self._tables
        assert self._values is not None, "min/max need measured values"
        if not tables:
            tables.append(self._values)
        pick = np.minimum if minimum else np.maximum
        while (1 << len(tables)) <= longest:
            prev, half = tables[-1], 1 << (len(tables) - 1)
            tables.append(pick(prev[:-half], prev[half:]))
        return tables

    def extreme(self, lo: I64, hi: I64, minimum: bool) -> tuple[F64, Bool]:
        """Min or max of the values in each index range ``[lo, hi)``.

        Returns:
            ``(values, null)``: ``null`` is true for empty ranges (their value is NaN).
        """
        length = hi - lo
        out = np.full(len(lo), np.nan)
        null = length <= 0
        if null.all():
            return out, null
        tables = self._levels(int(length.max()), minimum)
        pick = np.minimum if minimum else np.maximum
        _, exp = np.frexp(np.maximum(length, 1).astype(np.float64))
        level = exp.astype(np.int64) - 1  # floor(log2(length)), exact for integers < 2**53
        for k in np.unique(level[~null]):
            rows = np.flatnonzero((level == k) & ~null)
            table = tables[int(k)]
            out[rows] = pick(table[lo[rows]], table[hi[rows] - (1 << int(k))])
        return out + 0.0, null  # -0.0 as 0.0: the tiles' min/max kept whichever zero came first


def _previous_same(entity: I64, members: I64) -> I64:
    """For each position, the previous position with the same ``(entity, member)``, or ``-1``."""
    n = len(entity)
    if n == 0:
        return np.empty(0, np.int64)
    order = np.lexsort((np.arange(n), members, entity))
    e, m = entity[order], members[order]
    same = np.concatenate([[False], (e[1:] == e[:-1]) & (m[1:] == m[:-1])])
    prev = np.full(n, -1, np.int64)
    prev[order[same]] = order[np.flatnonzero(same) - 1]
    return prev


class RangeCounter:
    """``#{i in [lo, hi) : keys[i] < bound}`` for many ranges at once (a merge-sort tree, vectorised).

    Level ``k`` holds ``keys`` sorted within aligned blocks of ``2**k`` positions, offset by the block number so
    that one ``searchsorted`` answers every query's block at once. A range is cut into aligned blocks (at most
    two per level). Exact distinct counts follow: the distinct members of ``[lo, hi)`` are the positions whose
    previous occurrence is before ``lo`` (:meth:`SortedMeasure.distinct`).
    """

    def __init__(self, keys: I64) -> None:
        self.n = len(keys)
        self._base = int(keys.min()) if self.n else 0
        self._width = (int(keys.max()) - self._base + 2) if self.n else 1
        self._keys = keys - self._base
        self._levels: list[I64] = []

    def _level(self, k: int) -> I64:
        while len(self._levels) <= k:
            size = 1 << len(self._levels)
            pad = -self.n % size
            blocks = np.concatenate([self._keys, np.full(pad, self._width - 1, np.int64)]).reshape(-1, size)
            blocks = np.sort(blocks, axis=1)
            blocks += (np.arange(len(blocks), dtype=np.int64) * self._width)[:, None]
            self._levels.append(blocks.ravel())
        return self._levels[k]

    def _count(self, k: int, rows: I64, start: I64, bound: I64) -> I64:
        """Keys below ``bound`` in the level-``k`` block starting at ``start`` (aligned)."""
        block = start[rows] >> k
        level = self._level(k)
        at = np.searchsorted(level, block * self._width + np.clip(bound[rows] - self._base, 0, self._width - 1))
        counted: I64 = at - (block << k)
        return counted

    def count_below(self, lo: I64, hi: I64, bound: I64) -> I64:
        """Per query ``q``: how many ``keys[i]`` with ``lo[q] <= i < hi[q]`` are ``< bound[q]``."""
        out = np.zeros(len(lo), np.int64)
        at = lo.astype(np.int64, copy=True)
        top = int((hi - lo).max()).bit_length() if len(lo) else 0
        for k in range(top):  # climb: align ``at`` with blocks of growing size
            rows = np.flatnonzero(((at >> k) & 1).astype(bool) & (at + (1 << k) <= hi))
            if len(rows):
                out[rows] += self._count(k, rows, at, bound)
                at[rows] += 1 << k
        for k in range(top - 1, -1, -1):  # descend: take the largest blocks that still fit
            rows = np.flatnonzero(at + (1 << k) <= hi)
            if len(rows):
                out[rows] += self._count(k, rows, at, bound)
                at[rows] += 1 << k
        return out
