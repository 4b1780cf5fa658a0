"""``raw_events`` follows the plan's event schema on a real Delta table (docs/design.md §2).

The example's columns are exactly today's; a second schema (rides) gets its own columns. Adding an
optional field to the schema adds a nullable column — older rows read null —, removing one keeps its
column (history stays) and new rows carry null there. Both writers evolve the table: ``fstore ingest``
(conditional appends) and the stream's raw sink (plain appends).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pytest

from fstore.core.event_schema import EventField, EventSchema, FieldType
from fstore.core.plan import Plan
from fstore.core.timeutil import HOUR
from fstore.delta import raw_log
from fstore.ingest import Ingestor
from fstore.kafka.messages import MessageWriter
from jobs.stream.sinks import RawSink
from tests.support.repos import compiled

pytestmark = pytest.mark.integration

NOW = 1_800_000_000_000_000
TS = pa.timestamp("us", tz="UTC")


def test_the_examples_columns_are_todays() -> None:
    """The example schema gives exactly the columns and types raw_events always had."""
    assert raw_log.raw_schema(compiled("ecommerce").schema) == pa.schema(
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


def with_fields(schema: EventSchema, add: tuple[EventField, ...] = (), drop: str | None = None) -> EventSchema:
    return replace(schema, fields=tuple(f for f in schema.fields if f.name != drop) + add)


def ride(i: int, **kw: object) -> bytes:
    body = {"uid": f"r{i}", "kind": "requested", "zone_id": f"z{i % 3}", "ts": (NOW - HOUR) // 1000 + i, **kw}
    return json.dumps(body).encode()


def ingest(tmp_path: Path, plan: Plan, msgs: list[bytes], name: str) -> None:
    path = tmp_path / f"{name}.jsonl"
    with MessageWriter(path) as w:
        w.write([None] * len(msgs), msgs)
    ing = Ingestor(str(tmp_path / "raw_events"), str(tmp_path / "dead_letters"), clock=lambda: NOW, plan=plan)
    rep = ing.ingest_file(path)
    assert rep.written == len(msgs) and not rep.rejected, rep.summary()


def test_fields_added_and_removed_evolve_the_table(tmp_path: Path) -> None:
    rides = compiled("rides")
    uri = str(tmp_path / "raw_events")
    ingest(tmp_path, rides, [ride(i, airport=True) for i in range(5)], "first")
    assert raw_log.read_table(uri).schema.names == raw_log.raw_schema(rides.schema).names

    # an optional field added: a nullable column, null in the older rows (ingest path)
    promo = replace(rides, schema=with_fields(rides.schema, add=(EventField("promo", FieldType.STRING),)))
    ingest(tmp_path, promo, [ride(i, promo="spring", airport=False) for i in range(5, 8)], "second")
    table = raw_log.read_table(uri).sort_by("uid")
    assert "promo" in table.schema.names and table.schema.field("promo").nullable
    by_id = {r["uid"]: r for r in table.to_pylist()}
    assert [by_id[f"r{i}"]["promo"] for i in range(8)] == [None] * 5 + ["spring"] * 3
    assert [by_id[f"r{i}"]["airport"] for i in range(8)] == [True] * 5 + [False] * 3

    # a field removed: its column stays, new rows null there, the history kept (stream's raw sink path)
    gone = with_fields(promo.schema, drop="airport")
    sink = RawSink(uri, gone, 1_000, 60.0)
    rows = [
        {**{f.name: None for f in gone.fields}, "uid": f"r{i}", "kind": "requested", "zone_id": "z1",
         "ts": NOW - HOUR + i, "surge": 1.0, "promo": "fall"}
        for i in range(8, 10)
    ]  # fmt: skip
    sink.add(sink.to_rows(rows, ["h8", "h9"], [NOW + 1, NOW + 2]), ["token"])
    assert sink.flush_sync() == (["token"], 2)
    table = raw_log.read_table(uri)
    assert set(raw_log.raw_schema(promo.schema).names) <= set(table.schema.names)
    by_id = {r["uid"]: r for r in table.to_pylist()}
    assert len(by_id) == 10
    assert [by_id[f"r{i}"]["airport"] for i in range(10)] == [True] * 5 + [False] * 3 + [None] * 2
    assert [by_id[f"r{i}"]["promo"] for i in range(8, 10)] == ["fall"] * 2
    assert by_id["r9"]["ts"] is not None and by_id["r9"]["event_date"] is not None


def test_a_removed_required_field_is_refused_loudly(tmp_path: Path) -> None:
    """A NOT NULL column cannot take null rows: the write fails, naming the column and what to do."""
    rides = compiled("rides")
    uri = str(tmp_path / "raw_events")
    ingest(tmp_path, rides, [ride(0)], "first")
    gone = with_fields(rides.schema, drop="zone_id")
    rows = [{**{f.name: None for f in gone.fields}, "uid": "x", "kind": "requested", "ts": NOW, "surge": 1.0}]
    with pytest.raises(ValueError, match="zone_id"):
        raw_log.append_raw(uri, raw_log.rows_table(gone, rows, ["h"], [NOW]))
