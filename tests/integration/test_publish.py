"""``fstore publish``: message files into a real broker, byte-identical and in order."""

from __future__ import annotations

import json
import time
import uuid
from datetime import datetime
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner

from fstore.commands.publish import publish as publish_cmd
from fstore.devsvc.services import Broker, ensure_topics, free_port
from fstore.kafka import client as kafka_io
from fstore.kafka.messages import MessageWriter

pytestmark = pytest.mark.integration


def event(i: int) -> bytes:
    return json.dumps(
        {
            "event_id": f"e{i}",
            "event_type": "click",
            "user_id": f"u{i % 5}",
            "product_id": f"p{i % 3}",
            "event_time": 1_763_700_000_000 + i,
        }
    ).encode()


def messages() -> tuple[list[str | None], list[bytes]]:
    """Valid events plus the awkward ones a replay must keep byte-for-byte, with their expected keys."""
    values = [event(i) for i in range(300)]
    values += [b"{oops", b'{"user_id": 42}', b'["u1"]', '{"user_id":"ü-1","x":"é"}'.encode(), b" x " * 10]
    keys: list[str | None] = [*(f"u{i % 5}" for i in range(300)), None, None, None, "ü-1", None]
    return keys, values


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_publish_file_round_trip(tmp_path: Path, kafka_broker: Broker, ext: str) -> None:
    keys, values = messages()
    path = tmp_path / f"events.{ext}"
    with MessageWriter(path) as writer:  # Parquet keys come from the file: make them differ from user_id
        file_keys = [None if k is None else f"key-{k}" for k in keys] if ext == "parquet" else keys
        writer.write(file_keys[:100], values[:100])
        writer.write(file_keys[100:], values[100:])
    topic = f"pub-{uuid.uuid4().hex[:8]}"

    result = CliRunner().invoke(
        publish_cmd,
        [str(path), "--topic", topic, "--bootstrap", kafka_broker.bootstrap, "--no-progress", "--batch-size", "64"],
    )
    assert result.exit_code == 0, result.output
    assert f"published {len(values)} messages to '{topic}'" in result.output
    assert f"{len(values)} delivered, 0 failed" in result.output

    records = kafka_io.read_topic(kafka_broker.bootstrap, topic)
    assert [r.value for r in records] == values
    assert [None if r.key is None else r.key.decode() for r in records] == file_keys


def test_publish_paces_to_the_rate(kafka_broker: Broker) -> None:
    topic = f"rate-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, {topic: 1})
    values = [event(i) for i in range(600)]
    batches = [([None] * 200, values[i : i + 200]) for i in range(0, 600, 200)]
    report = kafka_io.publish(batches, kafka_broker.bootstrap, topic, rate=1000)
    assert report.ok and report.sent == report.delivered == 600
    assert 0.55 <= report.elapsed < 2.0
    assert 400 < report.rate <= 1100
    assert [r.value for r in kafka_io.read_topic(kafka_broker.bootstrap, topic)] == values


def test_delivery_failures_are_counted(kafka_broker: Broker) -> None:
    topic = f"big-{uuid.uuid4().hex[:8]}"
    ensure_topics(kafka_broker.bootstrap, {topic: 1})
    values = [b"a", b"x" * 20_000, b"b"]
    report = kafka_io.publish(
        [([None] * 3, values)], kafka_broker.bootstrap, topic, config={"message.max.bytes": 10_000}
    )
    assert (report.sent, report.rejected, report.delivered, report.failed) == (2, 1, 2, 1)
    assert report.errors == {"MSG_SIZE_TOO_LARGE": 1} and not report.ok
    assert "1 failed" in report.summary()

    dead = f"127.0.0.1:{free_port()}"  # nothing listens: every message times out
    report = kafka_io.publish([([None] * 5, [b"m"] * 5)], dead, topic, config={"message.timeout.ms": 1000})
    assert report.sent == 5 and report.delivered == 0 and report.failed == 5
    assert sum(report.errors.values()) == 5


def test_publish_live(kafka_broker: Broker) -> None:
    topic = f"live-{uuid.uuid4().hex[:8]}"
    result = CliRunner().invoke(
        publish_cmd,
        [
            "--live",
            "--rate",
            "400",
            "--duration",
            "2",
            "--topic",
            topic,
            "--bootstrap",
            kafka_broker.bootstrap,
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output
    records = kafka_io.read_topic(kafka_broker.bootstrap, topic)
    assert 500 < len(records) < 1100
    sent_at = time.time() * 1000
    for r in records:
        ev = orjson.loads(r.value)
        t = ev["event_time"]
        ms = t if isinstance(t, int) else datetime.fromisoformat(t).timestamp() * 1000
        assert ms <= r.timestamp_ms <= sent_at  # never in the future when sent
        assert r.key is not None and r.key.decode() == ev["user_id"]
