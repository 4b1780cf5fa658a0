"""Mergeable partial aggregates (initialize / add / merge / result).

Every layer stores partial aggregates, never final feature values, so tiles written by the stream job,
the batch job or computed by the point-in-time engine merge with the same code. A partial carries count,
sum, min and max of one measure; ``result`` derives any of the five aggregations from it.

The algebra is written once, on plain tuples (:data:`Stats`): :func:`fold` adds measured values,
:func:`merge_stats` merges partials, :func:`result` applies the empty-window rules. :class:`Partial` is
the mutable object form and calls those functions; the hot scalar paths (the online merge per request,
the stream's pre-aggregation per batch) call them directly on tuples. Vectorised engines (pandas, numpy,
Spark, the Lua script inside Redis) are separate algorithms, held to the same results by the boundary
table of the tests.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum


class Agg(StrEnum):
    """The aggregations of docs/design.md §3."""

    COUNT = "count"
    SUM = "sum"
    AVG = "avg"
    MIN = "min"
    MAX = "max"


Value = int | float | None

#: A partial aggregate as a tuple: ``(count, sum, min, max)``; min and max are ``None`` while count is 0.
Stats = tuple[int, float, float | None, float | None]
#: The partial of no events.
EMPTY: Stats = (0, 0.0, None, None)


def fold(acc: Stats, values: Iterable[float]) -> Stats:
    """``acc`` with the measured ``values`` added, in order (the sum is accumulated left to right)."""
    c, total, mn, mx = acc
    for x in values:
        c += 1
        total += x
        if mn is None or x < mn:
            mn = x
        if mx is None or x > mx:
            mx = x
    return c, total, mn, mx


def merge_stats(acc: Stats, others: Iterable[Stats]) -> Stats:
    """``acc`` merged with ``others``, in order (associative and commutative up to float rounding of the
    sum: merging in the same order gives bit-identical sums). Empty partials are skipped."""
    c, total, mn, mx = acc
    for oc, ot, on, ox in others:
        if oc == 0:
            continue
        c += oc
        total += ot
        if mn is None or (on is not None and on < mn):
            mn = on
        if mx is None or (ox is not None and ox > mx):
            mx = ox
    return c, total, mn, mx


def ones(n: int) -> Stats:
    """The partial of ``n`` values that are all 1 (count-style measures store only ``n``)."""
    return (n, float(n), 1.0, 1.0) if n else EMPTY


def result(agg: Agg, stats: Stats) -> Value:
    """The final value of a partial; empty → 0 for count and sum, ``None`` for avg, min and max."""
    c = stats[0]
    if agg is Agg.COUNT:
        return c
    if agg is Agg.SUM:
        return stats[1] if c else 0.0
    if c == 0:
        return None
    if agg is Agg.AVG:
        return stats[1] / c
    if agg is Agg.MIN:
        return stats[2]
    return stats[3]


@dataclass(slots=True)
class Partial:
    """Partial aggregate of one measure over a set of events (a tile or a merge of tiles).

    ``minimum``/``maximum`` are ``None`` while ``count == 0``.
    """

    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None

    def add(self, x: float) -> None:
        """Fold one measured value in (:func:`fold`)."""
        self.count, self.total, self.minimum, self.maximum = fold(self.to_tuple(), (x,))

    def merge(self, other: Partial) -> None:
        """Fold another partial in (:func:`merge_stats`)."""
        self.count, self.total, self.minimum, self.maximum = merge_stats(self.to_tuple(), (other.to_tuple(),))

    def result(self, agg: Agg) -> Value:
        """The final value (:func:`result`): empty → 0 for count and sum, ``None`` for avg, min and max."""
        return result(agg, self.to_tuple())

    def to_tuple(self) -> Stats:
        """The tuple form (:data:`Stats`), also used by storage adapters."""
        return (self.count, self.total, self.minimum, self.maximum)

    @classmethod
    def from_tuple(cls, t: Stats) -> Partial:
        """Inverse of :meth:`to_tuple`."""
        return cls(int(t[0]), float(t[1]), t[2], t[3])


def merge_all(partials: Iterable[Partial]) -> Partial:
    """Merge any number of partials into a fresh one."""
    return Partial(*merge_stats(EMPTY, (p.to_tuple() for p in partials)))


def ratio(numerator: Value, denominator: Value) -> float | None:
    """A derived ratio feature: ``None`` when the denominator is 0 or missing."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return float(numerator) / float(denominator)


def isclose(a: Value, b: Value, rel: float = 1e-9) -> bool:
    """Equality for feature values: exact for None and ints, relative ``rel`` for floats."""
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=rel, abs_tol=1e-12)
