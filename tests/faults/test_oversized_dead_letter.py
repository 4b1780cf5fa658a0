"""Issue 12, row 2 (and Build 2): a 1.5 MB message the broker accepts on ``events``.

Before: classed ``oversized``, but its dead letter could never be sent (producer limit 1 MiB), so the
partition was stuck across restarts and every retry re-sent the batch's other dead letters (96 copies of 4
messages in 2 minutes). Now the dead letter is cut (headers keep the original size and hash), and cut again
to 1 KiB when the DLQ topic's own limit is lower still (here 100 kB, a real MESSAGE_TOO_LARGE from the
broker); the partition goes on, and each dead letter is in the DLQ once (one record per source position).
"""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
import redis
from confluent_kafka.admin import AdminClient
from confluent_kafka.admin._config import AlterConfigOpType, ConfigEntry, ConfigResource

from fstore.core.events import payload_hash
from fstore.delta import raw_log
from fstore.devsvc.services import Broker
from fstore.kafka import client as kafka_io
from jobs.stream.dead_letters import FALLBACK_BYTES
from tests.support.stream import Factory, assert_tiles_exact, dlq_reasons, make_traffic, publish

pytestmark = pytest.mark.faults


def set_max_message_bytes(broker: Broker, topic: str, size: int) -> None:
    admin = AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})
    entry = ConfigEntry("max.message.bytes", str(size), incremental_operation=AlterConfigOpType.SET)
    res = ConfigResource("topic", topic, incremental_configs=[entry])
    for fut in admin.incremental_alter_configs([res]).values():
        fut.result(30)


def test_a_message_too_big_for_the_dlq_goes_there_cut_once_and_never_blocks_its_partition(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    traffic = make_traffic(2_000, seed=71, users=100, products=20)
    w = worker_factory(kafka_broker, FSTORE_STREAM_BATCH_WITHIN_S="0.5")
    set_max_message_bytes(kafka_broker, w.topic, 2_000_000)  # the broker accepts 1.5 MB on events
    set_max_message_bytes(kafka_broker, w.dlq, 100_000)  # but not even 1 MB on the DLQ
    big = orjson.dumps({"event_id": "big", "event_type": "click", "user_id": "u1", "pad": "x" * 1_500_000})
    others = [b"not json", b'{"event_id": 5}', b"[]", b'{"event_id": "x", "event_type": "nope"}']
    w.start()
    rep = kafka_io.publish(
        [(["u1"] * 5, [big, *others])], kafka_broker.bootstrap, w.topic, config={"message.max.bytes": 2_000_000}
    )
    assert rep.ok, rep.summary()
    publish(kafka_broker, w.topic, traffic)  # behind it, on the same partitions
    w.wait_done(len(traffic.values) + 5, timeout=120)
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

    records = kafka_io.read_topic(kafka_broker.bootstrap, w.dlq, timeout=60)
    assert len({r.key for r in records}) == len(records) == sum(traffic.malformed.values()) + 5  # sent once each
    reasons = dlq_reasons(kafka_broker, w.dlq, records)
    (cut,) = [r for r, reason in reasons if reason == "oversized" and len(r.value) == FALLBACK_BYTES]
    assert cut.value == big[:FALLBACK_BYTES] and cut.key is not None and cut.key.startswith(w.topic.encode())
    headers = dlq_headers(kafka_broker, w.dlq, cut.partition, cut.offset)
    assert headers["fstore-original-size"] == str(len(big)).encode()
    assert headers["fstore-original-hash"] == payload_hash(big).encode()
    assert {r.value for r, _ in reasons} >= set(others)
    assert_tiles_exact(redis_client, traffic)
    stored = set(raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"]).column("event_id").to_pylist())
    assert stored == traffic.valid_ids


def dlq_headers(broker: Broker, topic: str, partition: int, offset: int) -> dict[str, bytes]:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "fstore-faults-headers"})
    try:
        c.assign([TopicPartition(topic, partition, offset)])
        msg = c.consume(1, 30)[0]
        return {k: bytes(v or b"") for k, v in msg.headers() or []}  # type: ignore[str-unpack, arg-type]
    finally:
        c.close()
