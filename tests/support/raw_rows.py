"""``raw_events`` rows of the example's fixed events, through the plan's schema (for tests that still build
events as :class:`fstore.core.events.Event` tuples)."""

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
