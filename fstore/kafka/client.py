"""Publishing message files and generated traffic to Kafka (confluent-kafka / librdkafka).

The producer is configured for an ordered replay: ``acks=all`` and one request in flight per
connection, so a retry cannot reorder messages within a partition, and every message gets a delivery
report that is counted — a failed or undelivered message is reported, never silently dropped. Values
are sent byte-for-byte as they are in the file (malformed or oversized events included: the stream job
must see them to dead-letter them).

The producer is idempotent: a retry after a lost acknowledgement (a broker restart, say) does not write
the message twice, because Kafka keeps producer ids and sequence numbers in its log. Duplicates that do
reach the topic (a source that replays) count once anyway, by the declared id field.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from confluent_kafka import KafkaError, KafkaException, Message, Producer

from fstore.kafka.messages import MessageFileError, file_format, iter_batches, parquet_file

Batch = tuple[Sequence[str | None], Sequence[bytes]]

#: Producer settings measured against a local broker: large batches and a short linger keep librdkafka's
#: throughput up (one request in flight costs nothing measurable here); compression stays off by default
#: because aiokafka (Faust) needs extra packages to read lz4/zstd/snappy batches.
PRODUCER_DEFAULTS: dict[str, Any] = {
    "acks": "all",
    "enable.idempotence": True,
    "max.in.flight.requests.per.connection": 1,
    "linger.ms": 10,
    "batch.size": 1_000_000,
    "batch.num.messages": 100_000,
    "queue.buffering.max.messages": 500_000,
    "compression.type": "none",
    "message.timeout.ms": 30_000,
}


def producer_config(bootstrap: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """librdkafka configuration: :data:`PRODUCER_DEFAULTS` + ``bootstrap.servers`` + ``overrides``."""
    return {**PRODUCER_DEFAULTS, "bootstrap.servers": bootstrap, **(overrides or {})}


def key_of(message: bytes, field: str) -> str | None:
    """The Kafka key of a raw message: its ``field`` when it is JSON with a string there, else None."""
    try:
        obj = orjson.loads(message)
    except orjson.JSONDecodeError:
        return None
    key = obj.get(field) if isinstance(obj, dict) else None
    return key if isinstance(key, str) else None


_TEXT_OR_BYTES = (
    pa.types.is_string,
    pa.types.is_large_string,
    pa.types.is_binary,
    pa.types.is_large_binary,
    pa.types.is_fixed_size_binary,
)


def _key_type_ok(kind: pa.DataType) -> bool:
    """Whether a Parquet ``key`` column reads as text or bytes (a dictionary of them too: pandas categories)."""
    if pa.types.is_dictionary(kind):
        kind = kind.value_type
    return pa.types.is_null(kind) or any(ok(kind) for ok in _TEXT_OR_BYTES)


def iter_keyed_batches(
    path: str | Path, key_field: str, batch_size: int = 10_000
) -> Iterator[tuple[list[str | None], list[bytes]]]:
    """``(keys, values)`` of a message file in log order, batch by batch.

    Parquet files carry the key column; for JSONL (and a Parquet file without one) the key is the message's
    ``key_field`` (:func:`key_of`).

    Raises:
        MessageFileError: at the call, before any batch: not a message file, or a Parquet ``key`` column
            that is not text or bytes.
    """
    if file_format(path) != "parquet":
        return (([key_of(v, key_field) for v in values], values) for values in iter_batches(path, batch_size))
    pf = parquet_file(path)
    keyed = "key" in pf.schema_arrow.names
    if keyed and not _key_type_ok(pf.schema_arrow.field("key").type):
        raise MessageFileError(
            f"{path}: the Parquet column 'key' (the Kafka key) must be string or binary, "
            f"found {pf.schema_arrow.field('key').type}; cast it, or drop it to key by '{key_field}'"
        )
    return _parquet_keyed(pf, keyed, key_field, batch_size)


def _parquet_keyed(
    pf: pq.ParquetFile, keyed: bool, key_field: str, batch_size: int
) -> Iterator[tuple[list[str | None], list[bytes]]]:
    for rb in pf.iter_batches(batch_size=batch_size, columns=["key", "value"] if keyed else ["value"]):
        values = rb.column("value").to_pylist()  # a null (a tombstone) is sent as one
        keys = rb.column("key").to_pylist() if keyed else [key_of(v, key_field) if v else None for v in values]
        yield keys, values


@dataclass
class PublishReport:
    """Counts of one publish run. ``sent`` = accepted by the producer; ``delivered + failed == sent +
    rejected`` once the run is complete (``rejected`` = refused by produce() itself, e.g. too large)."""

    topic: str
    target_rate: float = 0.0
    sent: int = 0
    rejected: int = 0
    delivered: int = 0
    failed: int = 0
    elapsed: float = 0.0
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def rate(self) -> float:
        """Achieved rate: messages accepted per second of wall time, flush included."""
        return self.sent / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def ok(self) -> bool:
        """True when every message was delivered."""
        return self.failed == 0

    def summary(self) -> str:
        """One line for humans: counts, achieved and target rate, errors by reason."""
        target = f"target {self.target_rate:,.0f}/s" if self.target_rate > 0 else "no rate limit"
        line = (
            f"published {self.sent:,} messages to {self.topic!r} in {self.elapsed:.2f} s "
            f"({self.rate:,.0f} msg/s, {target}): {self.delivered:,} delivered, {self.failed:,} failed"
        )
        if self.errors:
            line += " [" + ", ".join(f"{k}: {v:,}" for k, v in self.errors.most_common()) + "]"
        return line


class Pacer:
    """Holds a producer loop to ``rate`` messages per second on average since :meth:`start`.

    Args:
        rate: messages per second; 0 or less disables pacing.
        clock: monotonic seconds (injectable for tests).
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.clock = clock
        self.started = clock()

    def start(self) -> None:
        """Reset the origin of the schedule to now."""
        self.started = self.clock()

    def delay(self, sent: int) -> float:
        """Seconds to wait before message number ``sent`` (0-based) is due; 0 when it is due now."""
        if self.rate <= 0:
            return 0.0
        return max(0.0, self.started + sent / self.rate - self.clock())


class Publisher:
    """A confluent-kafka producer to one topic that counts every delivery report.

    Use as a context manager, or call :meth:`close` to flush; the report is complete after that.

    Args:
        bootstrap: ``bootstrap.servers``.
        topic: destination topic (create it first: a producer auto-creates it with the broker's default).
        rate: target messages per second for :meth:`send` (0 = as fast as possible).
        config: librdkafka overrides on top of :data:`PRODUCER_DEFAULTS`.
    """

    def __init__(
        self, bootstrap: str, topic: str, *, rate: float = 0.0, config: Mapping[str, Any] | None = None
    ) -> None:
        self.config = producer_config(bootstrap, config)
        self.topic = topic
        self.report = PublishReport(topic=topic, target_rate=rate)
        self.pacer = Pacer(rate)
        self._producer = Producer(self.config)
        self._t0 = time.monotonic()

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is None:
            self.report.delivered += 1
        else:
            self.report.failed += 1
            self.report.errors[err.name()] += 1

    def send(
        self,
        keys: Sequence[str | None],
        values: Sequence[bytes],
        *,
        due: Sequence[float] | None = None,
        deadline: float | None = None,
        progress: Callable[[int], object] | None = None,
    ) -> bool:
        """Produce messages in order, paced to the target rate or to a schedule.

        Args:
            keys: Kafka keys (``None`` = no key), one per value.
            values: message bytes.
            due: ``time.monotonic()`` at which each message is due (non-decreasing); replaces the rate.
            deadline: ``time.monotonic()`` after which no more messages are sent.
            progress: called with the number of messages accepted since the previous call.

        Returns:
            False if the deadline stopped the batch early, else True.
        """
        produce, poll, rep = self._producer.produce, self._producer.poll, self.report
        step = 1000 if self.pacer.rate <= 0 else max(1, min(1000, int(self.pacer.rate / 50)))
        done = 0

        def delay(i: int) -> float:
            if due is None:
                return self.pacer.delay(rep.sent + rep.rejected)
            return max(0.0, due[i] - time.monotonic())

        for i, (key, value) in enumerate(zip(keys, values, strict=True)):
            if i % step == 0:
                if progress is not None and i > done:
                    progress(i - done)
                    done = i
                wait = delay(i)
                if deadline is not None and time.monotonic() + wait >= deadline:
                    time.sleep(max(0.0, deadline - time.monotonic()))
                    if progress is not None and i > done:
                        progress(i - done)
                    return False
                while wait > 0:  # serve delivery reports while waiting
                    poll(wait)
                    wait = delay(i)
            while True:
                try:
                    produce(self.topic, value, key, on_delivery=self._on_delivery)
                    rep.sent += 1
                    break
                except BufferError:  # local queue full: let librdkafka drain it
                    poll(0.05)
                except KafkaException as exc:  # refused outright (e.g. message too large)
                    rep.rejected += 1
                    rep.failed += 1
                    rep.errors[exc.args[0].name()] += 1
                    break
            poll(0)
        if progress is not None and len(values) > done:
            progress(len(values) - done)
        return True

    def close(self) -> PublishReport:
        """Flush, wait for every delivery report (bounded by ``message.timeout.ms``) and finish the report.

        Messages still without a report after that are counted as failed (``undelivered``).
        """
        timeout = float(self.config.get("message.timeout.ms", 300_000)) / 1000 + 5
        remaining = self._producer.flush(timeout)
        if remaining:
            self.report.failed += remaining
            self.report.errors["undelivered"] += remaining
        self.report.elapsed = time.monotonic() - self._t0
        return self.report

    def restart_clock(self) -> float:
        """Restart the rate schedule and the elapsed time from now (``time.monotonic()``, returned)."""
        self._t0 = time.monotonic()
        self.pacer.start()
        return self._t0

    def __enter__(self) -> Publisher:
        self.restart_clock()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def publish(
    batches: Iterable[Batch],
    bootstrap: str,
    topic: str,
    *,
    rate: float = 0.0,
    duration: float | None = None,
    config: Mapping[str, Any] | None = None,
    progress: Callable[[int], object] | None = None,
) -> PublishReport:
    """Send ``(keys, values)`` batches to ``topic`` in order at ``rate`` messages/s, then flush.

    Args:
        batches: the messages; consumed lazily, so a generator of endless traffic is fine with ``duration``.
        bootstrap: ``bootstrap.servers``.
        topic: destination topic.
        rate: target messages per second (0 = as fast as possible).
        duration: stop sending after this many seconds (None = until ``batches`` is exhausted).
        config: librdkafka overrides.
        progress: called with counts of newly accepted messages.

    Returns:
        The complete report (every message accounted for as delivered or failed).
    """
    with Publisher(bootstrap, topic, rate=rate, config=config) as pub:
        deadline = None if duration is None else time.monotonic() + duration
        for keys, values in batches:
            if not pub.send(keys, values, deadline=deadline, progress=progress):
                break
            if deadline is not None and time.monotonic() >= deadline:
                break
    return pub.report


@dataclass(frozen=True)
class Record:
    """One consumed message."""

    partition: int
    offset: int
    key: bytes | None
    value: bytes
    timestamp_ms: int


def read_topic(bootstrap: str, topic: str, *, timeout: float = 30.0) -> list[Record]:
    """Every message currently in ``topic``, partition by partition in offset order.

    Partitions are assigned directly (no consumer group: no join delay, no committed offsets) and read
    from offset 0 until the consumer reports end-of-partition (the watermarks only tell which partitions
    are empty).

    Raises:
        TimeoutError: if the end of every partition is not reached within ``timeout`` seconds.
        KafkaException: if the topic does not exist or the broker is unreachable.
    """
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "fstore-read-topic",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
        }
    )
    try:
        meta = consumer.list_topics(topic, timeout=timeout).topics[topic]
        if meta.error is not None:
            raise KafkaException(meta.error)
        parts = sorted(meta.partitions)
        todo = {p for p in parts if consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1] > 0}
        consumer.assign([TopicPartition(topic, p, 0) for p in sorted(todo)])
        got: dict[int, list[Record]] = {p: [] for p in parts}
        deadline = time.monotonic() + timeout
        while todo:
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"read {sum(map(len, got.values()))} messages of {topic!r}, "
                    f"partitions {sorted(todo)} unfinished after {timeout} s"
                )
            for msg in consumer.consume(10_000, 0.2):
                err, p = msg.error(), msg.partition()
                if err is not None:
                    if err.code() != KafkaError._PARTITION_EOF:
                        raise KafkaException(err)
                    todo.discard(p if p is not None else -1)
                elif p is not None:
                    got[p].append(Record(p, msg.offset() or 0, msg.key(), msg.value() or b"", msg.timestamp()[1]))
        return [r for p in parts for r in got[p]]
    finally:
        consumer.close()


def first_per_key(records: Iterable[Record]) -> list[Record]:
    """The first record of each key, in the given order (records without a key are all kept).

    Dead letters are keyed by their source message's position (``topic:partition:offset``), so this is the
    DLQ with re-sent copies collapsed: one record per rejected message (docs/stream.md, *Dead letters*).
    """
    seen: set[bytes] = set()
    out: list[Record] = []
    for r in records:
        if r.key is None or r.key not in seen:
            out.append(r)
            if r.key is not None:
                seen.add(r.key)
    return out
