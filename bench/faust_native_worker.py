"""A Faust-native speed-layer worker, the alternative ADR 0009 measured against ``jobs.stream`` (not shipped).

``jobs.stream.app`` disables Faust's own consumer and runs an aiokafka consumer in a task. This worker
does it the way Faust intends: an agent over the ``events`` topic that takes batches with
``stream.noack_take(FSTORE_STREAM_BATCH_MAX, within=FSTORE_STREAM_BATCH_WITHIN_S)``. Each batch goes
through the very same speed-layer code (:meth:`jobs.stream.layer.SpeedLayer.begin` and ``finish``:
validation, dead letters, Lua tiles, raw sink), with the same overlap of Redis and the next batch's
validation and the same process tuning (``tune_gc``, the raw sink's warm-up). Offsets keep the same
guarantee: an event is acknowledged to Faust, which then commits it, only after the raw-sink flush that
holds it, so a crash redelivers it.

Started by ``bench/stream_faust_native.py`` with the same ``FSTORE_*`` settings as ``python -m jobs.stream``.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections import deque
from pathlib import Path
from typing import Any, NamedTuple

import faust

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.stream import metrics
from jobs.stream.app import app_options  # importing it also builds the shipped app, which never starts here
from jobs.stream.dead_letters import KafkaDeadLetters
from jobs.stream.layer import SpeedLayer, bootstrap_servers, tune_gc
from jobs.stream.settings import StreamSettings, get_stream_settings

#: Faust's stream buffer (events prefetched per agent); the tuned value of the last Faust-agent worker.
STREAM_BUFFER_MAXSIZE = 40_000


class Record(NamedTuple):
    """What :class:`SpeedLayer` reads of a consumed message (aiokafka's ``ConsumerRecord`` fields)."""

    key: bytes | None
    value: bytes | None
    offset: int
    timestamp: int  # epoch milliseconds, as aiokafka gives it


class FaustNativeLayer(SpeedLayer):
    """:class:`SpeedLayer` whose offsets Faust commits: events are acked once their raw flush is done."""

    def __init__(self, s: StreamSettings, events_topic: Any, dlq_topic: Any) -> None:
        super().__init__(s, events_topic, dlq_topic)
        self.stream: Any = None
        self.unacked: dict[Any, deque[Any]] = {}

    async def commit(self) -> None:
        """Ack every event below the flushed offsets (Faust commits acked offsets on its own timer)."""
        async with self._commit_lock:
            offsets, self.pending = self.pending, {}
            for tp, offset in offsets.items():
                queue = self.unacked.get(tp)
                while queue and queue[0].message.offset < offset:
                    await self.stream.ack(queue.popleft())


def make_app(s: StreamSettings) -> faust.App:
    """A plain Faust app (its consumer on): the shipped worker's options plus the consumer settings of its
    bulk consumer (``SpeedLayer.make_consumer``)."""
    return faust.App(
        **app_options(s),
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.stream_session_timeout_s,
        broker_heartbeat_interval=s.stream_heartbeat_s,
        broker_rebalance_timeout=s.stream_rebalance_timeout_s,
        broker_request_timeout=max(40.0, s.stream_session_timeout_s + 5),
        broker_max_poll_records=s.stream_max_poll_records,
        broker_commit_interval=s.stream_commit_interval_s,
        consumer_max_fetch_size=s.stream_fetch_partition_bytes,
        stream_buffer_maxsize=STREAM_BUFFER_MAXSIZE,
        stream_wait_empty=False,  # acks come from raw flushes: unacked events are redelivered, never waited for
    )


settings = get_stream_settings()
app = make_app(settings)
events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)
dlq_topic = KafkaDeadLetters(bootstrap_servers(settings), settings.dlq_topic)
_layer: FaustNativeLayer | None = None


def layer() -> FaustNativeLayer:
    """The worker's layer (created on first use, inside the worker's event loop)."""
    global _layer
    if _layer is None:
        _layer = FaustNativeLayer(settings, events_topic, dlq_topic)
    return _layer


@app.task  # type: ignore[untyped-decorator]
async def start_metrics() -> None:
    """Serve the speed layer's Prometheus metrics (the benchmark reads them)."""
    metrics.serve(settings.stream_metrics_port, settings.stream_metrics_host)


@app.agent(events_topic)
async def speed_layer(stream: Any) -> None:
    """Batches from Faust's stream through the speed layer, overlapped as ``SpeedLayer.run`` does."""
    state = layer()
    state.stream = stream
    await asyncio.to_thread(state.raw.warm)
    tune_gc(settings.stream_batch_max)
    inflight: asyncio.Future[None] | None = None
    async for events in stream.noack_take(settings.stream_batch_max, within=settings.stream_batch_within_s):
        state.check_flush()
        records: dict[Any, list[Record]] = {}
        for event in events:
            m = event.message
            records.setdefault(m.tp, []).append(Record(m.key, m.value, m.offset, int(m.timestamp * 1000)))
            state.unacked.setdefault(m.tp, deque()).append(event)
        batch = await state.begin(records)
        if inflight is not None:
            await inflight
        inflight = asyncio.ensure_future(state.finish(batch))
        await batch.sent


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def housekeeping() -> None:
    """Flush an idle raw buffer when its age bound passes (as the worker of jobs.stream does)."""
    state = layer()
    if state.stream is not None and state.raw.due():
        state.start_flush()


if __name__ == "__main__":
    from faust.worker import Worker

    logging.basicConfig(level=settings.stream_log_level.upper())
    Worker(app, loglevel=settings.stream_log_level, quiet=True).execute_from_commandline()
