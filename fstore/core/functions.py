"""The aggregation functions fstore serves — every one of Feast's ``Aggregation`` — and the parts of a
tile's partial aggregate each one reads (docs/design.md §3, §4)."""

from __future__ import annotations

from enum import StrEnum


class Function(StrEnum):
    """The aggregation functions of Feast's ``Aggregation`` that fstore serves (docs/design.md §3)."""

    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    STD = "std"
    VAR = "var"
    COUNT_DISTINCT = "count_distinct"

    @property
    def dtype(self) -> str:
        """``int64`` for counts, ``float64`` otherwise."""
        return "int64" if self in (Function.COUNT, Function.COUNT_DISTINCT) else "float64"

    @property
    def numeric(self) -> bool:
        """Whether the function needs a numeric measure."""
        return self not in (Function.COUNT, Function.COUNT_DISTINCT)


class State(StrEnum):
    """Parts of a tile's partial aggregate of one measure (docs/design.md §4)."""

    COUNT = "count"
    SUM = "sum"
    MIN = "min"
    MAX = "max"
    M2 = "m2"  # sum of squared deviations from the mean, merged with the parallel (Chan et al.) formula
    DISTINCT = "distinct"  # the distinct values themselves (exact count_distinct)
    SKETCH = "sketch"  # a declared approximate distinct-count sketch


_STATES = {
    Function.COUNT: (State.COUNT,),
    Function.SUM: (State.SUM,),
    Function.MEAN: (State.COUNT, State.SUM),
    Function.MIN: (State.MIN,),
    Function.MAX: (State.MAX,),
    Function.STD: (State.COUNT, State.SUM, State.M2),
    Function.VAR: (State.COUNT, State.SUM, State.M2),
}

#: Sketches a count_distinct feature may declare instead of exact members.
SKETCHES = ("hll",)


def states_of(function: Function, sketch: str | None = None) -> tuple[State, ...]:
    """The partial-aggregate parts ``function`` reads. A count_distinct reads its exact members even when the
    feature declares an approximate sketch: no engine keeps a sketch yet, and an exact count is within any
    sketch's error (docs/design.md §3 status)."""
    if function is Function.COUNT_DISTINCT:  # a declared sketch is served exactly for now: members are kept
        return (State.DISTINCT,)
    return _STATES[function]
