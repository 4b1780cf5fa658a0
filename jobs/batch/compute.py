"""Spark transformations of the batch job: de-duplication, validity, tiles and snapshots.

Spark only moves and groups rows; the arithmetic is :mod:`fstore.core.tiles_frame`, called on the
executors through ``mapInArrow`` on partitions that hold every event of their entities. Nothing here
brings events to the driver.
"""

from __future__ import annotations

from collections.abc import Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fstore.core import tiles_frame
from fstore.core.events import EVENT_TYPES
from fstore.core.features import FeatureView
from fstore.core.tiles import tile_plan
from jobs.batch.delta_io import spark_schema

_ID_RE = r"^[A-Za-z0-9_.:-]{1,128}$"


def first_ingested(copies: DataFrame) -> DataFrame:
    """One row per event_id: the copy with the smallest ``(ingested_at, payload_hash)`` (docs/design.md §2)."""
    order = Window.partitionBy("event_id").orderBy(F.col("ingested_at").asc(), F.col("payload_hash").asc())
    return copies.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") == 1).drop("_rank")


def is_valid() -> Column:
    """The cheap checks of the event contract, re-applied to stored rows (raw_events holds valid ones).

    Ids present and well-formed, a known event type, product_id unless page_view, a finite non-negative
    price (required for purchases), quantity >= 1. ``future_timestamp`` needs the ingestion clock and is
    covered by the cutover: only events before C count.
    """
    price = F.col("price")
    price_ok = price.isNull() | (~F.isnan(price) & (price >= 0) & (price < float("inf")))
    return (
        F.col("event_id").rlike(_ID_RE)
        & F.col("user_id").rlike(_ID_RE)
        & F.col("event_type").isin(list(EVENT_TYPES))
        & F.col("event_time").isNotNull()
        & F.coalesce(F.col("product_id").rlike(_ID_RE), F.col("event_type") == "page_view")
        & price_ok
        & ((F.col("event_type") != "purchase") | price.isNotNull())
        & F.col("quantity").isNotNull()
        & (F.col("quantity") >= 1)
    )


def events_for(events: DataFrame, view: FeatureView, start: int, end: int) -> DataFrame:
    """The columns a view's tiles need, for events in ``[start, end)`` of the types the view measures."""
    key = view.entity.join_key
    types = sorted({t for _, by_type in tile_plan(view) for t in by_type})
    micros = F.unix_micros(F.col("event_time"))
    return events.where(
        F.col(key).isNotNull() & F.col("event_type").isin(types) & (micros >= F.lit(start)) & (micros < F.lit(end))
    ).select(F.col(key), "event_type", micros.alias("event_time"), "price", "quantity")


def tiles(events: DataFrame, view: FeatureView, horizons: dict[int, int], cutover: int, partitions: int) -> DataFrame:
    """Tiles of a view (columns of :func:`fstore.core.tiles_frame.tile_schema`), one partition per key hash.

    Every entity's tiles end up in one partition, which :func:`snapshots` and the Redis loader rely on.
    The view travels to the executors with the function (any view, not only the registered ones).
    """
    key = view.entity.join_key
    start = min(horizons.values())

    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not any(b.num_rows for b in parts):
            return
        out = tiles_frame.build_tiles(view, pa.Table.from_batches(parts), horizons, cutover)
        yield from out.to_batches(max_chunksize=65_536)

    part = events_for(events, view, start, cutover).repartition(partitions, key)
    return part.mapInArrow(build, spark_schema(tiles_frame.tile_schema(view)))


def snapshots(tiles_df: DataFrame, view: FeatureView, t: int) -> DataFrame:
    """Feature values at ``t`` per entity from a tiles frame partitioned by entity (see :func:`tiles`)."""

    def snap(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not any(b.num_rows for b in parts):
            return
        yield from tiles_frame.snapshot(view, pa.Table.from_batches(parts), t).to_batches()

    return tiles_df.mapInArrow(snap, spark_schema(tiles_frame.snapshot_schema(view)))
