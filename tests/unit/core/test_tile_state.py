"""The generic partial aggregate against the textbook formulas (docs/design.md §3, §4).

Values are split into random chunks (tiles), each chunk folded value by value, the chunks merged in a
random grouping; every function must equal the two-pass brute force of :mod:`tests.support.plan_bruteforce`
on the whole list.
"""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fstore.core.functions import Function, State
from fstore.core.tile_state import Acc, merge_all, result
from tests.support.plan_bruteforce import aggregate

pytestmark = pytest.mark.unit

ALL = tuple(State)
NUMERIC = [f for f in Function if f is not Function.COUNT_DISTINCT]


def chunked(xs: list[float], rng: random.Random) -> Acc:
    """``xs`` folded in random chunks, the chunks merged pairwise in a random tree."""
    parts: list[Acc] = []
    i = 0
    while i < len(xs):
        j = i + rng.randint(0, 5)
        acc = Acc.for_states(ALL)
        for x in xs[i:j]:
            acc.add(x)
        parts.append(acc)
        i = j
    while len(parts) > 1:
        k = rng.randrange(len(parts) - 1)
        parts[k].merge(parts.pop(k + 1))
    return parts[0] if parts else Acc.for_states(ALL)


def close(a: object, b: object) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-9)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.floats(min_value=-1e6, max_value=1e6, allow_nan=False), max_size=40),
    st.integers(min_value=0, max_value=2**32),
)
def test_every_function_of_any_chunking_equals_the_two_pass_formula(xs: list[float], seed: int) -> None:
    acc = chunked(xs, random.Random(seed))
    for f in Function:
        assert close(acc.result(f), aggregate(str(f), xs)), (f, xs)


def test_variance_of_large_close_values_is_stable_where_sum_of_squares_is_not() -> None:
    xs = [1e9 + d for d in (4.0, 7.0, 13.0, 16.0)]  # variance 30 around a large mean
    acc = chunked(xs, random.Random(3))
    assert acc.result(Function.VAR) == pytest.approx(30.0, rel=1e-9)
    naive = (sum(x * x for x in xs) - sum(xs) ** 2 / 4) / 3  # Σx² − (Σx)²/n in doubles cancels
    assert abs(naive - 30.0) > 1


def test_empty_and_single_value_rules() -> None:
    empty = Acc.for_states(ALL)
    assert [result(f, empty) for f in Function] == [0, 0.0, None, None, None, None, None, 0]
    one = Acc.for_states(ALL)
    one.add(-2.5)
    assert [result(f, one) for f in Function] == [1, -2.5, -2.5, -2.5, -2.5, None, None, 1]


def test_distinct_members_count_strings_once_and_merge_as_sets() -> None:
    a, b = Acc.for_states((State.DISTINCT,)), Acc.for_states((State.DISTINCT,))
    for x in ("r1", "r2", "r1"):
        a.add(x)
    for x in ("r2", "r3"):
        b.add(x)
    merged = merge_all((State.DISTINCT,), (a, b))
    assert (merged.result(Function.COUNT_DISTINCT), merged.result(Function.COUNT)) == (3, 5)
    assert merged.minimum is None and merged.total == 0.0  # strings feed no numeric state
