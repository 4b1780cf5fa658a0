"""Training data from ``raw_events`` (DESIGN.md §6): the Delta adapter of the point-in-time engine.

:func:`get_historical_features` reads only the ``raw_events`` partitions a request can touch
(``event_date`` from ``min t - longest window - largest hop`` to ``max t``), de-duplicates them (first
ingested copy wins) and hands them to :func:`fstore.core.pit.point_in_time`. ``engine="spark"`` runs
the same core on Spark (:mod:`fstore.offline_spark`).

Example::

    from fstore.offline import get_historical_features
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

from fstore import raw_log
from fstore.core import pit
from fstore.core.timeutil import to_date

Engine = Literal["local", "spark"]
READ_COLUMNS = [*pit.DEDUPE_COLUMNS, *pit.EVENT_COLUMNS]


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


def date_range(event_range: tuple[int, int] | None) -> tuple[date, date] | None:
    """``event_date`` partitions ``(first, last)`` that hold events of ``[start, end)``."""
    if event_range is None:
        return None
    start, end = event_range
    return to_date(start), to_date(max(start, end - 1))


def read_events(raw_uri: str, event_range: tuple[int, int] | None, timings: Timings | None = None) -> pa.Table:
    """De-duplicated events of ``raw_events`` with ``event_time`` in ``[start, end)``.

    Only the ``event_date`` partitions of the range are read. De-duplication runs over those partitions
    before the time filter, so a copy just outside the range still decides which copy wins.

    Args:
        raw_uri: the ``raw_events`` Delta table (local path or object-store URI).
        event_range: ``[start, end)`` in UTC epoch µs (see :func:`fstore.core.pit.event_range`); ``None``
            reads nothing.
        timings: filled in with read/dedupe seconds when given.
    """
    timings = timings if timings is not None else Timings()
    days = date_range(event_range)
    began = time.perf_counter()
    if days is None:
        raw = raw_log.RAW_SCHEMA.empty_table().select(READ_COLUMNS)
    else:
        flt = (pc.field("event_date") >= pa.scalar(days[0], pa.date32())) & (
            pc.field("event_date") <= pa.scalar(days[1], pa.date32()))
        raw = raw_log.read_table(raw_uri, READ_COLUMNS, flt)
        timings.partitions = [days[0], days[1]]
    timings.read = time.perf_counter() - began
    timings.rows_read = raw.num_rows
    began = time.perf_counter()
    events = pit.dedupe(raw)
    if event_range is not None and events.num_rows:
        t = events.column("event_time").cast(pa.int64())
        keep = pc.and_(pc.greater_equal(t, event_range[0]), pc.less(t, event_range[1]))
        events = events.filter(keep)
    timings.dedupe = time.perf_counter() - began
    return events.select(list(pit.EVENT_COLUMNS))


def get_historical_features(entity_df: pit.Frame, features: Sequence[str], *, raw_uri: str | None = None,
                            engine: Engine = "local", full_feature_names: bool = False,
                            timings: Timings | None = None, **engine_options: Any) -> pit.Frame:
    """Point-in-time correct features for every row of ``entity_df``, computed from ``raw_events``.

    Args:
        entity_df: pandas DataFrame or Arrow table with ``event_timestamp`` (naive timestamps are UTC)
            and the join key column of every requested view (``user_id``, ``product_id``).
        features: ``view:feature`` or whole-``view`` references.
        raw_uri: the ``raw_events`` table (default: under ``FSTORE_DATA_DIR``).
        engine: ``"local"`` (numpy/Arrow, one machine) or ``"spark"`` (same core, run by Spark).
        full_feature_names: name columns ``view__feature``.
        timings: filled in with per-stage seconds when given.
        **engine_options: passed to :func:`fstore.offline_spark.get_historical_features` (``spark=``,
            ``buckets=``).

    Returns:
        Same type as ``entity_df``: input columns and rows unchanged (order, duplicates), then the features.

    Raises:
        fstore.core.pit.PointInTimeError: invalid request (missing column, unknown view or feature).
        ValueError: unknown engine.
    """
    uri = raw_uri or raw_events_uri()
    if engine == "spark":
        from fstore import offline_spark

        return offline_spark.get_historical_features(entity_df, features, raw_uri=uri,
                                                     full_feature_names=full_feature_names, **engine_options)
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
