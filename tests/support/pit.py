"""Events, query times and brute-force expectations for the point-in-time tests, for any compiled plan.

Events are dict rows in the plan's field names (the timestamp field in UTC epoch µs); the expectation is
:mod:`tests.support.plan_bruteforce` over each entity's events.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa

from fstore.core.aggregates import Value, isclose
from fstore.core.event_schema import EventSchema, FieldType
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY, HOUR, MINUTE
from tests.support import plan_bruteforce

Row = dict[str, Any]
BASE = 1_767_225_600_000_000  # 2026-01-01T00:00:00Z, on every hop grid
EVENT_TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")
TS = pa.timestamp("us", tz="UTC")
_ARROW = {
    FieldType.STRING: pa.string(),
    FieldType.INT: pa.int64(),
    FieldType.LONG: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOL: pa.bool_(),
    FieldType.TIMESTAMP: TS,
}


def arrow_schema(schema: EventSchema) -> pa.Schema:
    """The Arrow types of the plan's event fields (timestamps as UTC µs)."""
    return pa.schema([(f.name, _ARROW[f.type]) for f in schema.fields])


def events_table(rows: Sequence[Row], schema: EventSchema) -> pa.Table:
    """The engine's input columns, built directly from dict rows (no Delta, no fstore adapter)."""
    target = arrow_schema(schema)
    cols = {}
    for field in target:
        values = [r.get(field.name) for r in rows]
        cols[field.name] = pa.array(values, pa.int64()).cast(TS) if field.type == TS else pa.array(values, field.type)
    return pa.table(cols, schema=target)


def random_events(rng: np.random.Generator, n: int, users: int, products: int, span: int) -> list[Row]:
    """Events of the e-commerce example on and next to hop boundaries (±1 µs), and anywhere in between."""
    out = []
    for i in range(n):
        etype = EVENT_TYPES[int(rng.integers(len(EVENT_TYPES)))]
        if rng.random() < 0.5:
            grid = [5 * MINUTE, HOUR, DAY][int(rng.integers(3))]
            t = BASE + int(rng.integers(span // grid)) * grid + int(rng.choice([-1, 0, 0, 1]))
        else:
            t = BASE + int(rng.integers(span))
        product = None if etype == "page_view" and rng.random() < 0.4 else f"p{rng.integers(products)}"
        price = round(float(rng.uniform(0, 300)), 2) if etype == "purchase" or rng.random() < 0.1 else None
        out.append(
            {
                "event_id": f"e{i}",
                "event_type": etype,
                "user_id": f"u{rng.integers(users)}",
                "product_id": product,
                "event_time": t,
                "price": price,
                "quantity": int(rng.integers(1, 4)),
                "session_id": None,
            }
        )
    return out


def query_times(
    rng: np.random.Generator, plan: Plan, events: Sequence[Row], n: int, span: int, start: int = BASE
) -> list[int]:
    """Times exactly at events, one µs after, on tail boundaries of each window, random, before all data."""
    ts = plan.schema.timestamp_field
    windows = sorted({(f.window, f.hop) for v in plan.views for f in v.windowed})
    times = []
    for _ in range(n):
        kind = int(rng.integers(6))
        e = events[int(rng.integers(len(events)))][ts]
        if kind == 0:
            times.append(e)  # the event at exactly t is excluded
        elif kind == 1:
            times.append(e + 1)
        elif kind in (2, 3):  # make tail(t) land exactly on (or 1 µs after) the event
            w, h = windows[int(rng.integers(len(windows)))]
            times.append(e - e % h + w + (0 if kind == 2 else int(rng.integers(h))))
        elif kind == 4:
            times.append(start - int(rng.integers(1, 3 * DAY)))  # before any data
        else:
            times.append(start + int(rng.integers(span + 8 * DAY)))
    return times


def expected(
    plan: Plan, view_name: str, events: Sequence[Row], keys: Sequence[str | None], times: Sequence[int]
) -> list[dict[str, Value]]:
    """The brute force of every feature of a view at each ``(key, t)``."""
    key = plan.view(view_name).entity.join_key
    by_entity: dict[str, list[Row]] = defaultdict(list)
    for e in events:
        if e.get(key) is not None:
            by_entity[e[key]].append(e)
    return [
        plan_bruteforce.values(plan, view_name, by_entity.get(k, []) if k else [], k or "", t)
        for k, t in zip(keys, times, strict=True)
    ]


def assert_frame_matches(
    got: pd.DataFrame, plan: Plan, view_name: str, want: list[dict[str, Value]], prefix: str = ""
) -> None:
    """Every feature of the view equals the brute force (1e-9 relative), nulls where it has none."""
    for name in plan.view(view_name).feature_names:
        col = got[prefix + name].tolist()
        for i, (g, w) in enumerate(zip(col, (row[name] for row in want), strict=True)):
            g = None if isinstance(g, float) and np.isnan(g) else g
            assert isclose(g, w), f"{view_name}:{name} row {i}: engine {g!r} != brute force {w!r}"
