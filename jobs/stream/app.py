"""The Faust app of the speed layer: ``faust -A jobs.stream.app worker`` or ``fstore stream``.

One agent consumes ``events`` in batches (``stream.noack_take``) and for each batch:

1. validates every message with the core (:func:`fstore.core.events.parse`, wall clock injected);
2. sends invalid ones to ``events.dlq`` — value = the original bytes, headers ``fstore-reason`` and
   ``fstore-ingested-at`` (ISO-8601 UTC), key = the original key — and waits for the broker's ack;
3. applies the valid, not-yet-counted events to the Redis speed tiles of every feature view in one
   pipelined round trip (Lua, exactly once per event_id, see :mod:`fstore.speed_lua`);
4. buffers every valid copy for the Delta ``raw_events`` sink.

Kafka messages are acknowledged — so their offsets may be committed — only after the raw-sink flush
that holds them, which happens after steps 2–3: a crash at any point redelivers them, the markers keep
the tiles exact, and the raw log gets them at least once. A timer flushes an idle buffer; shutdown
(SIGTERM) flushes what is left.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Sequence
from typing import Any

import faust
import redis.asyncio as aredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fstore.core.features import VIEWS
from fstore.core.timeutil import iso
from fstore.ingest import wall_clock
from fstore.redis_layout import POINTER_KEY, BatchPointer
from fstore.settings import STATE_DIR
from jobs.stream import metrics
from jobs.stream.pipeline import prepare
from jobs.stream.settings import StreamSettings, get_stream_settings
from jobs.stream.sinks import RawSink, TileWriter

log = logging.getLogger("fstore.stream")


def make_app(s: StreamSettings) -> faust.App:
    """The Faust app configured from settings (consumer timeouts tuned for a quick first join)."""
    (STATE_DIR / "faust").mkdir(parents=True, exist_ok=True)
    return faust.App(
        s.stream_app_id,
        broker=[f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()],
        store="memory://",
        datadir=str(STATE_DIR / "faust" / s.stream_app_id),
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=s.topic_partitions,
        topic_replication_factor=1,
        web_enabled=False,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=s.stream_session_timeout_s,
        broker_heartbeat_interval=s.stream_heartbeat_s,
        broker_rebalance_timeout=s.stream_rebalance_timeout_s,
        broker_request_timeout=max(40.0, s.stream_session_timeout_s + 5),
        broker_max_poll_records=s.stream_max_poll_records,
        broker_commit_interval=s.stream_commit_interval_s,
        stream_buffer_maxsize=s.stream_buffer_maxsize,
        # Acks come from raw-sink flushes, not from the stream: waiting for "empty" streams on stop or
        # rebalance would stall. Unacked messages are simply redelivered, and the markers make that exact.
        stream_wait_empty=False,
        producer_acks=-1,
        logging_config=None,
    )


settings = get_stream_settings()
app = make_app(settings)
events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes,
                         partitions=settings.topic_partitions)
dlq_topic = app.topic(settings.dlq_topic, key_type=bytes, value_type=bytes)


class SpeedLayer:
    """Worker state: Redis client, sinks, batch pointer cache, ingestion clock, partition positions."""

    def __init__(self, s: StreamSettings) -> None:
        self.s = s
        self.redis: Any = aredis.Redis.from_url(s.redis_url, socket_timeout=10, socket_connect_timeout=5)
        self.tiles = TileWriter(self.redis, list(VIEWS.values()), s.marker_ttl_s, s.tile_ttl_s,
                                cluster=s.stream_redis_cluster, chunk=s.stream_script_chunk)
        self.raw = RawSink(s.table("raw_events"), s.stream_raw_max_events, s.stream_raw_max_age_s)
        self.last_at = 0
        self.stream: Any = None
        self.next_offset: dict[Any, int] = {}
        self._cutover: int | None = None
        self._cutover_read = float("-inf")

    async def cutover(self) -> int | None:
        """The serving batch view's cutover C, re-read at most every ``stream_pointer_cache_s``."""
        if time.monotonic() - self._cutover_read >= self.s.stream_pointer_cache_s:
            pointer = BatchPointer.loads(await self.redis.get(POINTER_KEY))
            self._cutover = pointer.cutover if pointer else None
            self._cutover_read = time.monotonic()
        return self._cutover

    async def _redis(self, op: Any) -> Any:
        """Run a Redis step until it succeeds (Redis down: wait and retry; the batch is not acked)."""
        delay = 0.1
        while True:
            try:
                return await op()
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                metrics.REDIS_RETRIES.inc()
                log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def handle(self, batch: Sequence[Any]) -> None:
        """Process one consumed batch (see the module docstring)."""
        t0 = time.perf_counter()
        now = wall_clock()
        cutover = await self._redis(self.cutover)
        values = [ev.value for ev in batch]
        prep = prepare(values, now, self.last_at, cutover, self.s.horizon_us)
        self.last_at = prep.last_at
        metrics.EVENTS_IN.inc(len(values))
        metrics.EVENTS_VALID.inc(len(prep.valid))
        metrics.BATCH_SIZE.observe(len(values))
        if prep.late:
            metrics.LATE.inc(prep.late)
        if prep.beyond_horizon:
            metrics.BEYOND_HORIZON.inc(prep.beyond_horizon)
        if prep.invalid:
            await self.dead_letter(batch, values, prep.invalid, now)
        if self.s.stream_naive_per_event:  # the benchmark's reference: a round trip per event
            skipped = set()
            for one in prep.fresh:
                skipped |= await self._redis(lambda one=one: self.tiles.apply([one]))
        else:
            skipped = await self._redis(lambda: self.tiles.apply(prep.fresh))
        metrics.DUPLICATES.inc(len(skipped) + prep.batch_duplicates)
        committed = time.time()
        observe = metrics.FRESHNESS.observe
        for ev in batch:
            observe(committed - ev.message.timestamp)
            self.next_offset[ev.message.tp] = ev.message.offset + 1
        metrics.PROCESSING.observe(time.perf_counter() - t0)
        self.raw.add(prep.valid, prep.hashes, prep.ingested_at, batch)
        if self.raw.due():
            await self.flush()

    async def dead_letter(self, batch: Sequence[Any], values: Sequence[bytes], invalid: Sequence[tuple[int, str]],
                          now: int) -> None:
        """Send invalid messages to the DLQ topic and wait until the broker has them all."""
        at = iso(now).encode()
        for _, reason in invalid:
            metrics.EVENTS_INVALID.labels(reason).inc()
        todo = list(invalid)
        delay = 0.1
        while todo:  # a dead letter is never dropped: resend what the broker did not acknowledge
            results = []
            try:
                for i, reason in todo:
                    results.append(await dlq_topic.send(
                        key=batch[i].key, value=values[i],
                        headers=[("fstore-reason", reason.encode()), ("fstore-ingested-at", at)]))
                done = await asyncio.gather(*results, return_exceptions=True)
            except Exception as exc:  # the producer refused outright (e.g. broker unreachable)
                log.warning("DLQ send failed (%s); retrying in %.1f s", exc, delay)
                done = [exc] * len(todo)
            todo = [m for m, r in zip(todo, done, strict=False) if isinstance(r, BaseException)] + todo[len(done):]
            if todo:
                metrics.DLQ_RETRIES.inc(len(todo))
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    async def flush(self) -> None:
        """Flush the raw sink, then acknowledge the Kafka messages it covered."""
        t0 = time.perf_counter()
        tokens, rows = await self.raw.flush()
        if rows:
            metrics.RAW_WRITTEN.inc(rows)
            metrics.RAW_FLUSHES.inc()
            metrics.RAW_FLUSH_SECONDS.observe(time.perf_counter() - t0)
        for ev in tokens:
            await self.stream.ack(ev)

    def update_lag(self) -> None:
        """Consumer lag per partition: high watermark minus the next offset to process."""
        consumer = app.consumer
        for tp in consumer.assignment():
            if tp.topic != self.s.events_topic:
                continue
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if high is not None and tp in self.next_offset:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, high - self.next_offset[tp]))


_layer: SpeedLayer | None = None


def layer() -> SpeedLayer:
    """The worker's :class:`SpeedLayer` (created on first use, inside the worker's event loop)."""
    global _layer
    if _layer is None:
        _layer = SpeedLayer(settings)
    return _layer


@app.task  # type: ignore[untyped-decorator]
async def start_metrics() -> None:
    """Serve Prometheus metrics once the worker starts."""
    metrics.serve(settings.stream_metrics_port)
    log.info("stream worker: %s -> redis %s, raw_events %s, metrics port %s", settings.events_topic,
             settings.redis_url, settings.table("raw_events"), settings.stream_metrics_port or "off")


@app.agent(events_topic)
async def speed_layer(stream: Any) -> None:
    """Consume ``events`` in batches: DLQ, speed tiles, raw sink; ack after the raw flush."""
    state = layer()
    state.stream = stream
    try:
        async for batch in stream.noack_take(settings.stream_batch_max, within=settings.stream_batch_within_s):
            await state.handle(batch)
    except Exception:
        # Crash-only: stop the whole worker (a supervisor restarts it) rather than leave a process whose
        # agent is dead. Nothing unacknowledged is lost: it is redelivered and the markers keep it exact.
        log.exception("stream worker: batch failed; stopping the worker")
        os.kill(os.getpid(), signal.SIGTERM)
        raise
    finally:
        if state.raw.buffered:
            log.info("stream worker stopping: flushing %d buffered raw events", state.raw.buffered)
            try:
                tokens, _ = state.raw.flush_sync()
            except Exception:
                log.exception("raw sink: final flush failed; the messages stay unacknowledged")
            else:
                for ev in tokens:
                    await stream.ack(ev)


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def housekeeping() -> None:
    """Flush an idle raw buffer when its age bound passes; refresh the consumer-lag gauge."""
    state = layer()
    if state.stream is not None and state.raw.due():
        await state.flush()
    state.update_lag()


def run_worker(loglevel: str | None = None) -> None:
    """Run the worker in this process until SIGTERM/SIGINT (what ``fstore stream`` calls)."""
    from faust.worker import Worker

    logging.basicConfig(level=(loglevel or settings.stream_log_level).upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    Worker(app, loglevel=loglevel or settings.stream_log_level, quiet=True).execute_from_commandline()

