"""Delta tables of the master dataset: ``raw_events`` and ``dead_letters`` (docs/design.md §1, §7).

``raw_events`` is append-only and partitioned by ``event_date`` (UTC day of ``event_time``). Each row is
one ingested copy of a valid event with ``ingested_at`` and ``payload_hash``: ``ingested_at`` is the
ingestion instant of the copy's batch plus the copy's position in it (µs), so copies of one writer never
tie and the first copy in arrival order is the first ingested; every reader applies the
first-ingested-wins rule (:mod:`fstore.core.dedupe`), ``payload_hash`` breaking ties between writers.
``dead_letters`` keeps rejected messages with their reason (personal data masked) so nothing invalid
vanishes.

``raw_events_superseded`` (beside ``raw_events``, partitioned by ``event_date`` too) lists the
``(event_id, event_date)`` pairs whose copies lost to a copy stored earlier on *another* day, so that a
reader of some partitions drops them without reading the others (:mod:`fstore.delta.event_index` writes
it, before the rows it covers).

Both the backfill path (``fstore ingest``) and the stream job's raw sink write through this module.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import date

import pyarrow as pa
import pyarrow.compute as pc
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from fstore.core.events import Event
from fstore.core.timeutil import to_date

TS = pa.timestamp("us", tz="UTC")

RAW_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("event_type", pa.string(), nullable=False),
        pa.field("user_id", pa.string(), nullable=False),
        pa.field("product_id", pa.string()),
        pa.field("event_time", TS, nullable=False),
        pa.field("price", pa.float64()),
        pa.field("quantity", pa.int32(), nullable=False),
        pa.field("session_id", pa.string()),
        pa.field("ingested_at", TS, nullable=False),
        pa.field("payload_hash", pa.string(), nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
    ]
)

DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("ingested_at", TS, nullable=False),
        pa.field("ingest_date", pa.date32(), nullable=False),
    ]
)


def events_table(events: Sequence[Event], hashes: Sequence[str], ingested_at: Sequence[int]) -> pa.Table:
    """Arrow table in the ``raw_events`` schema (``ingested_at`` per row, UTC epoch microseconds)."""
    if not events:
        return RAW_SCHEMA.empty_table()
    (event_id, event_type, user_id, product_id, event_time, price, quantity, session_id) = (
        [e[i] for e in events] for i in range(8)
    )
    times = pa.array(event_time, pa.int64()).cast(TS)
    return pa.Table.from_arrays(
        [
            pa.array(event_id, pa.string()),
            pa.array(event_type, pa.string()),
            pa.array(user_id, pa.string()),
            pa.array(product_id, pa.string()),
            times,
            pa.array(price, pa.float64()),
            pa.array(quantity, pa.int32()),
            pa.array(session_id, pa.string()),
            pa.array(ingested_at, pa.int64()).cast(TS),
            pa.array(hashes, pa.string()),
            pc.cast(times, pa.date32()),
        ],
        schema=RAW_SCHEMA,
    )


def append_raw(uri: str, table: pa.Table) -> None:
    """Append rows to ``raw_events`` (creates the table on first use). One Delta commit."""
    if table.num_rows:
        write_deltalake(uri, table, mode="append", partition_by=["event_date"])


def dead_letters_table(payloads: Sequence[bytes], reasons: Sequence[str], source: str, ingested_at: int) -> pa.Table:
    """Arrow table in the ``dead_letters`` schema."""
    at = pa.array([ingested_at] * len(payloads), pa.int64()).cast(TS)
    return pa.Table.from_arrays(
        [
            pa.array(payloads, pa.binary()),
            pa.array(reasons, pa.string()),
            pa.array([source] * len(payloads), pa.string()),
            at,
            pc.cast(at, pa.date32()),
        ],
        schema=DEAD_LETTER_SCHEMA,
    )


def append_dead_letters(uri: str, table: pa.Table) -> None:
    """Append rejected messages to ``dead_letters``. One Delta commit."""
    if table.num_rows:
        write_deltalake(uri, table, mode="append", partition_by=["ingest_date"])


class CommitConflict(Exception):
    """Another writer committed to the table after the version a conditional append was based on."""


def append_on(uri: str, snapshot: DeltaTable | None, table: pa.Table, partition_by: list[str]) -> None:
    """Append ``table`` in one commit **only on top of** ``snapshot`` (the version the writer checked its rows
    against): if anyone committed after it, nothing is written and :class:`CommitConflict` is raised, so the
    writer checks again (optimistic concurrency; delta-rs would otherwise retry the append blindly).
    ``snapshot`` ``None``: the table did not exist; creating it races the same way."""
    if not table.num_rows:
        return
    props = CommitProperties(max_commit_retries=0)
    try:
        if snapshot is None:
            write_deltalake(uri, table, mode="error", partition_by=partition_by, commit_properties=props)
        else:
            write_deltalake(snapshot, table, mode="append", partition_by=partition_by, commit_properties=props)
    except CommitFailedError as exc:
        raise CommitConflict(str(exc)) from exc
    except DeltaError as exc:  # mode="error": the table was created meanwhile
        if snapshot is None and "exists" in str(exc).lower():
            raise CommitConflict(str(exc)) from exc
        raise


def append_once(uri: str, table: pa.Table, partition_by: list[str], key: str) -> bool:
    """Append ``table`` unless an append with the same idempotency ``key`` was committed before (a Delta
    application transaction: app id ``key``, version 1, in the same commit). Concurrent appends with one key
    commit once. Returns whether this call wrote the rows."""
    for _ in range(50):
        current = open_table(uri)
        if current is not None and (current.transaction_version(key) or 0) >= 1:
            return False
        props = CommitProperties(max_commit_retries=0, app_transactions=[Transaction(key, 1)])
        try:
            write_deltalake(
                current if current is not None else uri,
                table,
                mode="append" if current else "error",
                partition_by=partition_by,
                commit_properties=props,
            )
            return True
        except CommitFailedError:
            continue
        except DeltaError as exc:
            if current is None and "exists" in str(exc).lower():
                continue
            raise
    raise RuntimeError(f"{uri}: 50 commits in a row lost to concurrent writers")


SUPERSEDED_SCHEMA = pa.schema(
    [
        pa.field("event_id", pa.string(), nullable=False),
        pa.field("noted_at", TS, nullable=False),
        pa.field("event_date", pa.date32(), nullable=False),
    ]
)


def superseded_uri(raw_uri: str) -> str:
    """Location of the superseded-pairs table of a ``raw_events`` table (its sibling
    ``raw_events_superseded``)."""
    return raw_uri.rstrip("/") + "_superseded"


def superseded_table(pairs: Sequence[tuple[str, int]], noted_at: int) -> pa.Table:
    """Arrow table in the ``raw_events_superseded`` schema from ``(event_id, UTC day number)`` pairs."""
    return pa.Table.from_arrays(
        [
            pa.array([p[0] for p in pairs], pa.string()),
            pa.array([noted_at] * len(pairs), pa.int64()).cast(TS),
            pa.array([p[1] for p in pairs], pa.int32()).cast(pa.date32()),
        ],
        schema=SUPERSEDED_SCHEMA,
    )


def append_superseded(uri: str, table: pa.Table) -> None:
    """Append superseded pairs (one Delta commit; appending a pair twice is harmless)."""
    if table.num_rows:
        write_deltalake(uri, table, mode="append", partition_by=["event_date"])


def superseded_on(uri: str, first: date, last: date) -> pa.Table:
    """Superseded ``(event_id, event_date)`` pairs of the partitions ``first`` to ``last`` (partition-pruned,
    distinct); empty when there is no such table."""
    dt = open_table(uri)
    if dt is None:
        return SUPERSEDED_SCHEMA.empty_table().select(["event_id", "event_date"])
    flt = (pc.field("event_date") >= pa.scalar(first, pa.date32())) & (
        pc.field("event_date") <= pa.scalar(last, pa.date32())
    )
    pairs = dt.to_pyarrow_dataset().to_table(columns=["event_id", "event_date"], filter=flt)
    return pairs.group_by(["event_id", "event_date"], use_threads=False).aggregate([]) if pairs.num_rows else pairs


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri``, or ``None`` if none exists yet."""
    try:
        return DeltaTable(uri)
    except TableNotFoundError:
        return None


def read_table(uri: str, columns: list[str] | None = None, filter: pc.Expression | None = None) -> pa.Table:
    """Read (part of) a Delta table into Arrow; empty when the table does not exist."""
    dt = open_table(uri)
    if dt is None:
        name = uri.rstrip("/")
        schema = (
            RAW_SCHEMA
            if name.endswith("raw_events")
            else SUPERSEDED_SCHEMA
            if name.endswith("_superseded")
            else DEAD_LETTER_SCHEMA
        )
        empty = schema.empty_table()
        return empty.select(columns) if columns else empty
    return dt.to_pyarrow_dataset().to_table(columns=columns, filter=filter)


def event_ids_on(uri: str, dates: Iterable[date]) -> dict[date, set[str]]:
    """event_ids already in ``raw_events``, per event_date, for the given dates (partition-pruned)."""
    wanted = sorted(set(dates))
    out: dict[date, set[str]] = {d: set() for d in wanted}
    if not wanted:
        return out
    tbl = read_table(uri, ["event_id", "event_date"], pc.field("event_date").isin(wanted))
    for d, ids in zip(tbl.column("event_date").to_pylist(), tbl.column("event_id").to_pylist(), strict=True):
        out[d].add(ids)
    return out


def date_range(event_range: tuple[int, int] | None) -> tuple[date, date] | None:
    """``event_date`` partitions ``(first, last)`` that hold events of ``[start, end)``."""
    if event_range is None:
        return None
    start, end = event_range
    return to_date(start), to_date(max(start, end - 1))
