"""Bridges for tests that still build the example's fixed events (:class:`fstore.core.events.Event` tuples)
or views (:class:`tests.support.legacy.features.FeatureView`): their ``raw_events`` rows through the plan's schema,
and a plan holding one such view."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import pyarrow as pa

from fstore.delta import raw_log
from fstore.plan_source import current_plan


def events_table(events: Sequence[Any], hashes: Sequence[str], ingested_at: Iterable[int]) -> pa.Table:
    """:func:`fstore.delta.raw_log.rows_table` of the process plan's schema, from named tuples."""
    return raw_log.rows_table(current_plan().schema, [e._asdict() for e in events], hashes, ingested_at)


def raw_schema() -> pa.Schema:
    """The process plan's ``raw_events`` schema."""
    return raw_log.raw_schema(current_plan().schema)


def plan_of(view: Any) -> Any:
    """A plan holding one fixed-example :class:`tests.support.legacy.features.FeatureView` (e.g. the boundary
    table's views), on the process plan's event schema: for engines that run from a plan."""
    from fstore.core import plan as p
    from fstore.core.expr_parse import parse_measure
    from fstore.core.functions import Function

    current = current_plan()
    entity = next(e for e in current.entities if e.join_key == view.entity.join_key)
    measures: dict[str, p.Measure] = {}
    features: list[p.Feature] = []
    for f in view.features:
        if not hasattr(f, "measure"):
            features.append(p.RatioFeature(f.name, f.numerator, f.denominator))
            continue
        m = f.measure
        value = "price * quantity" if str(m.value) == "revenue" else "1"
        measures[m.name] = p.Measure(m.name, *parse_measure(f"{value} if event_type == '{m.event_type}'"))
        function = Function.MEAN if str(f.agg) == "avg" else Function(str(f.agg))
        features.append(p.WindowedFeature(f.name, m.name, function, f.window))
    one = p.View(view.name, entity, tuple(measures.values()), tuple(features))
    return p.Plan(current.schema, (entity,), (one,))
