"""Helpers of the fault matrix (tests/faults/): topic surgery with the admin API and waiting for a worker."""

from __future__ import annotations

import time

from confluent_kafka import Consumer, KafkaException, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient
from confluent_kafka.cimpl import NewPartitions, NewTopic

from fstore.devsvc.services import Broker
from tests.support.stream import POLL_S, WorkerProcess


def admin(broker: Broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.bootstrap, "log_level": 0})


def topic_id(client: AdminClient, topic: str) -> tuple[str, int]:
    """The topic's id and partition count."""
    d = client.describe_topics(TopicCollection([topic]))[topic].result(30)
    return str(d.topic_id), len(d.partitions)


def recreate_topic(broker: Broker, topic: str, partitions: int) -> None:
    """Delete ``topic`` and create it again, empty, with ``partitions`` partitions (a new topic id).

    A running client's metadata request may auto-create the topic between the deletion and the creation
    (the broker's ``auto.create.topics.enable``): a topic with another id is then the new one, given the
    partitions asked for."""
    client = admin(broker)
    old, _ = topic_id(client, topic)
    client.delete_topics([topic], operation_timeout=30)[topic].result(30)
    deadline = time.monotonic() + 60
    while True:  # deletion completes asynchronously: create until the broker accepts it
        try:
            client.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30)[topic].result(30)
            return
        except KafkaException:
            try:
                new, count = topic_id(client, topic)
            except KafkaException:
                new, count = old, 0
            if new != old:  # auto-created since the deletion
                if count < partitions:
                    add_partitions(broker, topic, partitions)
                return
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


def add_partitions(broker: Broker, topic: str, total: int) -> None:
    client = admin(broker)  # must outlive its futures
    client.create_partitions([NewPartitions(topic, total)], operation_timeout=30)[topic].result(30)


def ends(broker: Broker, topic: str) -> dict[int, int]:
    """High watermark of each partition of ``topic``."""
    c = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": "fstore-faults-ends"})
    try:
        parts = c.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in parts}
    finally:
        c.close()


def wait_caught_up(w: WorkerProcess, timeout: float) -> None:
    """Until the worker's group has committed the end of every partition of its topic (it is still running)."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        assert w.proc is not None and w.proc.poll() is None, w.log_tail()
        try:
            want = ends(w.broker, w.topic)
            c = Consumer({"bootstrap.servers": w.broker.bootstrap, "group.id": w.group, "enable.auto.commit": False})
            try:
                got = c.committed([TopicPartition(w.topic, p) for p in want], timeout=10)
            finally:
                c.close()
            last = (want, {tp.partition: tp.offset for tp in got})
            if all(tp.offset == want[tp.partition] or (want[tp.partition] == 0 > tp.offset) for tp in got):
                return
        except KafkaException as exc:  # coordinator loading after a broker start: ask again
            last = exc
        time.sleep(POLL_S)
    raise AssertionError(f"not caught up after {timeout} s: {last}\n{w.log_tail()}")
