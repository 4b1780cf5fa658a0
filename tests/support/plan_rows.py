"""Rows of a plan's events (dicts, the timestamp field in epoch µs) as the Arrow tables the vectorised
engines read."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyarrow as pa

from fstore.core.event_schema import EventSchema, FieldType

ARROW_TYPES = {FieldType.STRING: pa.string(), FieldType.INT: pa.int64(), FieldType.LONG: pa.int64(),
               FieldType.FLOAT: pa.float64(), FieldType.BOOL: pa.bool_(), FieldType.TIMESTAMP: pa.int64()}  # fmt: skip


def arrow_table(schema: EventSchema, rows: Sequence[dict[str, Any]]) -> pa.Table:
    """``rows`` as a table with one column per declared field (absent values null; times int64 µs)."""
    arrow = pa.schema([pa.field(f.name, ARROW_TYPES[f.type]) for f in schema.fields])
    return pa.Table.from_pylist([{n: r.get(n) for n in schema.names} for r in rows], schema=arrow)


TS = pa.timestamp("us", tz="UTC")
_RAW_TYPES = {**ARROW_TYPES, FieldType.TIMESTAMP: TS}

Copy = tuple[int, str, dict[str, Any]]  # (ingested_at µs, payload hash, row)


def raw_events_table(schema: EventSchema, copies: Sequence[Copy]) -> pa.Table:
    """Stored copies in the shape of ``raw_events``: one column per declared field (timestamps as UTC
    timestamps), ``ingested_at``, ``payload_hash`` and the ``event_date`` partition."""
    cols: dict[str, pa.Array] = {
        f.name: pa.array([c[2].get(f.name) for c in copies], _RAW_TYPES[f.type]) for f in schema.fields
    }
    cols["ingested_at"] = pa.array([c[0] for c in copies], pa.int64()).cast(TS)
    cols["payload_hash"] = pa.array([c[1] for c in copies], pa.string())
    cols["event_date"] = cols[schema.timestamp_field].cast(pa.date32())
    return pa.table(cols)
