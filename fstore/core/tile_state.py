"""The partial aggregate of one measure over a set of events, for every function of a plan
(docs/design.md §3, §4): count, sum, min, max, the variance state and the distinct members.

:class:`Acc` is initialize / add / merge / result on the states a :class:`~fstore.core.plan.TileMeasure`
lists (:class:`~fstore.core.functions.State`). The variance state is ``m2``, the sum of squared
deviations from the mean, kept next to count and sum and merged with the parallel formula of Chan,
Golub and LeVeque::

    m2 = m2_a + m2_b + (mean_b - mean_a)² · n_a · n_b / (n_a + n_b),   mean = sum / n

Unlike the textbook ``Σx² − (Σx)²/n`` (Feast's tiling), it does not cancel catastrophically when the
values are large and close together, and it is associative up to rounding, so tiles merged in any
grouping give the same variance to ~1e-12 relative. Distinct members are kept exactly, as a set; an
approximate sketch is a separate state that only a feature declaring it reads.

Empty windows follow §3: count, sum and count_distinct give 0; mean, min and max give null; std and var
give null below two values.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Iterable
from dataclasses import dataclass

from fstore.core.functions import Function, State

Value = int | float | None


@dataclass(slots=True)
class Acc:
    """A partial aggregate. ``minimum``/``maximum`` are ``None`` while nothing numeric was added;
    ``distinct`` is ``None`` unless the measure keeps its members."""

    count: int = 0
    total: float = 0.0
    minimum: float | None = None
    maximum: float | None = None
    m2: float = 0.0
    distinct: set[Hashable] | None = None

    @classmethod
    def for_states(cls, states: Iterable[State]) -> Acc:
        """An empty partial that keeps the members if ``states`` asks for them."""
        return cls(distinct=set() if State.DISTINCT in states else None)

    def add(self, x: Hashable) -> None:
        """Fold one measured value in: a number feeds every numeric state, any value feeds count and
        the distinct members."""
        n = self.count
        self.count = n + 1
        if self.distinct is not None:
            self.distinct.add(x)
        if not isinstance(x, int | float) or isinstance(x, bool):
            return
        v = float(x)
        if n:  # merge with the partial (1, v, v, v, 0): delta = v - mean
            delta = v - self.total / n
            self.m2 += delta * delta * n / (n + 1)
        self.total += v
        if self.minimum is None or v < self.minimum:
            self.minimum = v
        if self.maximum is None or v > self.maximum:
            self.maximum = v

    def merge(self, other: Acc) -> None:
        """Fold another partial in (Chan et al. for ``m2``; empty partials change nothing)."""
        nb = other.count
        if nb == 0:
            return
        na = self.count
        if na:
            delta = other.total / nb - self.total / na
            self.m2 += other.m2 + delta * delta * na * nb / (na + nb)
        else:
            self.m2 = other.m2
        self.count = na + nb
        self.total += other.total
        if other.minimum is not None and (self.minimum is None or other.minimum < self.minimum):
            self.minimum = other.minimum
        if other.maximum is not None and (self.maximum is None or other.maximum > self.maximum):
            self.maximum = other.maximum
        if self.distinct is not None and other.distinct is not None:
            self.distinct |= other.distinct

    def result(self, function: Function) -> Value:
        """The final value of ``function`` (:func:`result`)."""
        return result(function, self)


def result(function: Function, acc: Acc) -> Value:
    """The value of ``function`` over the events of ``acc``, with the empty-window rules of §3."""
    n = acc.count
    if function is Function.COUNT:
        return n
    if function is Function.COUNT_DISTINCT:
        return len(acc.distinct) if acc.distinct is not None else 0
    if function is Function.SUM:
        return acc.total if n else 0.0
    if n == 0:
        return None
    if function is Function.MEAN:
        return acc.total / n
    if function is Function.MIN or function is Function.MAX:
        x = acc.minimum if function is Function.MIN else acc.maximum
        # + 0.0: -0.0 and 0.0 tie, and which one a tile kept depends on the order of the events
        return None if x is None else x + 0.0
    if n < 2:
        return None
    var = max(acc.m2, 0.0) / (n - 1)
    return var if function is Function.VAR else math.sqrt(var)


def merge_all(states: Iterable[State], parts: Iterable[Acc]) -> Acc:
    """A fresh partial that keeps ``states``, merged with ``parts`` in order."""
    out = Acc.for_states(states)
    for p in parts:
        out.merge(p)
    return out
