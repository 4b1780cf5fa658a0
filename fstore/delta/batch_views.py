"""Delta table ``batch_views``: the durable record of every batch view the nightly job published.

Redis holds only rebuildable state (docs/design.md §7); this small append-only table is what survives it: one
row per published version (version, cutover C, run date, when). The serving layer reads it to tell "no
batch view was ever published" (speed tiles alone are the answer) from "Redis lost the batch view" (an
answer would undercount: 503 until ``fstore repair`` reloads it), and ``fstore repair`` reads it to know
which Delta tile partitions to load.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import write_deltalake

from fstore.core.timeutil import to_micros
from fstore.delta.raw_log import TS, open_table, read_table

SCHEMA = pa.schema(
    [
        pa.field("version", pa.string(), nullable=False),
        pa.field("cutover", TS, nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
        pa.field("published_at", TS, nullable=False),
    ]
)


@dataclass(frozen=True)
class PublishedView:
    """One published batch view."""

    version: str
    cutover: int  # UTC epoch µs
    run_date: date
    published_at: int  # UTC epoch µs


def record(uri: str, view: PublishedView) -> None:
    """Append the record of a publication (one Delta commit)."""
    table = pa.Table.from_arrays(
        [
            pa.array([view.version], pa.string()),
            pa.array([view.cutover], pa.int64()).cast(TS),
            pa.array([view.run_date], pa.date32()),
            pa.array([view.published_at], pa.int64()).cast(TS),
        ],
        schema=SCHEMA,
    )
    write_deltalake(uri, table, mode="append")


def latest(uri: str) -> PublishedView | None:
    """The serving publication: the latest cutover (the latest publication among equal cutovers), or
    ``None`` when nothing was ever published (or the table does not exist)."""
    table = read_table(uri) if open_table(uri) is not None else SCHEMA.empty_table()
    if table.num_rows == 0:
        return None
    order = pc.sort_indices(table, [("cutover", "descending"), ("published_at", "descending")])
    row = table.take(order.slice(0, 1)).to_pylist()[0]
    return PublishedView(
        row["version"],
        to_micros(row["cutover"]),
        row["run_date"],
        to_micros(row["published_at"]),
    )
