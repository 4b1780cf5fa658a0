"""Spark transformations of the batch job: de-duplication, validity, tiles and snapshots, from the plan.

Spark only moves and groups rows; the arithmetic is the core's (:mod:`fstore.core.view_tiles_frame` for
tiles, :mod:`fstore.core.view_snapshot` for the daily snapshots), called on the executors through
``mapInArrow`` on partitions that hold every event of their entities. Why not Spark SQL through
:mod:`fstore.core.expr_render`: the variance state and the distinct members would need a second
implementation of the tile arithmetic in SQL, whose float sums follow Spark's (partition-dependent)
order; the Arrow path is the same code the point-in-time engine and the tests check against
:class:`fstore.core.view_tiles.ViewTiler`, and it sorts each tile's values, so a re-run is bit-identical.
Spark SQL renders the plan's expressions only where they filter rows early (:func:`events_for`,
:func:`is_valid`). Nothing here brings events to the driver.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import pyarrow as pa
from pyspark.sql import Column, DataFrame, Window
from pyspark.sql import functions as F

from fstore.core import view_snapshot, view_tiles_frame
from fstore.core.event_check import FLOAT_LIMIT
from fstore.core.event_schema import INTEGER_RANGES, EventField, EventSchema, FieldType
from fstore.core.expr import columns
from fstore.core.expr_render import to_sql
from fstore.core.plan import View
from jobs.batch.delta_io import lists_from_json, lists_to_json, spark_schema

_ID_RE = r"^[A-Za-z0-9_.:-]{1,128}$"


def first_ingested(copies: DataFrame, id_field: str) -> DataFrame:
    """One row per ``id_field``: the copy with the smallest ``(ingested_at, payload_hash)`` (docs/design.md §2)."""
    order = Window.partitionBy(id_field).orderBy(F.col("ingested_at").asc(), F.col("payload_hash").asc())
    return copies.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") == 1).drop("_rank")


def is_valid(schema: EventSchema, entity_keys: Iterable[str]) -> Column:
    """The cheap checks of the event contract (:mod:`fstore.core.event_check`), re-applied to stored rows
    (``raw_events`` holds valid ones).

    Per declared field: present when required (or when its ``required_when`` condition holds); the id
    field and the entity keys in the id charset; declared values; numbers finite and within their
    bounds. ``future_timestamp`` needs the ingestion clock and is covered by the cutover: only events
    before C count. Free text was hashed at ingestion, so it is not re-checked.
    """
    ids = {schema.id_field, *entity_keys}
    cols = schema.columns()
    ok = F.col(schema.timestamp_field).isNotNull()
    for f in schema.fields:
        c = F.col(f.name)
        if f.required:
            present = c.isNotNull()
        elif f.required_when is not None:
            present = c.isNotNull() | ~F.expr(to_sql(f.required_when, cols))
        else:
            present = F.lit(True)
        ok = ok & present & (c.isNull() | _value_ok(f, c, f.name in ids))
    return ok


def _value_ok(f: EventField, c: Column, is_id: bool) -> Column:
    if f.type is FieldType.STRING:
        if is_id:
            return c.rlike(_ID_RE)
        return c.isin(list(f.values)) if f.values else F.lit(True)
    whole = INTEGER_RANGES.get(f.type)
    if whole is None and f.type is not FieldType.FLOAT:
        return F.lit(True)
    x = c.cast("double")
    lo, hi = (float(whole[0]), float(whole[1])) if whole is not None else (-FLOAT_LIMIT, FLOAT_LIMIT)
    if f.minimum is not None:
        lo = max(lo, f.minimum) if whole is not None else f.minimum
    if f.maximum is not None:
        hi = min(hi, f.maximum) if whole is not None else f.maximum
    return ~F.isnan(x) & (x >= F.lit(lo)) & (x <= F.lit(hi))


def view_columns(view: View) -> list[str]:
    """The event fields the measures of ``view`` read (sorted)."""
    names: set[str] = set()
    for m in view.measures:
        names |= columns(m.value) | (columns(m.where) if m.where is not None else set())
    return sorted(names)


def events_for(events: DataFrame, view: View, schema: EventSchema, start: int, end: int) -> DataFrame:
    """The columns a view's tiles need (the join key, the timestamp as epoch µs, the fields its measures
    read), for events in ``[start, end)`` with the key and, when every measure has a filter, passing one."""
    key, ts = view.entity.join_key, schema.timestamp_field
    micros = F.unix_micros(F.col(ts))
    keep = F.col(key).isNotNull() & (micros >= F.lit(start)) & (micros < F.lit(end))
    if all(m.where is not None for m in view.measures):
        cols = schema.columns()
        keep = keep & F.expr(" OR ".join(to_sql(m.where, cols) for m in view.measures if m.where is not None))
    fields = [c for c in view_columns(view) if c not in (key, ts)]
    return events.where(keep).select(F.col(key), micros.alias(ts), *fields)


def tiles(
    events: DataFrame, view: View, schema: EventSchema, horizons: dict[int, int], cutover: int, partitions: int
) -> DataFrame:
    """Tiles of a view (columns of :func:`fstore.core.view_tiles_frame.tile_schema`, ``distinct`` as JSON
    text: :func:`jobs.batch.delta_io.spark_schema`), one partition per key hash.

    Every entity's tiles end up in one partition, which :func:`snapshots` and the Redis loader rely on.
    The view and the schema travel to the executors with the function (any plan, not only the process's).
    """
    key = view.entity.join_key
    start = min(horizons.values())

    def build(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not any(b.num_rows for b in parts):
            return
        out = view_tiles_frame.build_tiles(view, schema, pa.Table.from_batches(parts), horizons, cutover)
        yield from lists_to_json(out).to_batches(max_chunksize=65_536)

    part = events_for(events, view, schema, start, cutover).repartition(partitions, key)
    return part.mapInArrow(build, spark_schema(view_tiles_frame.tile_schema(view)))


def snapshots(tiles_df: DataFrame, view: View, t: int) -> DataFrame:
    """Feature values at ``t`` per entity from a tiles frame partitioned by entity (see :func:`tiles`)."""

    def snap(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        if not any(b.num_rows for b in parts):
            return
        tiles = lists_from_json(pa.Table.from_batches(parts), view_tiles_frame.tile_schema(view))
        yield from view_snapshot.snapshot(view, tiles, t).to_batches()

    return tiles_df.mapInArrow(snap, spark_schema(view_snapshot.snapshot_schema(view)))
