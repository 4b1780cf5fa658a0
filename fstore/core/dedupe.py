"""De-duplication by event_id (docs/design.md §2): the first ingested copy wins.

Copies are ordered by ``(ingested_at, payload_hash)``: the earliest ingestion wins and, between copies
ingested at the same instant, the smaller hash of the original bytes does. Every reader of
``raw_events`` applies this rule, so the at-least-once raw sink never double counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol, TypeVar

import pyarrow as pa
import pyarrow.compute as pc


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


def first_ingested_arrow(table: pa.Table) -> pa.Table:
    """Vectorised :func:`first_ingested` over an Arrow table of ``raw_events`` rows.

    The table needs ``event_id``, ``ingested_at`` and ``payload_hash``; the result keeps one row per
    event_id (the winner), ordered by event_id.
    """
    if table.num_rows == 0:
        return table
    ordered = table.sort_by([("event_id", "ascending"), ("ingested_at", "ascending"), ("payload_hash", "ascending")])
    ids = ordered.column("event_id").combine_chunks()
    if len(ids) == 1:
        return ordered
    first = pc.not_equal(ids.slice(1), ids.slice(0, len(ids) - 1))
    keep = pa.concat_arrays([pa.array([True]), first])
    return ordered.filter(keep)
