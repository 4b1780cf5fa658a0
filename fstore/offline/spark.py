"""The point-in-time engine on Spark (docs/design.md §6: same answer, for data that outgrows one machine).

Spark reads the needed ``raw_events`` partitions — through delta-spark when the session has it (the
default session does: :func:`spark_session` loads the jars cached by ``make setup``), else the Parquet
files that the Delta log lists, through delta-rs — drops the copies superseded by a winner on another
day (:func:`without_superseded`), de-duplicates them with a window (first ingested copy wins), and
co-groups entity rows and events by a hash bucket of the join key. Each bucket runs
:func:`fstore.core.pit.compute_arrays` — the same code as the local engine — on its share, so events
never reach the driver; only the requested result is collected.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import DeltaTable
from pyspark.sql import DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fstore.core import pit
from fstore.core.event_schema import EventSchema, FieldType
from fstore.core.plan import Plan
from fstore.core.timeutil import DAY
from fstore.delta import raw_log
from fstore.jvm.artifacts import delta_jars
from fstore.jvm.spark import has_delta_spark, loopback_driver
from fstore.settings import get_settings

ROW = "__row"
DOWN, UP = "__t_down", "__t_up"
BUCKET = "__bucket"
#: Spark SQL and Arrow types of the event fields as the engine reads them (the timestamp as long µs; integers
#: as doubles — the expression language reads every number as a double).
_SQL = {
    FieldType.STRING: "string",
    FieldType.INT: "double",
    FieldType.LONG: "double",
    FieldType.FLOAT: "double",
    FieldType.BOOL: "boolean",
    FieldType.TIMESTAMP: "long",
}
_ARROW = {"string": pa.string(), "double": pa.float64(), "boolean": pa.bool_(), "long": pa.int64()}


def _event_types(schema: EventSchema, fields: Sequence[str]) -> list[tuple[str, str]]:
    return [(name, _SQL[schema.field(name).type]) for name in fields]


def spark_session(
    app: str = "fstore-pit", master: str = "local[2]", conf: Mapping[str, str] | None = None
) -> SparkSession:
    """A Spark session suited to the engine (few shuffle partitions, no UI, UTC, Arrow on), with
    delta-spark when its jars are cached (``make setup``; ``spark.jars`` also ships them to a cluster's
    executors).

    Python workers run this interpreter (``PYSPARK_PYTHON`` is set to it unless already set), so they see
    the same packages as the driver: on a cluster, every node needs it at the same path (or set
    ``spark.pyspark.python`` in ``conf``). ``conf``: more settings, e.g. ``spark.driver.host`` or
    ``spark.executor.memory`` for ``master="spark://..."``.
    """
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # read by SparkContext for its workers
    builder = (
        SparkSession.builder.master(master)
        .appName(app)
        .config("spark.sql.shuffle.partitions", "4")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.driver.memory", "4g")
        .config("spark.pyspark.python", sys.executable)  # workers run this interpreter (its packages)
        .config("spark.pyspark.driver.python", sys.executable)
    )
    for k, v in {
        **delta_jars(get_settings().jar_cache).spark_conf(),
        **loopback_driver(master),
        **(conf or {}),
    }.items():
        builder = builder.config(k, v)
    return builder.getOrCreate()


def without_superseded(
    copies: DataFrame, superseded: pa.Table, id_field: str = "event_id", timestamp_field: str = "event_time"
) -> DataFrame:
    """``raw_events`` copies (with the id and timestamp fields) minus those of the superseded
    ``(event_id, event_date)`` pairs (:func:`fstore.core.dedupe.drop_superseded` for Spark: a broadcast
    anti-join with the few pairs; nothing at all when there are none)."""
    if superseded.num_rows == 0:
        return copies
    days = pc.cast(superseded.column("event_date"), pa.int32()).to_pylist()
    pairs = copies.sparkSession.createDataFrame(
        list(zip(superseded.column("event_id").to_pylist(), days, strict=True)), "__id string, __day int"
    )
    day = F.floor(F.unix_micros(F.col(timestamp_field)) / F.lit(DAY)).cast("int")
    keyed = copies.withColumn("__day", day).withColumn("__id", F.col(id_field))
    return keyed.join(F.broadcast(pairs), ["__id", "__day"], "left_anti").drop("__day", "__id")


def read_events(
    spark: SparkSession,
    raw_uri: str,
    event_range: tuple[int, int] | None,
    schema: EventSchema,
    fields: Sequence[str],
) -> DataFrame:
    """De-duplicated events of the partitions covering ``event_range``: ``fields`` of the plan's schema
    typed as :data:`_SQL` says (the timestamp field as long µs; a field the table lacks is null)."""
    types = _event_types(schema, fields)
    ddl = ", ".join(f"`{n}` {t}" for n, t in types)
    days = raw_log.date_range(event_range)
    if days is None:
        return spark.createDataFrame([], ddl)
    try:
        table = DeltaTable(raw_uri)
    except Exception:  # no table yet: nothing happened
        return spark.createDataFrame([], ddl)
    if has_delta_spark(spark):
        day_lo, day_hi = (F.lit(d.isoformat()).cast("date") for d in days)  # ISO text: pyspark renders year 1 '1-01-01'
        copies = spark.read.format("delta").load(raw_uri).where(F.col("event_date").between(day_lo, day_hi))
    else:
        files = table.file_uris(
            file_pruning_predicate=[
                ("event_date", ">=", days[0].isoformat()),
                ("event_date", "<=", days[1].isoformat()),
            ]
        )
        if not files:
            return spark.createDataFrame([], ddl)
        copies = spark.read.option("mergeSchema", "true").parquet(*files)
    ident, ts = schema.id_field, schema.timestamp_field
    superseded = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), days[0], days[1])
    raw = without_superseded(copies, superseded, ident, ts)
    first = Window.partitionBy(ident).orderBy("ingested_at", "payload_hash")
    stored = set(copies.columns)
    assert event_range is not None

    def column(name: str, typ: str) -> Any:
        if name == ts:
            return F.unix_micros(F.col(ts)).alias(ts)
        return (F.col(f"`{name}`") if name in stored else F.lit(None)).cast(typ).alias(name)

    return (
        raw.withColumn("__rank", F.row_number().over(first))
        .where(F.col("__rank") == 1)
        .select(*(column(n, t) for n, t in types))
        .where((F.col(ts) >= event_range[0]) & (F.col(ts) < event_range[1]))
    )


def _bucket_fn(request: pit.Request, join_key: str, names: list[str], types: list[tuple[str, str]]) -> Any:
    schema = pa.schema([(n, _ARROW[t]) for n, t in types])

    def run(rows: pd.DataFrame, events: pd.DataFrame) -> pd.DataFrame:
        ev = pa.Table.from_pandas(events[schema.names], schema=schema, preserve_index=False)
        keys = {join_key: pa.array(rows[join_key], pa.string(), from_pandas=True)}
        cols = pit.compute_arrays(keys, rows[DOWN].to_numpy(np.int64), rows[UP].to_numpy(np.int64), request, ev)
        out = pd.DataFrame({ROW: rows[ROW].to_numpy(np.int64)})
        for name in names:
            values, null = cols[name]
            out[name] = values if null is None else np.where(null, np.nan, values)
        return out

    return run


def get_historical_features(
    entity_df: pit.Frame,
    features: Sequence[str],
    *,
    raw_uri: str,
    full_feature_names: bool = False,
    plan: Plan,
    spark: SparkSession | None = None,
    buckets: int = 8,
) -> pit.Frame:
    """Spark version of :func:`fstore.offline.local.get_historical_features` (identical values and row contract).

    Args:
        entity_df: pandas DataFrame or Arrow table (``event_timestamp`` + join keys; naive = UTC).
        features: ``view:feature`` or whole-``view`` references.
        raw_uri: the ``raw_events`` Delta table.
        full_feature_names: name columns ``view__feature``.
        spark: the session to use (default: :func:`spark_session`).
        buckets: hash buckets of the join key; each is one call of the core engine.
        plan: the compiled plan.
    """
    request = pit.resolve(plan, features, full_feature_names)
    keys, down, up = pit.normalise(entity_df, request)
    spark = spark or spark_session()
    fields = request.event_columns()
    types = _event_types(plan.schema, fields)
    events = read_events(spark, raw_uri, pit.event_range(plan, entity_df, features), plan.schema, fields)
    rows = pa.table({ROW: np.arange(len(down), dtype=np.int64), DOWN: down, UP: up, **keys})
    rows_df = (
        spark.createDataFrame(rows.to_pandas())
        if len(down)
        else spark.createDataFrame([], f"{ROW} long, {DOWN} long, {UP} long, " + ", ".join(f"{k} string" for k in keys))
    )
    result = rows_df.select(ROW)
    dtypes = {n: f.dtype for (_, f), n in zip(request.features, request.names, strict=True)}
    for view in request.views:
        key = view.entity.join_key
        pairs = [(vf, n) for vf, n in zip(request.features, request.names, strict=True) if vf[0] is view]
        sub = pit.Request(plan, tuple(vf for vf, _ in pairs), tuple(n for _, n in pairs))
        names = list(sub.names)
        schema = T.StructType(
            [T.StructField(ROW, T.LongType(), False)]
            + [T.StructField(n, T.LongType() if dtypes[n] == "int64" else T.DoubleType(), True) for n in names]
        )
        ents = rows_df.select(ROW, DOWN, UP, key).withColumn(BUCKET, F.pmod(F.hash(key), F.lit(buckets)))
        evs = events.where(F.col(key).isNotNull()).withColumn(BUCKET, F.pmod(F.hash(key), F.lit(buckets)))
        per_view = (
            ents.groupBy(BUCKET).cogroup(evs.groupBy(BUCKET)).applyInPandas(_bucket_fn(sub, key, names, types), schema)
        )
        result = result.join(per_view, on=ROW, how="left")
    got = result.orderBy(ROW).toArrow()
    if got.num_rows != len(down):
        raise RuntimeError(f"Spark returned {got.num_rows} rows for {len(down)} entity rows")
    if isinstance(entity_df, pd.DataFrame):
        out = entity_df.copy()
        for name in request.names:
            col = got.column(name)
            out[name] = (
                col.to_numpy(zero_copy_only=False).astype(dtypes[name])
                if dtypes[name] == "int64"
                else col.to_pandas().to_numpy(np.float64)
            )
        return out
    table = entity_df
    for name in request.names:
        table = table.append_column(name, got.column(name).combine_chunks())
    return table
