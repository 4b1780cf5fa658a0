"""Training data from ``raw_events`` (docs/design.md §6): the Delta adapter of the point-in-time engine.

:func:`get_historical_features` reads only the ``raw_events`` partitions a request can touch
(``event_date`` from ``min t - longest window - largest hop`` to ``max t``), de-duplicates them (first
ingested copy wins) and hands them to :func:`fstore.core.pit.point_in_time`. ``engine="spark"`` runs
the same core on Spark (:mod:`fstore.offline.spark`).

Example::

    from fstore.offline.local import get_historical_features
    train = get_historical_features(entity_df, ["user_activity", "product_engagement:ctr_24h"])
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds

from fstore.core import pit
from fstore.core.dedupe import drop_superseded
from fstore.delta import raw_log

Engine = Literal["local", "spark"]
#: String columns read dictionary-encoded (few distinct values; the engine works on the codes).
DICT_COLUMNS = {"event_type", "user_id", "product_id"}


@dataclass
class Timings:
    """Seconds spent per stage of the last call (for benchmarks and logs)."""

    read: float = 0.0
    dedupe: float = 0.0
    join: float = 0.0
    rows_read: int = 0
    partitions: list[date] = field(default_factory=list)


def raw_events_uri(data_dir: str | None = None) -> str:
    """Location of ``raw_events`` under ``data_dir`` (default: ``FSTORE_DATA_DIR`` from the settings)."""
    if data_dir is None:
        from fstore.settings import get_settings

        return get_settings().table("raw_events")
    return f"{data_dir.rstrip('/')}/raw_events"


def _in_time_order(raw: pa.Table) -> pa.Table:
    """``raw`` with its record batches (zero-copy) ordered by their first ``event_time``.

    Files come in log order, not date order; day files written in time order then make one sorted run,
    which the engine sorts faster (:func:`fstore.core.pit_kernels.SortedMeasure`). Rows are unchanged.
    """
    batches = [b for b in raw.to_batches() if b.num_rows]
    if len(batches) < 2:
        return raw
    at = raw.schema.get_field_index("event_time")
    firsts = [b.column(at)[0].value for b in batches]
    order = sorted(range(len(batches)), key=firsts.__getitem__)
    return pa.Table.from_batches([batches[i] for i in order], schema=raw.schema)


def read_events(raw_uri: str, event_range: tuple[int, int] | None, timings: Timings | None = None) -> pa.Table:
    """De-duplicated events of ``raw_events`` with ``event_time`` in ``[start, end)``.

    Only the ``event_date`` partitions of the range and the columns the engine needs are read, with
    ``event_type``, ``user_id`` and ``product_id`` dictionary-encoded (the engine uses the codes as they
    are). Copies superseded by a winner on another day (``raw_events_superseded``) are dropped first;
    de-duplication then runs over those partitions before the time filter, so a copy just outside the
    range still decides which copy wins. ``payload_hash`` is read only for the event_ids whose earliest
    copies share an ``ingested_at`` (it only breaks such ties).

    Args:
        raw_uri: the ``raw_events`` Delta table (local path or object-store URI).
        event_range: ``[start, end)`` in UTC epoch µs (see :func:`fstore.core.pit.event_range`); ``None``
            reads nothing.
        timings: filled in with read/dedupe seconds when given.
    """
    timings = timings if timings is not None else Timings()
    days = raw_log.date_range(event_range)
    began = time.perf_counter()
    if days is not None:
        timings.partitions = [days[0], days[1]]
    table = raw_log.open_table(raw_uri) if days is not None else None
    if table is None or days is None or event_range is None:  # nothing asked for, or nothing stored yet
        timings.read = time.perf_counter() - began
        return raw_log.RAW_SCHEMA.empty_table().select(list(pit.EVENT_COLUMNS))
    dataset = table.to_pyarrow_dataset(parquet_read_options=ds.ParquetReadOptions(dictionary_columns=DICT_COLUMNS))
    flt = (pc.field("event_date") >= pa.scalar(days[0], pa.date32())) & (
        pc.field("event_date") <= pa.scalar(days[1], pa.date32())
    )
    raw = dataset.to_table(columns=[*pit.EVENT_COLUMNS, "event_id", "ingested_at"], filter=flt)
    superseded = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), days[0], days[1])
    raw = _in_time_order(drop_superseded(raw, superseded))
    timings.read = time.perf_counter() - began
    timings.rows_read = raw.num_rows
    began = time.perf_counter()
    keep, tied = pit.first_ingested_mask(raw)
    t = raw.column("event_time").cast(pa.int64()).to_numpy()
    keep &= (t >= event_range[0]) & (t < event_range[1])
    events = raw.select(list(pit.EVENT_COLUMNS)).filter(pa.array(keep))
    if len(tied):  # copies ingested at the same instant: the smaller payload_hash wins
        copies = dataset.to_table(
            columns=[*pit.EVENT_COLUMNS, *pit.DEDUPE_COLUMNS], filter=flt & pc.field("event_id").isin(tied)
        )
        winners = pit.dedupe(drop_superseded(copies, superseded))
        t = winners.column("event_time").cast(pa.int64())
        winners = winners.filter(pc.and_(pc.greater_equal(t, event_range[0]), pc.less(t, event_range[1])))
        events = pa.concat_tables([events, winners.select(list(pit.EVENT_COLUMNS))])
    timings.dedupe = time.perf_counter() - began
    return events


def get_historical_features(
    entity_df: pit.Frame,
    features: Sequence[str],
    *,
    raw_uri: str | None = None,
    engine: Engine = "local",
    full_feature_names: bool = False,
    timings: Timings | None = None,
    **engine_options: Any,
) -> pit.Frame:
    """Point-in-time correct features for every row of ``entity_df``, computed from ``raw_events``.

    Args:
        entity_df: pandas DataFrame or Arrow table with ``event_timestamp`` (naive timestamps are UTC)
            and the join key column of every requested view (``user_id``, ``product_id``).
        features: ``view:feature`` or whole-``view`` references.
        raw_uri: the ``raw_events`` table (default: under ``FSTORE_DATA_DIR``).
        engine: ``"local"`` (numpy/Arrow, one machine) or ``"spark"`` (same core, run by Spark).
        full_feature_names: name columns ``view__feature``.
        timings: filled in with per-stage seconds when given.
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
            entity_df, features, raw_uri=uri, full_feature_names=full_feature_names, **engine_options
        )
    if engine != "local":
        raise ValueError(f"unknown engine '{engine}' (use 'local' or 'spark')")
    if engine_options:
        raise TypeError(f"the local engine takes no options, got {', '.join(engine_options)}")
    pit.plan(features, full_feature_names)  # fail fast, before any read
    timings = timings if timings is not None else Timings()
    events = read_events(uri, pit.event_range(entity_df, features), timings)
    began = time.perf_counter()
    out = pit.point_in_time(entity_df, features, events, full_feature_names=full_feature_names)
    timings.join = time.perf_counter() - began
    return out
