"""Delta tables under test: an engine-neutral content hash, and reading a table through delta-spark."""

from __future__ import annotations

import hashlib
import math
from datetime import UTC, date, datetime
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fstore.delta import raw_log


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


def batch_tile_rows(data_dir: str, view: str, key: str, run_date: date) -> dict[tuple[Any, ...], tuple[Any, ...]]:
    """The batch job's ``tiles_<view>`` rows of ``run_date``: ``(entity, size, tile start µs, measure) →
    (count, sum, min, max)``, the shape of :func:`tests.support.bruteforce.batch_tiles`."""
    flt = pc.field("run_date") == pa.scalar(run_date, pa.date32())
    return {
        (r[key], r["size"], int(r["tile_start"].timestamp() * 1_000_000), r["measure"]): (
            r["count"],
            r["sum"],
            r["min"],
            r["max"],
        )
        for r in raw_log.read_table(f"{data_dir}/tiles_{view}", filter=flt).to_pylist()
    }
