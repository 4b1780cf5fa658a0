"""Dead-letter records of the stream worker and the idempotent producer that sends them to ``events.dlq``.

A dead letter is sent **once per source message**: its record key is the message's position,
``<topic>:<partition>:<offset>`` (:func:`dlq_key`), so whatever re-sends it (a retried batch, a worker
restarted before its offsets were committed) produces a copy with the same key that a reader collapses
(:func:`fstore.kafka.client.first_per_key` keeps the first record per key; a compacted DLQ topic does the
same); the producer is idempotent (no duplicates from its own retries) and the worker skips dead
letters it already had acknowledged when a batch is re-run (:class:`jobs.stream.layer.SpeedLayer`).

A dead letter never blocks its partition: a value longer than ``FSTORE_STREAM_DLQ_MAX_BYTES``
(:data:`DLQ_MAX_BYTES` by default, under the producer's 1 MiB request limit and Kafka's default
``message.max.bytes``) is cut to that length, and the headers keep what was lost — ``fstore-original-size``
and ``fstore-original-hash`` (blake2b-128 of the whole value, as ``payload_hash``); if the broker still
refuses a record as too large (a lower ``message.max.bytes``), it goes again cut to :data:`FALLBACK_BYTES`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, NamedTuple

from aiokafka import AIOKafkaProducer

from fstore.core.events import payload_hash

#: The longest dead-letter value kept whole by default (room left for the key and headers under 1 MiB).
DLQ_MAX_BYTES = 1_000_000
#: The value size a dead letter is cut to when the broker refused it as too large even so.
FALLBACK_BYTES = 1024


class DeadLetter(NamedTuple):
    """One ``events.dlq`` record: key, value and headers."""

    key: bytes
    value: bytes
    headers: list[tuple[str, bytes]]


def dlq_key(topic: str, partition: int, offset: int) -> bytes:
    """The record key of a dead letter: the source message's position (what makes a re-send a copy)."""
    return f"{topic}:{partition}:{offset}".encode()


def dead_letter(
    topic: str,
    partition: int,
    offset: int,
    key: bytes | None,
    value: bytes,
    reason: str,
    ingested_at: bytes,
    max_bytes: int,
) -> DeadLetter:
    """The ``events.dlq`` record of a rejected message.

    Args:
        topic, partition, offset: where the message was read (the record key).
        key: the message's own key (header ``fstore-key`` when there is one).
        value: the original bytes; cut to ``max_bytes`` when longer (headers ``fstore-original-size``,
            ``fstore-original-hash``).
        reason: one reason of the closed list (header ``fstore-reason``).
        ingested_at: ISO-8601 UTC of the batch clock (header ``fstore-ingested-at``).
        max_bytes: the longest value kept as is.
    """
    headers = [("fstore-reason", reason.encode()), ("fstore-ingested-at", ingested_at)]
    if key is not None:
        headers.append(("fstore-key", key))
    if len(value) > max_bytes:
        headers += [
            ("fstore-original-size", str(len(value)).encode()),
            ("fstore-original-hash", payload_hash(value).encode()),
        ]
        value = value[:max_bytes]
    return DeadLetter(dlq_key(topic, partition, offset), value, headers)


def shrink(letter: DeadLetter, original: bytes, max_bytes: int = FALLBACK_BYTES) -> DeadLetter:
    """The same dead letter with its value cut to ``max_bytes`` (after the broker refused its size)."""
    if len(original) <= max_bytes:
        return letter
    headers = [(k, v) for k, v in letter.headers if not k.startswith("fstore-original-")]
    headers += [
        ("fstore-original-size", str(len(original)).encode()),
        ("fstore-original-hash", payload_hash(original).encode()),
    ]
    return DeadLetter(letter.key, original[:max_bytes], headers)


class KafkaDeadLetters:
    """:class:`jobs.stream.ports.DeadLetterSink` over an idempotent aiokafka producer (``acks=all``).

    Args:
        bootstrap: ``host:port`` list.
        topic: the dead-letter topic (``FSTORE_DLQ_TOPIC``).
        client_id: the producer's client id.
    """

    def __init__(self, bootstrap: list[str], topic: str, client_id: str | None = None) -> None:
        self.topic = topic
        self._bootstrap = bootstrap
        self._client_id = client_id or f"fstore-dlq-{os.getpid()}"
        self._producer = self._new_producer()
        self._started = False

    def _new_producer(self) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self._bootstrap,
            client_id=self._client_id,
            acks="all",
            enable_idempotence=True,
            linger_ms=5,
            request_timeout_ms=30_000,
        )

    async def reset(self) -> None:
        """Start over with a new producer session (a new producer id). After a record the broker refused, an
        idempotent producer's sequence numbers no longer match the broker's (every later send fails with
        ``OutOfOrderSequenceNumber``); the records still to send go out through the new session."""
        if self._started:
            self._started = False
            with contextlib.suppress(Exception):  # the old session is being dropped: its errors no longer matter
                await self._producer.stop()
        self._producer = self._new_producer()

    async def start(self) -> None:
        """Connect (once)."""
        if not self._started:
            await self._producer.start()
            self._started = True

    async def stop(self) -> None:
        """Flush and disconnect."""
        if self._started:
            self._started = False
            await self._producer.stop()

    async def send(self, *, key: bytes | None, value: bytes, headers: list[tuple[str, bytes]]) -> asyncio.Future[Any]:
        """Queue one record; the returned future resolves once the broker acknowledged it."""
        await self.start()
        fut: asyncio.Future[Any] = await self._producer.send(self.topic, value=value, key=key, headers=headers)
        return fut
