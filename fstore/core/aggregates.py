"""Mergeable partial aggregates (initialize / add / merge / result).

Every layer stores :class:`Partial` values, never final feature values, so tiles written by the stream
job, the batch job or computed by the point-in-time engine merge with the same code. A partial carries
count, sum, min and max of one measure; ``result`` derives any of the five aggregations from it.
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
        """Fold one measured value in."""
        self.count += 1
        self.total += x
        if self.minimum is None or x < self.minimum:
            self.minimum = x
        if self.maximum is None or x > self.maximum:
            self.maximum = x

    def merge(self, other: Partial) -> None:
        """Fold another partial in (associative and commutative)."""
        if other.count == 0:
            return
        self.count += other.count
        self.total += other.total
        if self.minimum is None or (other.minimum is not None and other.minimum < self.minimum):
            self.minimum = other.minimum
        if self.maximum is None or (other.maximum is not None and other.maximum > self.maximum):
            self.maximum = other.maximum

    def result(self, agg: Agg) -> Value:
        """The final value; empty → 0 for count and sum, ``None`` for avg, min and max."""
        if agg is Agg.COUNT:
            return self.count
        if agg is Agg.SUM:
            return self.total if self.count else 0.0
        if self.count == 0:
            return None
        if agg is Agg.AVG:
            return self.total / self.count
        if agg is Agg.MIN:
            return self.minimum
        return self.maximum

    def to_tuple(self) -> tuple[int, float, float | None, float | None]:
        """Compact form used by storage adapters."""
        return (self.count, self.total, self.minimum, self.maximum)

    @classmethod
    def from_tuple(cls, t: tuple[int, float, float | None, float | None]) -> Partial:
        """Inverse of :meth:`to_tuple`."""
        return cls(int(t[0]), float(t[1]), t[2], t[3])


def merge_all(partials: Iterable[Partial]) -> Partial:
    """Merge any number of partials into a fresh one."""
    out = Partial()
    for p in partials:
        out.merge(p)
    return out


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
