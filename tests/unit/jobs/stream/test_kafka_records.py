"""The bulk consumer's records (:mod:`jobs.stream.kafka_records`): aiokafka's parsed records, with the same
offsets, timestamps, keys and values as the ``ConsumerRecord``\\ s any other consumer still gets."""

from __future__ import annotations

import asyncio
from typing import Any

import aiokafka.consumer.fetcher as fetcher
import pytest
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import ConsumerRecord, TopicPartition

from fstore.core.plan import Plan
from jobs.stream import kafka_records
from jobs.stream.fakes import MemorySinks
from jobs.stream.layer import SpeedLayer
from jobs.stream.settings import StreamSettings

pytestmark = pytest.mark.unit

TP = TopicPartition("events", 3)
MESSAGES = [(b"u1", b'{"a":1}'), (None, b'{"b":2}'), (b"u3", None), (b"", b"")]


def fetched(value_deserializer: Any, first: int = 40, fetch_offset: int = 41) -> list[Any]:
    """The records a consumer gets from one fetched batch (offsets ``first``..., read from ``fetch_offset``)."""
    builder = DefaultRecordBatchBuilder(2, 0, 0, -1, -1, -1, 1 << 20)
    for i, (key, value) in enumerate(MESSAGES):
        builder.append(first + i, 1_700_000_000_000 + i, key, value, [])
    records = MemoryRecords(bytes(builder.build()))
    parts = fetcher.PartitionRecords(TP, records, [], fetch_offset, None, value_deserializer, True, 0)
    return list(parts)


def test_the_marked_consumer_gets_the_parsed_records_with_the_same_fields() -> None:
    assert kafka_records.install() and kafka_records.install()  # idempotent
    mine, usual = fetched(kafka_records.mark), fetched(None)
    assert all(type(r) is ConsumerRecord for r in usual)
    assert not any(isinstance(r, ConsumerRecord) for r in mine)
    fields = ["offset", "timestamp", "key", "value"]
    assert [[getattr(r, f) for f in fields] for r in mine] == [[getattr(r, f) for f in fields] for r in usual]
    assert [(r.offset, r.key, r.value) for r in mine] == [(41 + i, *m) for i, m in enumerate(MESSAGES[1:])]


def test_the_speed_layer_consumes_marked(plan: Plan) -> None:
    sinks = MemorySinks(plan)
    layer = SpeedLayer(StreamSettings(), None, sinks.dead, kv=sinks.kv, tiles=sinks.tiles, raw=sinks.raw)

    async def build() -> Any:
        consumer = layer.make_consumer()
        return consumer._value_deserializer, consumer._key_deserializer

    assert asyncio.run(build()) == (kafka_records.mark, None)
    assert fetcher.PartitionRecords is kafka_records._ParsedRecords
