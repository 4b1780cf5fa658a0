"""A naive evaluation of any compiled plan, straight from the docs/design.md §3 contract (no tiles).

``value(e, t) = AGG { measure(ev) : ev.entity = e, filter(ev), tail(t) <= ev.event_time < t }`` with
``tail(t) = floor(t - W, hop)``: each value is a scan over every event. The hop is the declared slide or
the design's table, restated in :func:`tests.support.bruteforce.hop_by_table`; the aggregations are the
textbook formulas (two-pass sample variance, a set for count_distinct). Measures are evaluated with the
expression language's Python evaluator, whose semantics have tests of their own.

Events are mappings of field → value (the plan's field names; the timestamp in UTC epoch microseconds),
already valid and de-duplicated.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from fstore.core.expr_eval import measure_fn
from fstore.core.plan import Plan, RatioFeature
from tests.support.bruteforce import hop_by_table

Value = int | float | None
Row = Mapping[str, Any]


def tail(t: int, window: int, slide: int | None) -> int:
    """The first included instant of the window ending (exclusively) at ``t``."""
    h = slide if slide is not None else hop_by_table(window)
    return ((t - window) // h) * h


def aggregate(function: str, xs: Sequence[Any]) -> Value:
    """One aggregation of the measured values of a window (empty: 0 for counts and sums, else null)."""
    if function == "count":
        return len(xs)
    if function == "count_distinct":
        return len(set(xs))
    if function == "sum":
        return math.fsum(xs)
    if not xs:
        return None
    n = len(xs)
    mean = math.fsum(xs) / n
    if function == "mean":
        return mean
    if function in ("min", "max"):
        return float(min(xs) if function == "min" else max(xs))
    if n < 2:
        return None
    var = math.fsum((x - mean) ** 2 for x in xs) / (n - 1)
    return var if function == "var" else math.sqrt(var)


def value(plan: Plan, view_name: str, feature: str, events: Sequence[Row], entity: str, t: int) -> Value:
    """``value(entity, t)`` of one feature of one view."""
    view = plan.view(view_name)
    f = view.feature(feature)
    if isinstance(f, RatioFeature):
        num = value(plan, view_name, f.numerator, events, entity, t)
        den = value(plan, view_name, f.denominator, events, entity, t)
        return None if num is None or den is None or den == 0 else float(num) / float(den)
    m = view.measure(f.measure)
    measure = measure_fn(m.value, m.where)
    key, ts = view.entity.join_key, plan.schema.timestamp_field
    lo = tail(t, f.window, f.slide)
    xs = [x for ev in events if ev.get(key) == entity and lo <= ev[ts] < t and (x := measure(ev)) is not None]
    return aggregate(str(f.function), xs)


def values(plan: Plan, view_name: str, events: Sequence[Row], entity: str, t: int) -> dict[str, Value]:
    """Every feature of one view."""
    return {n: value(plan, view_name, n, events, entity, t) for n in plan.view(view_name).feature_names}
