"""Training data from ``raw_events`` (docs/design.md §6): the Delta adapter of the point-in-time engine.

:func:`get_historical_features` reads only the ``raw_events`` partitions a request can touch
(``event_date`` from ``min t - longest window - largest hop`` to ``max t``), de-duplicates them (first
ingested copy wins) and hands them to :func:`fstore.core.pit.point_in_time`. ``engine="spark"`` runs
the same core on Spark (:mod:`fstore.offline.spark`). The views, measures and event fields come from the
compiled plan the caller passes (the process's: :func:`fstore.plan_source.current_plan`): ``raw_events``
columns are the schema's fields, a field an older file lacks reads as null.

Example::

    from fstore.offline.local import get_historical_features
    train = get_historical_features(entity_df, ["my_view", "other_view:some_feature"], plan=current_plan())
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from fstore.core import pit
from fstore.core.dedupe import drop_superseded
from fstore.core.event_schema import EventSchema, FieldType
from fstore.core.pit_kernels import Bool
from fstore.core.plan import Plan
from fstore.delta import raw_log, raw_winners
from fstore.delta.event_index import id_hashes

log = logging.getLogger(__name__)
#: ``raw_events`` paths already warned about as missing (the warning would repeat on every request otherwise).
_MISSING_WARNED: set[str] = set()

Engine = Literal["local", "spark"]
TS = pa.timestamp("us", tz="UTC")


@dataclass
class Timings:
    """Seconds spent per stage of the last call (for benchmarks and logs): wall clock, and the process's CPU
    seconds (every thread's) in ``*_cpu``."""

    read: float = 0.0
    dedupe: float = 0.0
    join: float = 0.0
    read_cpu: float = 0.0
    dedupe_cpu: float = 0.0
    join_cpu: float = 0.0
    rows_read: int = 0
    partitions: list[date] = field(default_factory=list)
    #: days read from their winners file (:mod:`fstore.delta.raw_winners`) instead of ``raw_events``
    settled: list[date] = field(default_factory=list)


def raw_events_uri(data_dir: str | None = None) -> str:
    """Location of ``raw_events`` under ``data_dir`` (default: ``FSTORE_DATA_DIR`` from the settings)."""
    if data_dir is None:
        from fstore.settings import get_settings

        return get_settings().table("raw_events")
    return f"{data_dir.rstrip('/')}/raw_events"


def _in_time_order(raw: pa.Table, ts: str) -> pa.Table:
    """``raw`` with its record batches (zero-copy) ordered by their first timestamp.

    Files come in log order, not date order; day files written in time order then make one sorted run,
    which the engine sorts faster (:func:`fstore.core.pit_kernels.SortedMeasure`). Rows are unchanged.
    """
    batches = [b for b in raw.to_batches() if b.num_rows]
    if len(batches) < 2:
        return raw
    at = raw.schema.get_field_index(ts)
    firsts = [b.column(at)[0].value for b in batches]
    order = sorted(range(len(batches)), key=firsts.__getitem__)
    return pa.Table.from_batches([batches[i] for i in order], schema=raw.schema)


def _without_superseded(raw: pa.Table, superseded: pa.Table, schema: EventSchema) -> pa.Table:
    """:func:`fstore.core.dedupe.drop_superseded` for a table whose id and time fields are the plan's."""
    if superseded.num_rows == 0 or raw.num_rows == 0:
        return raw
    probe = pa.table(
        {
            "event_id": raw.column(schema.id_field),
            "event_time": raw.column(schema.timestamp_field),
            "__row": np.arange(raw.num_rows, dtype=np.int64),
        }
    )
    left = drop_superseded(probe, superseded)
    if left.num_rows == raw.num_rows:
        return raw
    keep = np.zeros(raw.num_rows, bool)
    keep[left.column("__row").to_numpy()] = True
    return raw.filter(pa.array(keep))  # chunk by chunk: `take` would unify the chunks' dictionaries


def _empty(schema: EventSchema) -> pa.Table:
    return pa.table({schema.timestamp_field: pa.array([], TS)})


@dataclass
class _Copies:
    """What a request reads: copies of ``raw_events`` (days without a current winners file) and what resolving
    their ties needs, plus the winners read from ``raw_events_winners`` (:mod:`fstore.delta.raw_winners`)."""

    raw: pa.Table
    schema: EventSchema
    dataset: ds.Dataset
    partitions: pc.Expression
    superseded: pa.Table
    event_range: tuple[int, int]
    settled: pa.Table | None = None

    def table(self, columns: Sequence[str]) -> pa.Table:
        """The rows the request sees, ``columns`` of them: the settled winners, then the raw copies (the order
        :meth:`winners` masks)."""
        if self.settled is None:
            return self.raw.select(columns)
        if self.raw.num_rows == 0:
            return self.settled.select(columns)
        return pa.concat_tables([self.settled.select(columns), self.raw.select(columns)])

    def winners(self, timings: Timings) -> Bool:
        """Which rows of :meth:`table` count: every settled winner, the first ingested copy of each event id
        read from ``raw_events``; both only inside the range.

        Copies whose earliest ``ingested_at`` ties (other writers, same instant) are decided by their
        ``payload_hash``, read for those ids only; the winner's row in :attr:`raw` is the copy with the
        winner's values (copies with equal values give equal features, so any of them will do).
        """
        began, began_cpu = time.perf_counter(), time.process_time()
        raw, schema = self.raw, self.schema
        keep, tied = pit.first_ingested_mask(raw, schema.id_field)
        if len(tied):
            copies = self.dataset.to_table(
                columns=[*raw.column_names, "payload_hash"],
                filter=self.partitions & pc.field(schema.id_field).isin(tied),
            )
            winners = pit.dedupe(_without_superseded(copies, self.superseded, schema), schema.id_field)
            keep[_rows_of(raw, winners, schema.id_field)] = True
        if self.settled is not None:
            keep = np.concatenate([np.ones(self.settled.num_rows, bool), keep])
        t = self.table([schema.timestamp_field]).column(0).cast(pa.int64()).to_numpy()
        keep &= (t >= self.event_range[0]) & (t < self.event_range[1])
        timings.dedupe, timings.dedupe_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        return keep


def _days_between(first: date, last: date) -> list[date]:
    return [date.fromordinal(d) for d in range(first.toordinal(), last.toordinal() + 1)]


def _no_rows(dataset: ds.Dataset, columns: list[str]) -> pa.Table:
    return dataset.schema.empty_table().select(columns)


def _read_copies(
    raw_uri: str,
    schema: EventSchema,
    fields: Sequence[str],
    event_range: tuple[int, int] | None,
    timings: Timings,
    winners: bool = True,
    ids: bool = False,
) -> _Copies | None:
    """The stored copies of the partitions of ``event_range`` (see :func:`read_events`), or ``None`` when
    there is nothing to read. With ``winners``, a day whose winners file is current
    (:func:`fstore.delta.raw_winners.usable`) is read from it instead (its winners only, no de-duplication);
    if a copy read from ``raw_events`` shares its event id with such a winner (unmarked copies on two days),
    everything is read from ``raw_events``, which de-duplicates across the range."""
    days = raw_log.date_range(event_range)
    began, began_cpu = time.perf_counter(), time.process_time()
    if days is not None:
        timings.partitions = [days[0], days[1]]
    table = raw_log.open_table(raw_uri) if days is not None else None
    if table is None and days is not None and raw_uri not in _MISSING_WARNED:
        # loud, once per path and process: a wrong data dir looks like a store with no events
        _MISSING_WARNED.add(raw_uri)
        log.warning(
            "no raw_events table at %s: every value is that of no events (0 or null); if events were ingested, "
            "check FSTORE_DATA_DIR (or the offline store's data_dir)",
            raw_uri,
        )
    if table is None or days is None or event_range is None:  # nothing asked for, or nothing stored yet
        timings.read, timings.read_cpu = time.perf_counter() - began, time.process_time() - began_cpu
        return None
    strings = {f.name for f in schema.fields if f.type is FieldType.STRING and f.name != schema.id_field}
    dataset = table.to_pyarrow_dataset(parquet_read_options=ds.ParquetReadOptions(dictionary_columns=strings))
    stored = set(dataset.schema.names)
    wanted = dict.fromkeys([*fields, schema.timestamp_field, schema.id_field, "ingested_at"])
    flt = (pc.field("event_date") >= pa.scalar(days[0], pa.date32())) & (
        pc.field("event_date") <= pa.scalar(days[1], pa.date32())
    )
    settled: dict[date, str] = {}
    rest: list[date] = []
    if winners:
        marks = raw_log.open_table(raw_log.superseded_uri(raw_uri))
        settled = raw_winners.usable(raw_uri, raw_winners.fingerprints(table, marks, _days_between(*days)))
    raw_flt = flt
    if settled:  # a positive list of days: the Delta dataset prunes partitions by it (a negation scans them)
        rest = [d for d in _days_between(*days) if d not in settled]
        raw_flt = pc.field("event_date").isin(pa.array(rest, pa.date32()))
    # a field the table does not have yet (added to the schema, no event stored with it) reads as null
    columns = [c for c in wanted if c in stored]
    raw = dataset.to_table(columns=columns, filter=raw_flt) if raw_flt is flt or rest else _no_rows(dataset, columns)
    superseded = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), days[0], days[1])
    raw = _in_time_order(_without_superseded(raw, superseded, schema), schema.timestamp_field)
    kept: pa.Table | None = None
    if settled:
        columns = [c for c in wanted if c in stored and c != "ingested_at" and (ids or c != schema.id_field)]
        try:
            files = raw_winners.dataset(
                [settled[d] for d in sorted(settled)],
                raw_winners.winners_uri(raw_uri),
                dataset.schema.append(pa.field(raw_winners.ID_HASH, pa.int64())),
                strings,
            )
            kept = files.to_table(
                columns=columns + ([raw_winners.ID_HASH] if raw.num_rows else []),
                memory_pool=pa.system_memory_pool(),  # cheaper than the default pool on a first large read
            )
        except (OSError, pa.ArrowException) as exc:  # removed by a compaction meanwhile, or unreadable
            log.warning("raw_events_winners unreadable (%s): reading raw_events instead", exc)
            return _read_copies(raw_uri, schema, fields, event_range, timings, winners=False, ids=ids)
        if raw.num_rows:
            hashes = id_hashes(raw.column(schema.id_field)).view(np.int64)
            if pc.any(pc.is_in(kept.column(raw_winners.ID_HASH), value_set=pa.array(hashes))).as_py():
                return _read_copies(raw_uri, schema, fields, event_range, timings, winners=False, ids=ids)
            kept = kept.drop_columns([raw_winners.ID_HASH])
    timings.read, timings.read_cpu = time.perf_counter() - began, time.process_time() - began_cpu
    timings.rows_read = raw.num_rows + (kept.num_rows if kept is not None else 0)
    timings.settled = sorted(settled)
    return _Copies(raw, schema, dataset, raw_flt, superseded, event_range, kept)


def _rows_of(raw: pa.Table, winners: pa.Table, ident: str) -> list[int]:
    """Rows of ``raw`` holding the copies ``winners`` (equal on every column of ``raw``; few rows, in Python)."""
    match = raw.column_names
    ids = raw.column(ident)
    if pa.types.is_dictionary(ids.type):
        ids = ids.cast(pa.string())
    rows = np.flatnonzero(pc.is_in(ids, value_set=winners.column(ident).combine_chunks()).to_numpy(False))
    hit = np.zeros(raw.num_rows, bool)
    hit[rows] = True
    candidates = raw.filter(pa.array(hit)).to_pylist()  # rows ascending, chunk by chunk (no dictionary unify)
    where: dict[tuple[object, ...], int] = {}
    for row, values in zip(rows.tolist(), candidates, strict=True):
        where.setdefault(tuple(values[c] for c in match), row)
    return [where[tuple(w[c] for c in match)] for w in winners.select(match).to_pylist()]


def read_events(
    raw_uri: str,
    event_range: tuple[int, int] | None,
    timings: Timings | None = None,
    *,
    plan: Plan,
    fields: Sequence[str] | None = None,
    winners: bool = True,
) -> pa.Table:
    """De-duplicated events of ``raw_events`` with the timestamp field in ``[start, end)``.

    Only the ``event_date`` partitions of the range and the columns asked for are read (string fields come
    back as plain strings). Copies superseded by a winner on another
    day (``raw_events_superseded``) are dropped first; de-duplication (first ingested copy of each id
    wins) then runs over those partitions before the time filter, so a copy just outside the range still
    decides which copy wins. ``payload_hash`` is read only for the ids whose earliest copies share an
    ``ingested_at`` (it only breaks such ties).

    Args:
        raw_uri: the ``raw_events`` Delta table (local path or object-store URI).
        event_range: ``[start, end)`` in UTC epoch µs (see :func:`fstore.core.pit.event_range`); ``None``
            reads nothing.
        timings: filled in with read/dedupe seconds when given.
        plan: the compiled plan whose event schema names the fields.
        fields: the fields to return (default: every field of the schema the table has; fields the
            table lacks are left out — the engine reads them as null).
        winners: read the days that have a current winners file from it (:mod:`fstore.delta.raw_winners`;
            same rows); ``False`` reads every day from ``raw_events``.
    """
    timings = timings if timings is not None else Timings()
    schema = plan.schema
    wanted = fields if fields is not None else schema.names
    copies = _read_copies(raw_uri, schema, wanted, event_range, timings, winners=winners, ids=True)
    if copies is None:
        return _empty(schema)
    keep = copies.winners(timings)
    columns = [c for c in copies.raw.column_names if c != "ingested_at"]
    return _decoded(copies.table(columns).filter(pa.array(keep)))


def _decoded(table: pa.Table) -> pa.Table:
    """``table`` with its dictionary-encoded columns as plain values, chunk by chunk (a file whose values are
    all null reads back as a dictionary holding null, which Arrow cannot unify with the other chunks')."""
    for i, f in enumerate(table.schema):
        if pa.types.is_dictionary(f.type):
            col = table.column(i)
            plain = pa.chunked_array([c.cast(f.type.value_type) for c in col.chunks], f.type.value_type)
            table = table.set_column(i, pa.field(f.name, f.type.value_type, f.nullable), plain)
    return table


def get_historical_features(
    entity_df: pit.Frame,
    features: Sequence[str],
    *,
    plan: Plan,
    raw_uri: str | None = None,
    engine: Engine = "local",
    full_feature_names: bool = False,
    timings: Timings | None = None,
    winners: bool = True,
    **engine_options: Any,
) -> pit.Frame:
    """Point-in-time correct features for every row of ``entity_df``, computed from ``raw_events``.

    Args:
        entity_df: pandas DataFrame or Arrow table with ``event_timestamp`` (naive timestamps are UTC)
            and the join key column of every requested view.
        features: ``view:feature`` or whole-``view`` references.
        plan: the compiled plan (the process's: :func:`fstore.plan_source.current_plan`).
        raw_uri: the ``raw_events`` table (default: under ``FSTORE_DATA_DIR``).
        engine: ``"local"`` (numpy/Arrow, one machine) or ``"spark"`` (same core, run by Spark).
        full_feature_names: name columns ``view__feature``.
        timings: filled in with per-stage seconds when given.
        winners: read days that have a current winners file from it (local engine; see :func:`read_events`).
        **engine_options: passed to :func:`fstore.offline.spark.get_historical_features` (``spark=``,
            ``buckets=``).

    Returns:
        Same type as ``entity_df``: input columns and rows unchanged (order, duplicates), then the features.

    Raises:
        fstore.core.pit.PointInTimeError: invalid request (missing column, unknown view or feature).
        ValueError: unknown engine.
    """
    uri = raw_uri or raw_events_uri()
    if engine == "spark":
        from fstore.offline import spark as offline_spark

        return offline_spark.get_historical_features(
            entity_df, features, raw_uri=uri, full_feature_names=full_feature_names, plan=plan, **engine_options
        )
    if engine != "local":
        raise ValueError(f"unknown engine '{engine}' (use 'local' or 'spark')")
    if engine_options:
        raise TypeError(f"the local engine takes no options, got {', '.join(engine_options)}")
    request = pit.resolve(plan, features, full_feature_names)  # fail fast, before any read
    timings = timings if timings is not None else Timings()
    span = pit.event_range(plan, entity_df, features)
    copies = _read_copies(uri, plan.schema, request.event_columns(), span, timings, winners=winners)
    if copies is None:
        events, keep = _empty(plan.schema), None
    else:  # the winners as a mask over the copies read: no de-duplicated copy of the events is made
        keep = copies.winners(timings)
        events = copies.table([c for c in copies.raw.column_names if c in request.event_columns()])
    began, began_cpu = time.perf_counter(), time.process_time()
    out = pit.point_in_time(plan, entity_df, features, events, full_feature_names=full_feature_names, keep=keep)
    timings.join, timings.join_cpu = time.perf_counter() - began, time.process_time() - began_cpu
    return out
