"""delta-spark and delta-rs on the same tables: what one writes the other reads identically (content hashes),
also after schema evolution (a new nullable column), in both directions and with both writers on one table.

The batch job's own tables are checked the same way in test_batch.py (the same night committed by each).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from deltalake import DeltaTable, write_deltalake

from fstore.jvm.spark import has_delta_spark
from tests.support.delta import content_hash, spark_read

pytestmark = pytest.mark.integration

TS = pa.timestamp("us", tz="UTC")
SCHEMA = pa.schema(
    [
        ("event_id", pa.string()),
        ("n", pa.int64()),
        ("quantity", pa.int32()),
        ("price", pa.float64()),
        ("event_time", TS),
        ("event_date", pa.date32()),
    ]
)


def rows(lo: int, hi: int) -> pa.Table:
    """Rows ``lo..hi-1`` over three days, with nulls, a NaN-free float, microsecond timestamps."""
    base = datetime(2026, 11, 20, tzinfo=UTC)
    times = [base + timedelta(hours=7 * i, microseconds=i) for i in range(lo, hi)]
    return pa.table(
        {
            "event_id": [f"e{i}" for i in range(lo, hi)],
            "n": [i * 1_000_003 for i in range(lo, hi)],
            "quantity": pa.array([None if i % 5 == 0 else i % 4 + 1 for i in range(lo, hi)], pa.int32()),
            "price": [None if i % 3 else i / 7 for i in range(lo, hi)],
            "event_time": pa.array(times, TS),
            "event_date": pa.array([t.date() for t in times], pa.date32()),
        },
        schema=SCHEMA,
    )


def with_session(table: pa.Table, session_ids: list[str | None] | None) -> pa.Table:
    """``table`` with the evolved column ``session_id`` (all null when ``session_ids`` is None)."""
    values = session_ids if session_ids is not None else [None] * table.num_rows
    return table.append_column(pa.field("session_id", pa.string()), pa.array(values, pa.string()))


@pytest.fixture(scope="module")
def spark() -> Iterator[Any]:
    from fstore.offline.spark import spark_session

    session = spark_session("fstore-test-delta-engines")
    assert has_delta_spark(session), "delta-spark jars missing: run `make setup`"
    # a local driver listens on loopback only, whatever the host name resolves to (probe-docs)
    assert session.conf.get("spark.driver.bindAddress") == session.conf.get("spark.driver.host") == "127.0.0.1"
    yield session
    session.stop()


def spark_write(spark: Any, table: pa.Table, uri: str, mode: str, merge: bool = False) -> None:
    writer = spark.createDataFrame(table).write.format("delta").mode(mode).partitionBy("event_date")
    writer.option("mergeSchema", str(merge).lower()).save(uri)


def by_rs(uri: str) -> str:
    return content_hash(DeltaTable(uri).to_pyarrow_table())


def by_spark(spark: Any, uri: str) -> str:
    return content_hash(spark_read(spark, uri))


def test_delta_spark_writes_delta_rs_reads_identically(spark: Any, tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first, second = rows(0, 200), rows(200, 300)
    spark_write(spark, first, uri, "overwrite")
    spark_write(spark, second, uri, "append")
    want = content_hash(pa.concat_tables([first, second]))
    assert by_rs(uri) == want == by_spark(spark, uri)
    dt = DeltaTable(uri)
    assert dt.metadata().partition_columns == ["event_date"]
    assert not set(dt.protocol().reader_features or []) & {"deletionVectors", "columnMapping"}
    assert "Delta-Lake" in str(dt.history(1)[0].get("engineInfo"))  # really written by delta-spark
    # a partition filter gives the same rows through both readers
    day = date(2026, 11, 21)
    part = dt.to_pyarrow_table(filters=pc.field("event_date") == pa.scalar(day, pa.date32()))
    assert part.num_rows > 0
    assert content_hash(part) == content_hash(spark_read(spark, uri, f"event_date = '{day}'"))

    # schema evolution by delta-spark: a new nullable column; old rows read it as null in both readers
    evolved = with_session(rows(300, 360), [f"s{i % 4}" if i % 2 else None for i in range(60)])
    spark_write(spark, evolved, uri, "append", merge=True)
    want = content_hash(pa.concat_tables([with_session(first, None), with_session(second, None), evolved]))
    assert by_rs(uri) == want == by_spark(spark, uri)
    assert "session_id" in DeltaTable(uri).schema().to_arrow().names


def test_delta_rs_writes_delta_spark_reads_identically(spark: Any, tmp_path: Path) -> None:
    uri = str(tmp_path / "t")
    first = rows(0, 250)
    write_deltalake(uri, first, mode="append", partition_by=["event_date"])
    assert by_spark(spark, uri) == content_hash(first) == by_rs(uri)

    evolved = with_session(rows(250, 300), [f"s{i}" for i in range(50)])
    write_deltalake(uri, evolved, mode="append", partition_by=["event_date"], schema_mode="merge")
    want = content_hash(pa.concat_tables([with_session(first, None), evolved]))
    assert by_spark(spark, uri) == want == by_rs(uri)


def on_day(table: pa.Table, day: date) -> pa.Table:
    return table.set_column(5, "event_date", pa.array([day] * table.num_rows, pa.date32()))


def without_day(table: pa.Table, day: date) -> pa.Table:
    return table.filter(pc.not_equal(table["event_date"], pa.scalar(day, pa.date32())))


def test_both_writers_on_one_table(spark: Any, tmp_path: Path) -> None:
    """delta-rs appends to and replaces a partition of a delta-spark table, then delta-spark replaces another."""
    uri = str(tmp_path / "t")
    a, b = rows(0, 100), rows(100, 200)
    d1, d2 = date(2026, 11, 21), date(2026, 11, 20)
    spark_write(spark, a, uri, "overwrite")
    write_deltalake(uri, b, mode="append", partition_by=["event_date"])
    by_rs_writer = on_day(rows(1000, 1010), d1)
    write_deltalake(uri, by_rs_writer, mode="overwrite", predicate=f"event_date = '{d1}'")
    table = pa.concat_tables([without_day(pa.concat_tables([a, b]), d1), by_rs_writer])
    assert by_spark(spark, uri) == content_hash(table) == by_rs(uri)

    by_spark_writer = on_day(rows(2000, 2005), d2)
    spark.createDataFrame(by_spark_writer).write.format("delta").mode("overwrite").option(
        "replaceWhere", f"event_date = '{d2}'"
    ).save(uri)
    table = pa.concat_tables([without_day(table, d2), by_spark_writer])
    assert by_rs(uri) == content_hash(table) == by_spark(spark, uri)
    assert [c.get("operation") for c in DeltaTable(uri).history(2)] == ["WRITE", "WRITE"]
