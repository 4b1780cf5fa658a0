"""De-duplication by event_id (docs/design.md §2): the first ingested copy wins.

Copies are ordered by ``(ingested_at, payload_hash)``: the earliest ingestion wins and, between copies
ingested at the same instant, the smaller hash of the original bytes does. Every reader of
``raw_events`` applies this rule, so the at-least-once raw sink never double counts.

A reader that reads some ``event_date`` partitions only first drops the copies of the superseded
``(event_id, event_date)`` pairs of those days (:func:`drop_superseded`): copies that lost to a copy on
another day, which the reader does not see.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core.timeutil import DAY


class Ingested(Protocol):
    """A stored copy of an event."""

    @property
    def event_id(self) -> str: ...

    @property
    def ingested_at(self) -> int: ...

    @property
    def payload_hash(self) -> str: ...


T = TypeVar("T", bound=Ingested)


def precedence(copy: Ingested) -> tuple[int, str]:
    """Sort key: smaller wins."""
    return (copy.ingested_at, copy.payload_hash)


def first_ingested(copies: Iterable[T]) -> dict[str, T]:
    """The winning copy per event_id."""
    best: dict[str, T] = {}
    for c in copies:
        cur = best.get(c.event_id)
        if cur is None or precedence(c) < precedence(cur):
            best[c.event_id] = c
    return best


def first_ingested_arrow(table: pa.Table, id_field: str = "event_id") -> pa.Table:
    """Vectorised :func:`first_ingested` over an Arrow table of ``raw_events`` rows.

    The table needs ``id_field`` (the plan's id field), ``ingested_at`` and ``payload_hash``; the result
    keeps one row per id (the winner), ordered by id.
    """
    if table.num_rows == 0:
        return table
    ordered = table.sort_by([(id_field, "ascending"), ("ingested_at", "ascending"), ("payload_hash", "ascending")])
    ids = ordered.column(id_field).combine_chunks()
    if len(ids) == 1:
        return ordered
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first])
    return ordered.filter(keep)


def drop_superseded(
    raw: pa.Table, superseded: pa.Table, id_field: str = "event_id", timestamp_field: str = "event_time"
) -> pa.Table:
    """``raw`` without the copies of superseded ``(event_id, event_date)`` pairs.

    Args:
        raw: ``raw_events`` rows with the id field (plain or dictionary strings) and the timestamp field.
        superseded: pairs with ``event_id`` and ``event_date`` (date32), normally few.
        id_field: the plan's id field.
        timestamp_field: the plan's timestamp field.

    Returns:
        ``raw`` itself when nothing is dropped, else the remaining rows in their order.
    """
    if superseded.num_rows == 0 or raw.num_rows == 0:
        return raw
    ids = raw.column(id_field)
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(pa.string())
    hit = pc.is_in(ids, value_set=superseded.column("event_id").combine_chunks())
    rows = np.flatnonzero(hit.to_numpy(zero_copy_only=False))
    if not len(rows):
        return raw
    pairs = set(
        zip(
            superseded.column("event_id").to_pylist(),
            pc.cast(superseded.column("event_date"), pa.int32()).to_pylist(),
            strict=True,
        )
    )
    at = pa.array(rows)
    days = (raw.column(timestamp_field).take(at).cast(pa.int64()).to_numpy() // DAY).tolist()
    keep = np.ones(raw.num_rows, bool)
    for row, eid, day in zip(rows.tolist(), ids.take(at).to_pylist(), days, strict=True):
        if (eid, day) in pairs:
            keep[row] = False
    return raw if keep.all() else raw.filter(pa.array(keep))
