"""Delta Lake I/O of the batch job: delta-spark when its jars are on the classpath, delta-rs otherwise.

:func:`choose_engine` decides, from the session and ``FSTORE_DELTA_ENGINE``, and says why (the local
default has the jars: ``make setup`` caches them and :func:`jobs.batch.rebuild_features.build_spark`
puts them on the session's classpath).

Reading ``raw_events``: delta-spark reads the table (the stream's delta-rs appends, schema evolution
included); without it, delta-rs lists the live Parquet files of the wanted ``event_date`` partitions from
the Delta log and Spark reads exactly those files. Either way the executors do the reading.

Writing (``overwrite_partition``) replaces one partition of a table in ONE Delta commit, so a table is
always either fully old or fully new:

* delta-spark: ``df.write.format("delta").option("replaceWhere", ...)``: Delta's optimistic transaction,
  whose conflict detection fails a commit that a concurrent writer's commit invalidated.
* delta-rs: each executor writes its Spark partition as one Parquet file under the table directory and
  returns only (path, size, rows); the driver commits all files with
  ``DeltaTable.create_write_transaction(mode="overwrite", partition_filters=[...])``. Files of a run that
  dies before its commit are never referenced by the log (``VACUUM`` removes them).
"""

from __future__ import annotations

import json
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from datetime import date

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
from deltalake import Schema, write_deltalake
from deltalake.transaction import AddAction, RemoveAction, create_table_with_add_actions
from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql import types as T

from fstore.core.event_schema import EventSchema, FieldType
from fstore.delta import raw_log
from fstore.jvm.spark import has_delta_spark
from fstore.offline.spark import without_superseded

#: Columns of ``raw_events`` the job reads besides the plan's event fields (de-duplication order).
INGEST_COLUMNS = ("ingested_at", "payload_hash")

_SPARK_TYPES: dict[pa.DataType, T.DataType] = {
    pa.string(): T.StringType(),
    pa.large_string(): T.StringType(),
    pa.int64(): T.LongType(),
    pa.int32(): T.IntegerType(),
    pa.float64(): T.DoubleType(),
    pa.date32(): T.DateType(),
    pa.timestamp("us", tz="UTC"): T.TimestampType(),
    pa.binary(): T.BinaryType(),
    pa.bool_(): T.BooleanType(),
}


def _is_list(t: pa.DataType) -> bool:
    return bool(pa.types.is_list(t) or pa.types.is_large_list(t))


def spark_schema(schema: pa.Schema) -> T.StructType:
    """The Spark struct of an Arrow schema (the types fstore tables use).

    A list column travels through Spark as JSON text (:func:`lists_to_json` / :func:`lists_from_json`):
    Spark's Arrow conversion of array columns costs ~50× that of a string column (measured: 300k tile
    rows read back from a checkpoint by ``mapInArrow`` in 100 s instead of 2 s), and the tiles are read
    three times (Delta write, snapshot, Redis load).
    """
    return T.StructType(
        [
            T.StructField(f.name, T.StringType() if _is_list(f.type) else _SPARK_TYPES[f.type], f.nullable)
            for f in schema
        ]
    )


def lists_to_json(table: pa.Table) -> pa.Table:
    """``table`` with its list columns as JSON text (null stays null), the form Spark carries them in."""
    for i, f in enumerate(table.schema):
        if _is_list(f.type):
            col = table.column(i)
            text = (
                pa.nulls(len(col), pa.string())
                if col.null_count == len(col)
                else pa.array([None if v is None else json.dumps(v) for v in col.to_pylist()], pa.string())
            )
            table = table.set_column(i, pa.field(f.name, pa.string(), f.nullable), text)
    return table


def lists_from_json(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """The list columns of ``schema`` decoded back from the JSON text of :func:`lists_to_json`."""
    for f in schema:
        if _is_list(f.type) and f.name in table.column_names:
            i = table.column_names.index(f.name)
            col = table.column(i)
            values = (
                pa.nulls(len(col), f.type)
                if col.null_count == len(col)
                else pa.array([None if v is None else json.loads(v) for v in col.to_pylist()], f.type)
            )
            table = table.set_column(i, f, values)
    return table


def choose_engine(spark: SparkSession, wanted: str, unavailable: str) -> tuple[bool, str]:
    """Whether to use delta-spark, and why.

    Args:
        spark: the job's session.
        wanted: ``auto`` (delta-spark if the session has it), ``delta-spark`` or ``delta-rs``.
        unavailable: why delta-spark's jars are missing, for the message (e.g. which coordinates failed).

    Raises:
        RuntimeError: ``delta-spark`` was asked for and the session does not have it.
    """
    if wanted == "delta-rs":
        return False, "delta-rs (FSTORE_DELTA_ENGINE=delta-rs)"
    if has_delta_spark(spark):
        return True, "delta-spark"
    if wanted == "delta-spark":
        raise RuntimeError(f"FSTORE_DELTA_ENGINE=delta-spark but the Spark session has no delta-spark: {unavailable}")
    return False, f"delta-rs (no delta-spark in the session: {unavailable})"


def read_raw(spark: SparkSession, uri: str, dates: list[date], delta_spark: bool, schema: EventSchema) -> DataFrame:
    """The ``raw_events`` copies of the given ``event_date`` partitions (not de-duplicated), without the
    copies superseded by a winner on another day (``raw_events_superseded``, docs/design.md §2).

    Columns: the fields of ``schema`` (a field the table does not have yet — an optional field added
    later — is all null), then :data:`INGEST_COLUMNS`.

    Raises:
        RuntimeError: if the table uses a reader feature Spark cannot honour by reading files
            (deletion vectors, column mapping) and delta-spark is not available.
    """
    copies = _with_fields(_read_raw(spark, uri, dates, delta_spark), schema)
    if not dates:
        return copies
    superseded = raw_log.superseded_on(raw_log.superseded_uri(uri), min(dates), max(dates))
    return without_superseded(copies, superseded, schema.id_field, schema.timestamp_field)


def read_winners(spark: SparkSession, uri: str, files: list[str], schema: EventSchema) -> DataFrame:
    """The rows of days' winners files (:func:`fstore.delta.raw_winners.settled`: already de-duplicated,
    their superseded pairs dropped), with the columns of :func:`read_raw` but ``payload_hash``, which only
    orders copies. ``uri`` is ``raw_events``, whose schema the files share (a column a file lacks reads
    null)."""
    dt = raw_log.open_table(uri)
    if dt is None or not files:
        raise ValueError(f"no winners files to read for {uri}")
    table_schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
    return _with_fields(spark.read.schema(table_schema).parquet(*files), schema).drop("payload_hash")


def read_tiles(spark: SparkSession, uri: str, files: list[str], schema: pa.Schema, keep: Column) -> DataFrame:
    """Rows of a tile table's data ``files`` (an earlier run's partition, :mod:`jobs.batch.tile_reuse`) in
    the form the job carries tiles in (:func:`spark_schema`: ``tile_start`` as epoch µs, lists as JSON
    text), filtered by ``keep`` (over those columns). ``schema`` is the tiles' Arrow schema
    (:func:`fstore.core.view_tiles_frame.tile_schema`)."""
    want = spark_schema(schema)
    if not files:
        return spark.createDataFrame([], want)
    dt = raw_log.open_table(uri)
    if dt is None:
        raise ValueError(f"no tile table at {uri}")
    stored = T.StructType.fromJson(json.loads(dt.schema().to_json()))
    file_schema = T.StructType([f for f in stored.fields if f.name != "run_date"])
    rows = spark.read.schema(file_schema).parquet(*files)
    kinds = {f.name: f.dataType for f in file_schema.fields}
    cols = [
        F.unix_micros(F.col(f.name)).alias(f.name)  # int64 µs in the job, a timestamp in the table
        if isinstance(kinds[f.name], T.TimestampType)
        else F.to_json(F.col(f.name)).alias(f.name)
        if isinstance(kinds[f.name], T.ArrayType)
        else F.col(f.name).cast(want[f.name].dataType).alias(f.name)
        for f in schema
    ]
    return rows.select(*cols).where(keep)


_FIELD_TYPES = {
    FieldType.STRING: T.StringType(),
    FieldType.INT: T.LongType(),
    FieldType.LONG: T.LongType(),
    FieldType.FLOAT: T.DoubleType(),
    FieldType.BOOL: T.BooleanType(),
    FieldType.TIMESTAMP: T.TimestampType(),
}


def _with_fields(raw: DataFrame, schema: EventSchema) -> DataFrame:
    """The plan's fields (typed nulls for those ``raw`` lacks) and the ingestion columns of ``raw``."""
    have = set(raw.columns)
    cols = [
        F.col(n) if n in have else F.lit(None).cast(_FIELD_TYPES[schema.field(n).type]).alias(n) for n in schema.names
    ]
    return raw.select(*cols, *INGEST_COLUMNS)


def _read_raw(spark: SparkSession, uri: str, dates: list[date], delta_spark: bool) -> DataFrame:
    dt = raw_log.open_table(uri)
    if dt is None:  # no event was ever stored (:func:`_with_fields` adds the plan's fields, all null)
        return spark.createDataFrame([], "ingested_at timestamp, payload_hash string")
    days = [d.isoformat() for d in dates]
    if delta_spark:
        return spark.read.format("delta").load(uri).where(F.col("event_date").isin(days))
    table_schema = T.StructType.fromJson(json.loads(dt.schema().to_json()))
    features = set(dt.protocol().reader_features or [])
    if features & {"deletionVectors", "columnMapping"}:
        raise RuntimeError(f"{uri} uses {sorted(features)}: run the batch job with delta-spark on the classpath")
    with warnings.catch_warnings():  # partition_filters is deprecated in delta-rs 1.x but still exact
        warnings.simplefilter("ignore", DeprecationWarning)
        files = dt.file_uris(partition_filters=[("event_date", "in", days)])
    if not files:
        return spark.createDataFrame([], table_schema)
    # Files written before a field was added lack its column: Spark's Parquet reader gives it null.
    file_schema = T.StructType([f for f in table_schema.fields if f.name != "event_date"])
    return spark.read.schema(file_schema).parquet(*files)


def daily_copies(uri: str) -> dict[date, int]:
    """Rows per ``event_date`` of ``raw_events`` from the Delta log's file statistics (no data read)."""
    dt = raw_log.open_table(uri)
    if dt is None:
        return {}
    actions = pa.table(dt.get_add_actions(flatten=True))
    out: dict[date, int] = {}
    for d, n in zip(
        actions.column("partition.event_date").to_pylist(), actions.column("num_records").to_pylist(), strict=True
    ):
        day = d if isinstance(d, date) else date.fromisoformat(str(d))
        out[day] = out.get(day, 0) + int(n or 0)
    return out


def copies_in(uri: str, dates: list[date]) -> int | None:
    """Rows of ``raw_events`` in the given ``event_date`` partitions from the Delta log's file statistics.

    ``None`` when the table is missing or a file has no row count (the caller then counts the rows).
    """
    return rows_in(uri, "event_date", dates)


def rows_in(uri: str, column: str, days: list[date]) -> int | None:
    """Rows of the partitions ``column`` ∈ ``days`` from the Delta log's file statistics (no data read).

    ``None`` when the table is missing or a file has no row count.
    """
    dt = raw_log.open_table(uri)
    if dt is None:
        return None
    actions = pa.table(dt.get_add_actions(flatten=True))
    wanted = set(days)
    total = 0
    for d, n in zip(
        actions.column(f"partition.{column}").to_pylist(), actions.column("num_records").to_pylist(), strict=True
    ):
        day = d if isinstance(d, date) else date.fromisoformat(str(d))
        if day in wanted:
            if n is None:
                return None
            total += int(n)
    return total


def _stage_files(df: DataFrame, uri: str, schema: pa.Schema, rel_dir: str, run_id: str) -> list[tuple[str, int, int]]:
    """Executors write their partitions as Parquet files under ``uri/rel_dir``; returns (path, size, rows)."""
    names = schema.names

    def write(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        parts = list(batches)
        rows = sum(b.num_rows for b in parts)
        if rows:
            table = lists_from_json(pa.Table.from_batches(parts).select(names), schema)
            table = pa.Table.from_arrays(
                [c.cast(f.type) for c, f in zip(table.columns, schema, strict=True)], schema=schema
            )
            fs, root = pafs.FileSystem.from_uri(uri)
            rel = f"{rel_dir}/part-{run_id}-{uuid.uuid4().hex}.parquet"
            fs.create_dir(f"{root}/{rel_dir}", recursive=True)
            pq.write_table(table, f"{root}/{rel}", filesystem=fs, compression="zstd")
            size = fs.get_file_info(f"{root}/{rel}").size
            yield pa.RecordBatch.from_pydict({"path": [rel], "size": [size], "rows": [rows]})

    out = T.StructType(
        [
            T.StructField("path", T.StringType()),
            T.StructField("size", T.LongType()),
            T.StructField("rows", T.LongType()),
        ]
    )
    return [(r["path"], r["size"], r["rows"]) for r in df.mapInArrow(write, out).collect()]


def overwrite_partition(
    df: DataFrame,
    uri: str,
    schema: pa.Schema,
    column: str,
    value: date,
    delta_spark: bool,
    run_id: str,
    before_commit: Callable[[], None] | None = None,
) -> int:
    """Replace partition ``column = value`` of the Delta table at ``uri`` with the rows of ``df``.

    Args:
        df: the rows, with the columns of ``schema`` (int64 epoch µs are cast to timestamp columns).
        uri: table location (created, partitioned by ``column``, if missing).
        schema: Arrow schema of the data columns (without ``column``).
        column: the partition column (a date).
        value: the partition to replace.
        delta_spark: commit through delta-spark instead of delta-rs.
        run_id: tag of this run in the staged file names.
        before_commit: called after the data is staged, before the commit (fault injection). With
            delta-spark, where staging and commit are one action, an exception from it makes the write
            fail inside a Spark task instead (files written, no commit) and is then re-raised.

    Returns:
        Rows written.
    """
    if delta_spark:
        cols = [
            F.timestamp_micros(F.col(f.name)).alias(f.name)
            if pa.types.is_timestamp(f.type)
            else F.from_json(F.col(f.name), T.ArrayType(_SPARK_TYPES[f.type.value_type])).alias(f.name)
            if _is_list(f.type)
            else F.col(f.name)
            for f in schema
        ]
        out = df.select(*cols).withColumn(column, F.lit(value))
        injected: Exception | None = None
        if before_commit is not None:
            try:
                before_commit()
            except Exception as exc:
                injected = exc
        if injected is not None:
            _abort_spark_write(out, uri, column, value, schema.names[0])
            raise injected
        out.write.format("delta").mode("overwrite").partitionBy(column).option(
            "replaceWhere", f"{column} = '{value.isoformat()}'"
        ).option("mergeSchema", "true").save(uri)  # a feature added to the plan: a new nullable column
        rows = rows_in(uri, column, [value])
        return spark_count(uri, column, value, df.sparkSession) if rows is None else rows
    staged = _stage_files(df, uri, schema, f"{column}={value.isoformat()}", run_id)
    if before_commit is not None:
        before_commit()
    return commit_files(uri, schema, column, value, staged)


def commit_files(uri: str, schema: pa.Schema, column: str, value: date, staged: list[tuple[str, int, int]]) -> int:
    """One delta-rs commit that makes the staged files the whole of partition ``column = value``."""
    now_ms = int(time.time() * 1000)
    part = {column: value.isoformat()}
    actions: list[AddAction | RemoveAction] = [
        AddAction(path, size, part, now_ms, True, json.dumps({"numRecords": rows}))
        for path, size, rows in sorted(staged)
    ]
    full = Schema.from_arrow(schema.append(pa.field(column, pa.date32(), nullable=False)))
    dt = raw_log.open_table(uri)
    if dt is None:
        create_table_with_add_actions(
            uri, full, [a for a in actions if isinstance(a, AddAction)], mode="error", partition_by=[column]
        )
    else:
        dt.create_write_transaction(
            actions,
            mode="overwrite",
            schema=full,
            partition_by=[column],
            partition_filters=[(column, "=", value.isoformat())],
        )
    return sum(rows for _, _, rows in staged)


def _abort_spark_write(out: DataFrame, uri: str, column: str, value: date, first: str) -> None:
    """Run the delta-spark write with a task that fails: some data files get written, no commit is made."""
    failing = out.withColumn(
        first,
        F.when(F.spark_partition_id() == 0, F.raise_error(F.lit("fstore: injected failure before commit"))).otherwise(
            F.col(first)
        ),
    )
    try:
        failing.write.format("delta").mode("overwrite").partitionBy(column).option(
            "replaceWhere", f"{column} = '{value.isoformat()}'"
        ).save(uri)
    except Exception as exc:  # the expected task failure; the write aborted without a commit
        if "injected failure" not in str(exc):
            raise


def spark_count(uri: str, column: str, value: date, spark: SparkSession) -> int:
    """Rows of one partition of a Delta table, read through delta-spark."""
    return int(spark.read.format("delta").load(uri).where(F.col(column) == F.lit(value)).count())


def overwrite_small(uri: str, table: pa.Table, column: str, value: date, spark: SparkSession | None = None) -> None:
    """Replace one partition of a small driver-side table (e.g. ``dq_reports``) in one Delta commit.

    Committed by delta-spark when ``spark`` is given (a session with delta-spark), else by delta-rs.
    """
    if spark is None:
        write_deltalake(
            uri, table, mode="overwrite", partition_by=[column], predicate=f"{column} = '{value.isoformat()}'"
        )
        return
    spark.createDataFrame(table).write.format("delta").mode("overwrite").partitionBy(column).option(
        "replaceWhere", f"{column} = '{value.isoformat()}'"
    ).option("mergeSchema", "true").save(uri)
