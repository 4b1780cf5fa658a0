"""Delta tables under test: an engine-neutral content hash, and reading a table through delta-spark."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa


def _cell(v: Any) -> str:
    """One value as text that does not depend on the reader (aware/naive UTC datetimes, NaN/None)."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "null"
    if isinstance(v, datetime):
        return (v.astimezone(UTC) if v.tzinfo else v.replace(tzinfo=UTC)).isoformat()
    if isinstance(v, date):
        return v.isoformat()
    if isinstance(v, bytes):
        return v.hex()
    return repr(v)


def content_hash(table: pa.Table) -> str:
    """SHA-256 of the rows (as sorted ``column=value`` lists) in sorted order: equal for equal contents,
    whatever the row order, the column order or the engine that read them."""
    rows = sorted(repr(sorted((k, _cell(v)) for k, v in r.items())) for r in table.to_pylist())
    return hashlib.sha256("\n".join(rows).encode()).hexdigest()


def spark_read(spark: Any, uri: str, where: str | None = None) -> pa.Table:
    """The table at ``uri`` read through delta-spark (``where``: an optional SQL filter)."""
    df = spark.read.format("delta").load(uri)
    table: pa.Table = (df.where(where) if where else df).toArrow()
    return table
