"""Delta tables of the master dataset: ``raw_events`` and ``dead_letters`` (docs/design.md §1, §7).

``raw_events`` is append-only and partitioned by ``event_date`` (UTC day of the schema's timestamp field).
Its columns are the plan's event fields (:func:`raw_schema`), then fstore's own three. Each row is one
ingested copy of a valid event with ``ingested_at`` and ``payload_hash``: ``ingested_at`` is the
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

Schema evolution (docs/design.md §2): :func:`append_raw` merges the schema of what it writes into the
table's. A field added to the event schema adds a nullable column (older rows read null); a field removed
from it keeps its column (history stays readable) and new rows carry null there.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from datetime import date
from operator import itemgetter
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError, DeltaError, TableNotFoundError

from fstore.core.event_schema import EventSchema, FieldType
from fstore.core.events import Row
from fstore.core.timeutil import day_start, to_date

TS = pa.timestamp("us", tz="UTC")

#: Arrow types of the event field types in ``raw_events`` (INT is 32-bit, LONG 64-bit: what validation bounds
#: them to).
ARROW_TYPES = {
    FieldType.STRING: pa.string(),
    FieldType.INT: pa.int32(),
    FieldType.LONG: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOL: pa.bool_(),
    FieldType.TIMESTAMP: TS,
}
#: fstore's own columns, after the event fields.
OWN_COLUMNS = (
    pa.field("ingested_at", TS, nullable=False),
    pa.field("payload_hash", pa.string(), nullable=False),
    pa.field("event_date", pa.date32(), nullable=False),
)


def raw_schema(schema: EventSchema) -> pa.Schema:
    """The ``raw_events`` columns of an event schema: every field in declaration order (not null when the
    field is required or has a default), then ``ingested_at``, ``payload_hash``, ``event_date``."""
    own = {f.name for f in OWN_COLUMNS}
    clash = [f.name for f in schema.fields if f.name in own]
    if clash:
        raise ValueError(f"event field(s) {clash} clash with raw_events' own columns {sorted(own)}: rename them")
    fields = [
        pa.field(f.name, ARROW_TYPES[f.type], nullable=not (f.required or f.default is not None)) for f in schema.fields
    ]
    return pa.schema([*fields, *OWN_COLUMNS])


def rows_table(schema: EventSchema, rows: Sequence[Row], hashes: Sequence[str], ingested_at: Iterable[int]) -> pa.Table:
    """Arrow table in the ``raw_events`` schema of ``schema`` from normalised rows (timestamps in UTC epoch
    µs; ``ingested_at`` per row). Raises on a value the table cannot hold."""
    target = raw_schema(schema)
    if not rows:
        return target.empty_table()
    arrays = []
    for f, values in zip(schema.fields, _columns(schema.names, rows), strict=True):
        if f.type is FieldType.TIMESTAMP:
            arrays.append(pa.array(values, pa.int64()).cast(TS))
        else:
            arrays.append(pa.array(values, ARROW_TYPES[f.type]))
    times = arrays[schema.names.index(schema.timestamp_field)]
    arrays += [
        pa.array(list(ingested_at), pa.int64()).cast(TS),
        pa.array(hashes, pa.string()),
        pc.cast(times, pa.date32()),
    ]
    return pa.Table.from_arrays(arrays, schema=target)


def _columns(names: Sequence[str], rows: Sequence[Row]) -> Sequence[Sequence[Any]]:
    """The values of each named field across ``rows`` (``None`` where a row lacks the field), taken in C: one
    ``map(itemgetter(field), rows)`` per field instead of a ``dict.get`` per row and field (a third of the
    stream worker's Arrow building), and no tuple per row (transposing rows through ``itemgetter(*names)``
    made one, 10,000 tracked objects per batch that set off most of the worker's garbage-collector passes).
    A row that lacks a field sends the whole batch to the per-field path."""
    try:
        return [list(map(itemgetter(n), rows)) for n in names]
    except KeyError:
        return [[r.get(n) for r in rows] for n in names]


def sample_row(schema: EventSchema) -> Row:
    """A row that fits ``schema``'s columns (warms Arrow's lazy imports up)."""
    fill = {
        FieldType.STRING: "x",
        FieldType.INT: 1,
        FieldType.LONG: 1,
        FieldType.FLOAT: 0.0,
        FieldType.BOOL: False,
        FieldType.TIMESTAMP: 0,
    }
    return {f.name: fill[f.type] for f in schema.fields}


DEAD_LETTER_SCHEMA = pa.schema(
    [
        pa.field("payload", pa.binary(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("ingested_at", TS, nullable=False),
        pa.field("ingest_date", pa.date32(), nullable=False),
    ]
)


def append_raw(uri: str, table: pa.Table, schema: EventSchema | None = None) -> None:
    """Append rows to ``raw_events`` (creates the table on first use). One Delta commit.

    The table's schema evolves with the event schema (module docstring): columns the rows lack are
    written as nulls, new columns are added (nullable). ``schema`` is the rows' event schema, for the
    error message only.
    """
    if not table.num_rows:
        return
    dt = open_table(uri)
    if dt is None:
        write_deltalake(uri, table, mode="append", partition_by=["event_date"])
        return
    table, added = conform(table, dt.schema().to_arrow(), uri)
    write_deltalake(dt, table, mode="append", partition_by=["event_date"], schema_mode="merge" if added else None)


def conform(table: pa.Table, current: Any, uri: str) -> tuple[pa.Table, bool]:
    """``table`` in the column order of the table's ``current`` schema, with its missing columns as nulls
    and its new ones (made nullable) last; and whether it adds columns."""
    current = pa.schema(current)
    names = set(table.schema.names)
    columns, fields = [], []
    for f in current:
        if f.name in names:
            columns.append(table.column(f.name))
            fields.append(table.schema.field(f.name).with_nullable(f.nullable))
        else:  # a field removed from the event schema: its column stays, new rows null
            if not f.nullable:
                raise ValueError(
                    f"{uri}: column {f.name!r} is NOT NULL in raw_events but the event schema no longer has it; "
                    "keep the field (optional) or start a new table"
                )
            columns.append(pa.nulls(table.num_rows, _delta_type(f.type)))
            fields.append(pa.field(f.name, _delta_type(f.type)))
    known = set(current.names)
    extra = [f for f in table.schema if f.name not in known]
    for f in extra:  # a field added to the event schema: a new nullable column, older rows null
        columns.append(table.column(f.name))
        fields.append(f.with_nullable(True))
    return pa.Table.from_arrays(columns, schema=pa.schema(fields)), bool(extra)


def _delta_type(t: pa.DataType) -> pa.DataType:
    """The Arrow type to write for a column as Delta reports it (delta-rs reads strings back as
    ``string_view``/``large_string``; write them as ``string``)."""
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    return t


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
        else:  # the table's schema evolves with the event schema, as in append_raw
            table, added = conform(table, snapshot.schema().to_arrow(), uri)
            write_deltalake(
                snapshot,
                table,
                mode="append",
                partition_by=partition_by,
                commit_properties=props,
                schema_mode="merge" if added else None,
            )
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


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The filesystem and root path of a table location (a local path or an object-store URI)."""
    if "://" not in uri:
        return pafs.LocalFileSystem(), os.path.abspath(uri)
    fs, root = pafs.FileSystem.from_uri(uri)
    return fs, root.rstrip("/")


def open_table(uri: str) -> DeltaTable | None:
    """The Delta table at ``uri``, or ``None`` if none exists yet."""
    try:
        return DeltaTable(uri)
    except TableNotFoundError:
        return None


def read_table(
    uri: str,
    columns: list[str] | None = None,
    filter: pc.Expression | None = None,
    schema: EventSchema | None = None,
) -> pa.Table:
    """Read (part of) a Delta table into Arrow; empty when the table does not exist (``raw_events``' columns
    then take their types from the event ``schema``; without it they are of Arrow's null type)."""
    dt = open_table(uri)
    if dt is None:
        name = uri.rstrip("/")
        if name.endswith("raw_events") and schema is None:
            return pa.schema([(c, pa.null()) for c in columns or ()]).empty_table()
        empty_schema = (
            raw_schema(schema)  # type: ignore[arg-type]
            if name.endswith("raw_events")
            else SUPERSEDED_SCHEMA
            if name.endswith("_superseded")
            else DEAD_LETTER_SCHEMA
        )
        empty = empty_schema.empty_table()
        return empty.select(columns) if columns else empty
    return dt.to_pyarrow_dataset().to_table(columns=columns, filter=filter)


def event_ids_on(uri: str, dates: Iterable[date], id_column: str = "event_id") -> dict[date, set[str]]:
    """Ids (column ``id_column``, the plan's id field) already in ``raw_events``, per event_date, for the
    given dates (partition-pruned)."""
    wanted = sorted(set(dates))
    out: dict[date, set[str]] = {d: set() for d in wanted}
    if not wanted:
        return out
    if open_table(uri) is None:
        return out
    tbl = read_table(uri, [id_column, "event_date"], pc.field("event_date").isin(wanted))
    for d, ids in zip(tbl.column("event_date").to_pylist(), tbl.column(id_column).to_pylist(), strict=True):
        out[d].add(ids)
    return out


def date_range(event_range: tuple[int, int] | None) -> tuple[date, date] | None:
    """``event_date`` partitions ``(first, last)`` that hold events of ``[start, end)``, within the calendar
    (a row of 0001-01-02 has a 7-day window that starts before any date)."""
    if event_range is None:
        return None
    start, end = event_range
    first, last = day_start(date.min), day_start(date.max)
    start = min(max(start, first), last)
    return to_date(start), to_date(min(max(start, end - 1), last))
