"""The speed layer's consumer loop and state (:class:`SpeedLayer`), run as a task of the Faust app.

It reads ``events`` in bulk — an aiokafka consumer in the app's consumer group, ``getmany`` batches of
raw bytes, manual commits — instead of Faust's per-message stream (whose per-event machinery cost more
than all the work below). For each batch it:

1. validates every message with the core (:func:`fstore.core.events.parse`, wall clock injected),
   pre-aggregates and packs its speed-tile updates (:meth:`jobs.stream.sinks.TileWriter.plan`) and builds
   its ``raw_events`` rows;
2. sends invalid ones to ``events.dlq`` (:mod:`jobs.stream.dead_letters`: key = the source position,
   value = the original bytes, cut past ``FSTORE_STREAM_DLQ_MAX_BYTES``, headers ``fstore-reason`` and
   ``fstore-ingested-at``) and waits for the broker's ack;
3. applies the valid, not-yet-counted events to the Redis speed tiles of every feature view in one
   pipelined round trip (Lua, exactly once per event_id, see :mod:`jobs.stream.speed_lua`), concurrently
   with step 2;
4. buffers every valid copy for the Delta ``raw_events`` sink, which a background flush (Delta write in
   a thread) appends while the next batches are processed.

Step 1 of batch N+1 runs while Redis works on batch N (whose request is written before step 1 starts);
batch N+1's own request goes out only once batch N is completely done, so Redis sees the batches
strictly in consumption order. Offsets are committed only after the raw-sink flush that holds a batch's
rows, which happens after steps 2–3: a crash at any point redelivers them, the markers keep the tiles
exact, and the raw log gets them at least once. Before partitions are revoked (rebalance) every batch
already taken from the consumer is finished, the buffer is flushed and the offsets committed, so the next
owner of a partition starts where this worker stopped; a timer flushes an idle buffer; shutdown (SIGTERM)
flushes what is left.

Failures (:mod:`jobs.stream.faults`): a batch that fails for a reason other than an outage is bisected and
the message(s) causing it dead-lettered as ``unprocessable`` (:meth:`SpeedLayer.isolate`); a lasting outage
stops the worker with a non-zero exit code. A Kafka log that lost its past (topic re-created, broker log
lost) is replayed from its start, loudly (:meth:`SpeedLayer.reset_logs`, :mod:`jobs.stream.log_guard`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import heapq
import itertools
import logging
import os
import signal
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from operator import attrgetter, itemgetter
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, MessageSizeTooLargeError, NoOffsetForPartitionError, OffsetOutOfRangeError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from fstore import plan_source
from fstore.applying import topic_mismatch
from fstore.clock import Clock, wall_clock
from fstore.core.plan import Plan
from fstore.core.plan_json import fingerprint
from fstore.core.timeutil import iso
from fstore.plan_source import current_plan
from fstore.redis.connect import async_client
from fstore.redis.hold import HOLD_TTL_S
from fstore.redis.layout import HEARTBEAT_KEY, POINTER_KEY, BatchPointer, Heartbeat
from jobs.stream import kafka_records, metrics
from jobs.stream.control import Control
from jobs.stream.dead_letters import DeadLetter, dead_letter, shrink
from jobs.stream.faults import (
    MAX_UNPROCESSABLE_STREAK,
    UNPROCESSABLE,
    OutageClock,
    SystemicFailure,
    exit_code,
    is_outage,
)
from jobs.stream.log_guard import TopicState, TopicWatch, compare
from jobs.stream.lost_writes import MESSAGE as LOST_WRITES_MESSAGE
from jobs.stream.lost_writes import WriteWitness
from jobs.stream.pipeline import EventReader, Prepared, prepare, reader_for
from jobs.stream.ports import DeadLetterSink, KeyValue, RawEventSink, TileSink
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import Held, RawSink, TileWriter
from jobs.stream.tile_steps import view_steps

log = logging.getLogger("fstore.stream")


def bootstrap_servers(s: StreamSettings) -> list[str]:
    """``FSTORE_KAFKA_BOOTSTRAP`` as a list of ``host:port``."""
    return [h.strip() for h in s.kafka_bootstrap.split(",") if h.strip()]


Offsets = dict[TopicPartition, int]


@dataclass
class _Batch:
    """A consumed, validated batch on its way to the sinks."""

    source: dict[Any, list[Any]]  # the consumed records by partition, as the consumer returned them
    records: list[Any]
    values: list[bytes]
    prep: Prepared
    tiles: Any  # the tile sink's plan; None: the naive reference mode plans per event
    rows: Any  # the raw sink's rows of the valid copies
    now: int
    offsets: Offsets
    seconds: float  # time spent so far (for fstore_stream_batch_seconds)
    sent: asyncio.Future[None] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    task: asyncio.Future[None] | None = None  # its finish(), once started
    claimed: asyncio.Future[set[str]] | None = None  # its event_id claims: the ids another copy claimed first

    def mark_sent(self) -> None:
        """The tiles' Redis request is written (or the batch ended): the consumer loop may go on."""
        if not self.sent.done():
            self.sent.set_result(None)


def _retrieved(claims: asyncio.Future[set[str]]) -> None:
    """Done callback of a batch's claims: a batch dropped before its finish awaited them leaves no
    "exception never retrieved" behind (its claims are harmless: the batch's copies find them again)."""
    if not claims.cancelled():
        claims.exception()


#: Tracked objects per message of a batch the young-generation threshold allows for (:func:`gc_threshold`).
GC_OBJECTS_PER_MESSAGE = 30


def gc_threshold(batch_max: int) -> int:
    """The young generation's threshold for batches of up to ``batch_max`` messages: above the tracked objects
    the worker keeps alive at once — the batch being validated and the one in Redis, 7.5–10 objects per
    message between them (its Kafka record, its row, its tile cells; ``tests/unit/jobs/stream/test_gc.py``) —
    with room to spare, and at least 50,000."""
    return max(50_000, GC_OBJECTS_PER_MESSAGE * batch_max)


def tune_gc(batch_max: int) -> None:
    """Make the cyclic garbage collector cheap for a worker that allocates millions of short-lived objects.

    Everything alive at start-up (modules, Faust, aiokafka) lives as long as the worker: ``gc.freeze()``
    keeps it out of every later pass. A young-generation pass runs when the tracked objects allocated and
    not yet freed since the last one exceed the threshold (700 by default): a batch's objects are all
    freed by reference counting once it is done, so a threshold above what the worker holds at once
    (:func:`gc_threshold`) leaves the passes to the rare cyclic garbage. At 50,000 (until session 7) the
    two 10,000-message batches in progress (150,000–200,000 objects) crossed it about once per batch, and
    every pass scanned them and freed nothing: ~0.5–0.75 CPU-µs per event. Cyclic garbage waits at most
    the threshold's worth of allocations, so memory stays bounded.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(gc_threshold(batch_max), 10, 10)


class _Rebalance(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, state: SpeedLayer) -> None:
        self.state = state

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.state.on_revoked()

    async def on_partitions_assigned(self, assigned: Any) -> None:
        self.state.on_assigned(set(assigned))
        log.info("stream worker: assigned %s", sorted(f"{tp.topic}[{tp.partition}]" for tp in assigned))


def stop_worker(exc: BaseException, doing: str) -> None:
    """Log why the worker stops (one CRITICAL line; its traceback only when ``exc`` is no outage) and ask Faust
    for an orderly stop: ``fstore stream`` then exits with :func:`jobs.stream.faults.exit_code` of ``exc``."""
    log.critical(
        "stream worker: %s with exit code %d: %s: %s",
        doing,
        exit_code(exc),
        type(exc).__name__,
        exc,
        exc_info=not is_outage(exc),
    )
    os.kill(os.getpid(), signal.SIGTERM)  # Faust's orderly stop; fstore stream then exits non-zero


class SpeedLayer:
    """Worker state: consumer, Redis client, sinks, batch pointer cache, ingestion clock, offsets."""

    def __init__(
        self,
        s: StreamSettings,
        events_topic: Any,
        dlq_topic: DeadLetterSink,
        *,
        kv: KeyValue | None = None,
        tiles: TileSink | None = None,
        raw: RawEventSink | None = None,
        clock: Clock = wall_clock,
        plan: Plan | None = None,
    ) -> None:
        """Args:
        s: the worker settings.
        events_topic: the Faust topic of ``events`` (declared at start-up; ``None`` in tests).
        dlq_topic: where dead letters go (the Faust topic of ``events.dlq``).
        kv, tiles, raw: the Redis client, the speed-tile sink and the raw sink; built from ``s`` when
            omitted (tests pass the fakes of :mod:`jobs.stream.fakes`).
        clock: the processing clock (UTC epoch µs) that validation and ``ingested_at`` use.
        plan: the compiled plan the worker runs (default: the process's, :func:`fstore.plan_source.current_plan`).
        """
        self.s, self.clock = s, clock
        self.plan = current_plan() if plan is None else plan
        self.reader: EventReader = reader_for(self.plan)
        metrics.declare_reasons(self.reader.reasons)
        self.events_topic, self.dlq_topic = events_topic, dlq_topic
        self.redis: Any = (  # a redis.asyncio.Redis or a ClusterPool, or a KeyValue fake when the tile sink is one too
            kv if kv is not None else async_client(s.redis_url, s.redis_cluster, timeout=10, connect_timeout=5)
        )
        self.tiles: TileSink = (
            tiles
            if tiles is not None
            else TileWriter(
                self.redis,
                self.plan,
                s.marker_ttl_s,
                s.tile_ttl_s,
                chunk=s.stream_script_chunk,
                clock=clock,
            )
        )
        self.raw: RawEventSink = (
            raw
            if raw is not None
            else RawSink(s.table("raw_events"), self.plan.schema, s.stream_raw_max_events, s.stream_raw_max_age_s)
        )
        # the applied plan and a backfill's hold, followed once a second (not with injected test doubles)
        self.control: Control | None = Control(s, fingerprint(self.plan)) if kv is None else None
        self.plan_error: str | None = None  # why the changed applied record could not be followed
        self.last_at = 0
        self.consumer: AIOKafkaConsumer | None = None
        self.next_offset: Offsets = {}
        self.pending: Offsets = {}  # flushed to raw_events, not yet committed
        self._cutover: int | None = None
        self._cutover_read = float("-inf")
        self._heartbeat_at = float("-inf")
        self._newest_event: int | None = None
        self.witness = WriteWitness()
        self._batch_lock = asyncio.Lock()  # a batch in progress vs. a rebalance
        self._taken = 0  # batches taken from the consumer and not finished yet
        self._drained = asyncio.Event()  # set when _taken is 0: a rebalance may take the partitions
        self._drained.set()
        self._commit_lock = asyncio.Lock()
        self._flushing: asyncio.Task[None] | None = None
        # future events stored as exact fields, by event_time: moved into the tiles once it has passed
        self.future: list[tuple[int, int, Held]] = []
        self._future_seq = itertools.count()
        self._dead_acked: set[tuple[Any, int]] = set()  # (partition, offset) of dead letters the broker has
        self._unprocessable_streak = 0
        self.failure: BaseException | None = None  # what stopped the worker (exit code: faults.exit_code)
        # log resets (jobs.stream.log_guard): the topic's last known state, resets to do, replay progress
        self.watch: TopicWatch | None = None
        self._topic: TopicState | None = None
        self._topic_checked = float("-inf")
        self._resets: dict[Any, str] = {}
        self._released: set[Any] = set()  # partitions consumed here, then given up at a rebalance
        self.replay_until: Offsets = {}
        self.log_reset_at: int | None = None

    async def heartbeat(self, prep: Prepared | None, committed: float, force: bool = False) -> None:
        """Tell readers (GET /health) how fresh the speed view is; at most once a second (and at shutdown),
        best effort."""
        if prep is not None and prep.valid:
            ts = self.reader.ts_field
            newest = max(map(itemgetter(ts), prep.valid))
            self._newest_event = newest if self._newest_event is None else max(self._newest_event, newest)
        if not force and committed - self._heartbeat_at < 1.0:
            return
        self._heartbeat_at = committed
        beat = Heartbeat(
            int(committed * 1_000_000), self._newest_event, self.log_reset_at, bool(self.replay_until), self.plan_error
        )
        try:
            await self.redis.set(HEARTBEAT_KEY, beat.dumps(), ex=86_400)
            if await self.witness.check(self.redis, beat.committed_at):
                metrics.REDIS_LOST_WRITES.set(1)
                log.critical("%s; found by witness %s", LOST_WRITES_MESSAGE, self.witness.key)
        except (RedisConnectionError, RedisTimeoutError, OSError) as exc:  # tiles are committed; this can wait
            log.warning("heartbeat not written: %s", exc)

    async def cutover(self) -> int | None:
        """The serving batch view's cutover C, re-read at most every ``stream_pointer_cache_s``."""
        if time.monotonic() - self._cutover_read >= self.s.stream_pointer_cache_s:
            pointer = BatchPointer.loads(await self.redis.get(POINTER_KEY))
            self._cutover = pointer.cutover if pointer else None
            self._cutover_read = time.monotonic()
        return self._cutover

    async def _redis(self, op: Any) -> Any:
        """Run a Redis step until it succeeds (Redis away: wait and retry; the batch is not committed). An
        outage longer than ``FSTORE_STREAM_OUTAGE_EXIT_S`` raises :class:`~jobs.stream.faults.OutageTimeout`;
        any other error (a reply the sink refuses) propagates at once."""
        outage = OutageClock("redis", self.s.stream_outage_exit_s)
        while True:
            try:
                return await op()
            except Exception as exc:
                if not is_outage(exc):
                    raise
                delay = outage.failed(exc)
                metrics.REDIS_RETRIES.inc()
                log.warning("redis unavailable (%s); retrying in %.1f s", exc, delay)
                await asyncio.sleep(delay)

    def make_consumer(self) -> AIOKafkaConsumer:
        """The bulk consumer: the app's group, manual commits, large fetches, aiokafka's parsed records
        (:mod:`jobs.stream.kafka_records`: ``offset``, ``timestamp``, ``key``, ``value``)."""
        s = self.s
        kafka_records.install()
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers(s),
            group_id=s.stream_app_id,
            client_id=f"{s.stream_app_id}-{os.getpid()}",
            enable_auto_commit=False,
            # "none": an offset beyond the log's end is reported (OffsetOutOfRangeError), not silently reset,
            # and a partition without a committed offset too (NoOffsetForPartitionError): see on_no_offset
            auto_offset_reset="none",
            metadata_max_age_ms=int(s.stream_topic_check_s * 1000),  # new partitions are assigned this soon
            session_timeout_ms=int(s.stream_session_timeout_s * 1000),
            heartbeat_interval_ms=int(s.stream_heartbeat_s * 1000),
            rebalance_timeout_ms=int(s.stream_rebalance_timeout_s * 1000),
            request_timeout_ms=int(max(40.0, s.stream_session_timeout_s + 5) * 1000),
            max_poll_records=s.stream_max_poll_records,
            max_partition_fetch_bytes=s.stream_fetch_partition_bytes,
            value_deserializer=kafka_records.mark,  # the parsed records, no ConsumerRecord each (kafka_records)
        )
        consumer.subscribe([s.events_topic], listener=_Rebalance(self))
        return consumer

    async def _start(self) -> AIOKafkaConsumer:
        """Declare the topic, start the DLQ producer, warm the raw sink and start the consumer."""
        if (mismatch := topic_mismatch(self.plan, self.s.events_topic)) is not None:
            log.warning("stream worker: %s", mismatch)
        try:
            await self.events_topic.maybe_declare()
        except Exception as exc:  # the topic may exist already or be managed elsewhere
            log.info("events topic not declared (%s)", exc)
        await self.dlq_topic.start()
        if self.watch is None:
            self.watch = TopicWatch(bootstrap_servers(self.s), self.s.events_topic)
        await asyncio.to_thread(self.raw.warm)
        tune_gc(self.s.stream_batch_max)
        self.consumer = consumer = self.make_consumer()
        await consumer.start()
        return consumer

    async def run(self) -> None:
        """Consume until cancelled (worker stop) or a failure that is not one message's fault.

        A batch that fails for any reason but an outage is bisected down to the message(s) that cause it,
        which are dead-lettered as ``unprocessable`` (:meth:`isolate`); the stream goes on. An outage is
        retried, and one that outlasts ``FSTORE_STREAM_OUTAGE_EXIT_S`` — or messages that keep failing on
        their own — stop the whole worker (a supervisor restarts it) with a non-zero exit code
        (:attr:`failure`, :func:`jobs.stream.faults.exit_code`). Nothing uncommitted is lost: it is
        redelivered, the markers keep it exact.
        """
        try:
            consumer = await self._start()
        except Exception as exc:  # the broker, the DLQ producer or raw_events' storage away at start-up
            self.failure = exc
            stop_worker(exc, "cannot start")
            return
        within_ms = int(self.s.stream_batch_within_s * 1000)
        inflight: _Batch | None = None
        try:
            while True:
                self.check_flush()
                if self.control is not None and self.control.due():
                    inflight = await self.follow(inflight)
                try:
                    if self._resets:
                        raise _ResetRequested
                    records = await consumer.getmany(timeout_ms=within_ms, max_records=self.s.stream_batch_max)
                except (_ResetRequested, OffsetOutOfRangeError, NoOffsetForPartitionError) as exc:
                    if inflight is not None:  # finish the old log's last batch first
                        await self.settle(inflight)
                        inflight = None
                    await self.on_log_error(exc)
                    continue
                if not records:
                    if inflight is not None:
                        await self.settle(inflight)
                        inflight = None
                    if self.future:
                        async with self._batch_lock:
                            await self.move_due()
                    continue
                # Software pipelining: validate and plan this batch while Redis still runs the previous one's
                # script calls; its own Redis round trip starts only once the previous batch is completely
                # done (duplicate retries included), so Redis sees the batches strictly in consumption order.
                batch = await self.try_begin(records)
                if inflight is not None:
                    ok = await self.settle(inflight)
                    inflight = None
                    if not ok and batch is not None:  # the previous batch was re-run after this one's begin:
                        self._release()  # this one is dropped unfinished and taken again
                        batch = await self.try_begin(records)  # give this one later ingestion instants
                if batch is None:
                    await self.isolate(records)
                    continue
                batch.task = asyncio.ensure_future(self.finish(batch))
                inflight = batch
                # Let the new task write its Redis request before the next batch's CPU-bound validation
                # (which never yields): otherwise Redis would sit idle through it.
                await batch.sent
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.failure = exc
            stop_worker(exc, "stopping")
            raise
        finally:
            if inflight is not None and inflight.task is not None and not inflight.task.done():
                await asyncio.wait([inflight.task], timeout=30)
            await self.shutdown()

    async def follow(self, inflight: _Batch | None) -> _Batch | None:
        """Between two batches: follow a newly applied plan, and hold while ``fstore backfill`` rebuilds speed
        tiles (:mod:`fstore.redis.hold`). Before either, everything taken is finished: the batch in flight,
        the future events due moved, the raw sink flushed and the offsets committed — so ``raw_events``
        holds every event this worker counted. Returns the batch still in flight (``None`` once settled)."""
        assert self.control is not None
        token = await self.control.poll()
        changed = await self.refresh_plan()
        if token is None and not changed:
            return inflight
        if inflight is not None:
            await self.settle(inflight)
        # One clock for the move and the acknowledgement: the backfill folds into its tiles every event before the
        # acknowledged clock, so none of those may still wait here for a move (it would count twice) — a clock read
        # after the flush below (a Delta write, seconds) would pass events this move left queued.
        now = self.clock()
        async with self._batch_lock:
            if self.future:
                await self.move_due(now)
        await self.wait_flush()
        await self.flush()
        if token is not None:
            await self.hold(token, now)
            await self.refresh_plan()
        self.adopt(plan_source.current_plan())
        await self.control.reregister()  # nothing of the old plan is left to write: `fstore apply` may free
        return None

    async def refresh_plan(self) -> bool:
        """Follow the applied record (:func:`fstore.plan_source.refresh`); ``True`` when it was reloaded. A
        changed record that cannot be read keeps the plan the worker runs, loudly: logged, counted, the
        ``fstore_plan_stale`` gauge and the heartbeat's ``plan_error`` (GET /health: degraded) until a good
        record is read."""
        try:
            changed = plan_source.refresh()
        except Exception as exc:
            log.error("applied plan not reloaded, the worker keeps its plan: %s", exc)
            metrics.PLAN_RELOAD_FAILURES.inc()
            changed = False
        error = plan_source.stale()
        metrics.PLAN_STALE.set(1 if error else 0)
        if error != self.plan_error:
            self.plan_error = error
            await self.heartbeat(None, time.time(), force=True)
        return changed

    async def hold(self, token: str, clock: int) -> None:
        """Acknowledge a backfill's hold with ``clock`` (the processing clock up to which every held future event
        was moved) and consume nothing until it ends (the group membership kept)."""
        assert self.control is not None and self.consumer is not None
        log.warning("stream worker: held by a backfill (%s); consuming nothing until it ends", token)
        await self.control.ack(token, clock)
        paused = set(self.consumer.assignment())
        self.consumer.pause(*paused)
        seen = time.monotonic()
        try:
            while time.monotonic() - seen < HOLD_TTL_S:
                held = await self.control.still_held(token)
                if held is False:
                    break
                if held:  # None: Redis did not answer; the hold's TTL bounds how long that lasts
                    seen = time.monotonic()
                await self.consumer.getmany(timeout_ms=200)  # paused: nothing comes, the group stays joined
        finally:
            self.consumer.resume(*(paused & set(self.consumer.assignment())))
        log.warning("stream worker: hold %s ended; consuming again", token)

    def adopt(self, plan: Plan) -> None:
        """Run ``plan`` from the next batch on: validation, tile steps, the raw sink's columns, and the future
        events held for a move (their view's new steps; dropped with a removed view)."""
        if plan is self.plan:
            return
        s = self.s
        self.plan, self.reader = plan, reader_for(plan)
        metrics.declare_reasons(self.reader.reasons)
        if isinstance(self.tiles, TileWriter):
            self.tiles = TileWriter(
                self.redis, plan, s.marker_ttl_s, s.tile_ttl_s, chunk=s.stream_script_chunk, clock=self.clock
            )
        if isinstance(self.raw, RawSink):
            self.raw.schema = plan.schema
        steps = {v.name: view_steps(v, plan.schema) for v in plan.views}
        self.future = [(t, n, (steps[h[0].name], h[1], h[2])) for t, n, h in self.future if h[0].name in steps]
        heapq.heapify(self.future)
        if self.control is not None:
            self.control.fingerprint = fingerprint(plan)
        log.warning("stream worker: now runs the applied plan %s", fingerprint(plan)[:12])

    async def try_begin(self, records: dict[TopicPartition, list[Any]]) -> _Batch | None:
        """:meth:`begin`, or ``None`` when the batch cannot be validated and planned as a whole (not an outage)."""
        try:
            return await self.take(records)
        except Exception as exc:
            if is_outage(exc):
                raise
            log.warning("stream worker: a batch failed before its sinks (%s: %s)", type(exc).__name__, exc)
            return None

    async def settle(self, b: _Batch) -> bool:
        """Wait for a batch's :meth:`finish`; if it failed (not an outage), re-run it message group by message
        group (:meth:`isolate`). Returns whether it went through as a whole."""
        assert b.task is not None
        try:
            await b.task
            return True
        except Exception as exc:
            if is_outage(exc):
                raise
            log.warning("stream worker: a batch failed in its sinks (%s: %s)", type(exc).__name__, exc)
        await self.isolate(b.source)
        return False

    async def isolate(self, records: dict[Any, list[Any]]) -> None:
        """Process a failed batch again in halves, recursively, and dead-letter each single message that still
        fails as ``unprocessable`` (its offset is then released like any processed message's). Order is kept:
        the left half is done before the right one. Already applied tiles are skipped by their markers, and
        dead letters the broker already has are not sent again."""
        items = [(tp, r) for tp, part in records.items() for r in part]
        log.warning("stream worker: isolating the message(s) that fail a batch of %d", len(items))
        await self._bisect(items)

    async def _bisect(self, items: list[tuple[Any, Any]]) -> None:
        group: dict[Any, list[Any]] = {}
        for tp, r in items:
            group.setdefault(tp, []).append(r)
        try:
            await self.handle(group)
        except Exception as exc:
            if is_outage(exc):
                raise
            if len(items) > 1:
                mid = len(items) // 2
                await self._bisect(items[:mid])
                await self._bisect(items[mid:])
                return
            await self.reject(items[0][0], items[0][1], exc)
            return
        self._unprocessable_streak = 0

    async def reject(self, tp: Any, record: Any, exc: BaseException) -> None:
        """Dead-letter one message no sink can take (reason ``unprocessable``) and release its offset."""
        self._unprocessable_streak += 1
        if self._unprocessable_streak > MAX_UNPROCESSABLE_STREAK:
            raise SystemicFailure(
                f"{self._unprocessable_streak} messages in a row failed on their own (last: {exc!r}): "
                "not a poison message, a fault of the worker or a sink"
            ) from exc
        topic, partition = _topic_partition(tp)
        log.error(
            "stream worker: message %s[%d]@%d cannot be processed (%s: %s); dead-lettered as %s",
            topic,
            partition,
            record.offset,
            type(exc).__name__,
            exc,
            UNPROCESSABLE,
        )
        value = b"" if record.value is None else record.value
        async with self._batch_lock:
            await self.dead_letter([(tp, record)], [value], [(0, UNPROCESSABLE)], self.clock())
            done = {tp: record.offset + 1}
            self.next_offset.update(done)
            metrics.EVENTS_IN.inc()
            metrics.EVENTS_DONE.inc()
            self.raw.add(self.raw.to_rows([], [], []), [done])

    async def handle(self, records: dict[TopicPartition, list[Any]]) -> None:
        """Process one consumed batch (see the module docstring)."""
        await self.finish(await self.take(records))

    async def take(self, records: dict[TopicPartition, list[Any]]) -> _Batch:
        """:meth:`begin`, counting the batch as taken until :meth:`finish` ends it (a rebalance waits)."""
        self._taken += 1
        self._drained.clear()
        try:
            return await self.begin(records)
        except BaseException:
            self._release()
            raise

    def _release(self) -> None:
        self._taken -= 1
        if self._taken == 0:
            self._drained.set()

    async def on_log_error(self, exc: Exception) -> None:
        """React to what the consumer said about its positions (see :mod:`jobs.stream.log_guard`)."""
        consumer = self.consumer
        assert consumer is not None
        if isinstance(exc, OffsetOutOfRangeError):
            await self.reset_logs({tp: f"offset {off} is beyond the log's end" for tp, off in exc.args[0].items()})
        elif isinstance(exc, NoOffsetForPartitionError):
            tp = exc.args[0]
            if tp in self.next_offset or tp in self._released:  # consumed before, its committed offset gone:
                # the topic or the broker's log was lost
                await self.reset_logs({tp: "its committed offset is gone (topic deleted or broker log lost)"})
            else:  # a partition this group never consumed: its start, as auto_offset_reset=earliest would
                log.info(
                    "stream worker: %s[%d] has no committed offset; reading from its start", tp.topic, tp.partition
                )
                await consumer.seek_to_beginning(tp)
        else:
            resets, self._resets = self._resets, {}
            await self.reset_logs(resets)

    async def reset_logs(self, why: dict[Any, str]) -> None:
        """Go back to the start of partitions whose log was reset, loudly (the documented policy).

        What the old log's batches produced is kept — tiles, dead letters, and the buffered raw rows, which
        are written now — but their offsets are never committed onto the new log. The new log is replayed
        from its earliest offset; the per-event_id markers keep the tiles exact. Until the worker reaches the
        end the new log had now, the heartbeat says ``replaying`` (GET /health: degraded) and
        ``fstore_stream_replaying`` is 1; ``fstore_stream_log_reset_total{topic,partition}`` counts resets.
        """
        consumer = self.consumer
        assert consumer is not None
        async with self._batch_lock:
            owned = consumer.assignment()
            tps = [tp for tp in why if tp in owned]
            await self.wait_flush()
            tokens, rows = await self.raw.flush()
            if rows:
                metrics.RAW_WRITTEN.inc(rows)
                metrics.RAW_FLUSHES.inc()
            for offsets in tokens:
                self.pending.update({tp: off for tp, off in offsets.items() if tp not in why})
            for tp in why:
                self.pending.pop(tp, None)
            if not tps:
                return
            try:
                start = await asyncio.wait_for(consumer.beginning_offsets(tps), 15)
                end = await asyncio.wait_for(consumer.end_offsets(tps), 15)
            except Exception as exc:  # the topic is changing under us (stale metadata, deleted partitions)
                if not is_outage(exc) and not isinstance(exc, KafkaError):
                    raise
                log.warning("stream worker: log reset of %s postponed (%s); trying again", sorted(map(str, tps)), exc)
                self._resets.update({tp: why[tp] for tp in tps})
                await asyncio.sleep(1.0)
                return
            for tp in tps:
                old = self.next_offset.get(tp)
                consumer.seek(tp, start[tp])
                self.next_offset[tp] = start[tp]
                if end[tp] > start[tp]:
                    self.replay_until[tp] = end[tp]
                self._dead_acked = {p for p in self._dead_acked if p[0] != tp}
                metrics.LOG_RESETS.labels(tp.topic, str(tp.partition)).inc()
                log.warning(
                    "stream worker: the log of %s[%d] was reset: %s (processed up to %s; the log now holds %d..%d); "
                    "replaying it from offset %d — per-event_id markers absorb the replay (docs/runbook.md)",
                    tp.topic,
                    tp.partition,
                    why[tp],
                    old,
                    start[tp],
                    end[tp],
                    start[tp],
                )
            self.log_reset_at = self.clock()
            metrics.REPLAYING.set(1 if self.replay_until else 0)
            await self.commit()
            await self.heartbeat(None, time.time(), force=True)

    def note_progress(self) -> None:
        """Forget the replays that reached the end their new log had at the reset."""
        done = [tp for tp, until in self.replay_until.items() if self.next_offset.get(tp, 0) >= until]
        for tp in done:
            del self.replay_until[tp]
            log.warning("stream worker: %s[%d] replayed up to where its log was at the reset", tp.topic, tp.partition)
        if done:
            metrics.REPLAYING.set(1 if self.replay_until else 0)

    async def check_topic(self) -> None:
        """Every ``FSTORE_STREAM_TOPIC_CHECK_S``: has the events topic been re-created or got new partitions?"""
        if self.watch is None or time.monotonic() - self._topic_checked < self.s.stream_topic_check_s:
            return
        self._topic_checked = time.monotonic()
        state = await asyncio.to_thread(self.watch.describe)
        metrics.BROKER_UP.set(state is not None)  # the lag gauge keeps its last value while the broker is down
        self._topic, change = compare(self._topic, state)
        if change.partitions is not None:
            log.warning(
                "stream worker: %s has %d partitions, had %d; the consumer takes the new ones at its metadata refresh",
                self.watch.topic,
                change.partitions[1],
                change.partitions[0],
            )
        if change.recreated and self.consumer is not None:
            for tp in self.consumer.assignment():
                if tp.topic == self.watch.topic:
                    self._resets[tp] = "the topic was re-created (its topic id changed)"

    async def begin(self, records: dict[TopicPartition, list[Any]]) -> _Batch:
        """Validate and classify a batch, plan its tiles and build its raw rows (pure CPU apart from the cached
        cutover read). Raises on a batch a sink could not take (the caller isolates the message)."""
        t0 = time.perf_counter()
        now = self.clock()
        cutover = await self._redis(self.cutover)
        batch = [r for part in records.values() for r in part]
        values = list(map(attrgetter("value"), batch))
        if None in values:  # a record without a value (a tombstone): empty bytes, dead-lettered as malformed
            values = [b"" if v is None else v for v in values]
        last_at = self.last_at
        prep = prepare(values, now, last_at, cutover, self.s.horizon_us, self.reader)
        claimed = None
        if prep.claims and not self.s.stream_naive_per_event:
            # The claims go out now and Redis settles them while this batch's tiles are planned (on their own
            # pooled connection, maybe between the previous batch's tile calls: claims need no order with
            # tiles, and a batch's claims always go out after the previous batch's claims).
            claimed = asyncio.ensure_future(self._redis(lambda: self.tiles.claim(prep.claims, now)))
            claimed.add_done_callback(_retrieved)
            await asyncio.sleep(0)  # let it write its request
        offsets = {tp: part[-1].offset + 1 for tp, part in records.items() if part}
        tiles = None if self.s.stream_naive_per_event else self.tiles.plan(prep.fresh, now)
        rows = self.raw.to_rows(prep.valid, prep.hashes, prep.ingested_at)
        self.last_at = prep.last_at
        out = _Batch(records, batch, values, prep, tiles, rows, now, offsets, time.perf_counter() - t0)
        out.claimed = claimed
        return out

    async def finish(self, b: _Batch) -> None:
        """Dead letters and speed tiles (concurrently), then hand the valid copies and the offsets to the raw
        sink. ``b.sent`` resolves as soon as the tiles' Redis request is written (or on any exit)."""
        try:
            async with self._batch_lock:
                t0 = time.perf_counter()
                prep = b.prep
                dead = (
                    asyncio.ensure_future(self.dead_letter(_positions(b, prep.invalid), b.values, prep.invalid, b.now))
                    if prep.invalid
                    else None
                )
                try:
                    skipped = await self.apply_tiles(b)
                except BaseException:
                    if dead is not None:  # let the dead letters land (and be remembered): a re-run skips them
                        await asyncio.wait([dead])
                    raise
                if dead is not None:
                    await dead
                values, prep = b.values, b.prep
                metrics.EVENTS_IN.inc(len(values))
                metrics.EVENTS_VALID.inc(len(prep.valid))
                metrics.BATCH_SIZE.observe(len(values))
                if prep.late:
                    metrics.LATE.inc(prep.late)
                if prep.beyond_horizon:
                    metrics.BEYOND_HORIZON.inc(prep.beyond_horizon)
                if b.tiles is not None:
                    self.remember_future(b.tiles)
                if self.future:
                    await self.move_due()
                metrics.DUPLICATES.inc(len(skipped) + prep.batch_duplicates)
                committed = time.time()
                metrics.TILE_COMMITS.inc()
                metrics.LAST_TILE_COMMIT.set(committed)
                await self.heartbeat(prep, committed)
                for ts, n in Counter(map(attrgetter("timestamp"), b.records)).items():  # Kafka timestamps: epoch ms
                    metrics.observe_many(metrics.FRESHNESS, committed - ts / 1000, n)
                self.next_offset.update(b.offsets)
                if self.replay_until:
                    self.note_progress()
                metrics.PROCESSING.observe(b.seconds + time.perf_counter() - t0)
                metrics.EVENTS_DONE.inc(len(b.values))
                self.raw.add(b.rows, [b.offsets])
                if self.raw.due():
                    if self.raw.buffered >= 2 * self.s.stream_raw_max_events:
                        await self.wait_flush()  # back-pressure: never more than ~2 flushes' worth in memory
                    self.start_flush()
        finally:
            b.mark_sent()
            self._release()

    async def apply_tiles(self, b: _Batch) -> set[str]:
        """The batch's speed-tile updates; returns the event_ids skipped as already counted."""
        plan = b.tiles
        if plan is None:  # the benchmark's reference: a round trip per event
            b.mark_sent()
            skipped: set[str] = set()
            for one in b.prep.fresh:
                skipped |= await self._redis(lambda one=one: self.tiles.apply([one], b.now))
            return skipped
        lost = set() if b.claimed is None else self.tiles.drop(plan, await b.claimed)
        skipped = await self._redis(lambda: self.tiles.send(plan, on_sent=b.mark_sent))
        return skipped | lost

    def remember_future(self, plan: Any) -> None:
        """Queue the future events a sent plan stored as fields, to move them once their time comes."""
        stored = self.tiles.stored_future(plan)
        if stored:
            metrics.FUTURE_STORED.inc(len(stored))
            ts = self.reader.ts_field
            for held in stored:
                heapq.heappush(self.future, (held[2][ts], next(self._future_seq), held))

    async def move_due(self, now: int | None = None) -> None:
        """Move the queued future events whose event_time is before ``now`` (default: the processing clock) into
        the tiles (one atomic step per entity: cells added, fields deleted; a repeated move applies nothing).
        Readers count the fields by their exact times meanwhile, so when this runs changes no value, only the
        cost of reads."""
        if now is None:
            now = self.clock()
        due: list[Held] = []
        while self.future and self.future[0][0] < now:
            due.append(heapq.heappop(self.future)[2])
        if due:
            plan = self.tiles.plan_moves(due)
            await self._redis(lambda: self.tiles.send(plan))
            metrics.FUTURE_MOVED.inc(len(due))

    async def dead_letter(
        self, where: Sequence[tuple[Any, Any]], values: Sequence[bytes], invalid: Sequence[tuple[int, str]], now: int
    ) -> None:
        """Send invalid messages to the DLQ topic and wait until the broker has them all.

        ``where`` gives, for each entry of ``invalid``, its ``(partition, record)``. A dead letter is sent once
        per source position: one the broker acknowledged earlier in this process (a re-run batch) is
        skipped; one refused as too large is cut shorter (:func:`jobs.stream.dead_letters.shrink`) and sent
        again. Other failures are retried (an outage longer than ``FSTORE_STREAM_OUTAGE_EXIT_S`` raises).
        """
        at = iso(now).encode()
        limit = self.s.stream_dlq_max_bytes
        todo: list[tuple[tuple[Any, int], DeadLetter, bytes]] = []
        for (tp, record), (i, reason) in zip(where, invalid, strict=True):
            pos = (tp, record.offset)
            if pos in self._dead_acked:
                continue
            metrics.EVENTS_INVALID.labels(reason).inc()
            topic, partition = _topic_partition(tp)
            letter = dead_letter(topic, partition, record.offset, record.key, values[i], reason, at, limit)
            if len(letter.value) < len(values[i]):
                metrics.DLQ_TRUNCATED.inc()
            todo.append((pos, letter, values[i]))
        outage = OutageClock("the dead-letter topic", self.s.stream_outage_exit_s)
        while todo:  # a dead letter is never dropped: resend what the broker did not acknowledge
            results: list[Any] = []
            for _, letter, _ in todo:
                try:
                    results.append(
                        await self.dlq_topic.send(key=letter.key, value=letter.value, headers=letter.headers)
                    )
                except Exception as exc:  # refused before queuing (record too large, producer not connected)
                    results.append(exc)
            pending = [r for r in results if not isinstance(r, BaseException)]
            acks = iter(await asyncio.gather(*pending, return_exceptions=True))
            again: list[tuple[tuple[Any, int], DeadLetter, bytes]] = []
            error: BaseException | None = None
            for item, res in zip(todo, results, strict=True):
                outcome = res if isinstance(res, BaseException) else next(acks)
                if isinstance(outcome, MessageSizeTooLargeError):
                    metrics.DLQ_TRUNCATED.inc()
                    again.append((item[0], shrink(item[1], item[2]), item[2]))
                elif isinstance(outcome, BaseException):
                    error = error or outcome
                    again.append(item)
                else:
                    self._dead_acked.add(item[0])
            if again:  # a refused record breaks an idempotent session's sequence numbers: retry in a new one
                await self.dlq_topic.reset()
            todo = again
            if error is not None:
                delay = outage.failed(error)
                metrics.DLQ_RETRIES.inc(len(todo))
                log.warning("DLQ send failed (%s); retrying %d in %.1f s", error, len(todo), delay)
                await asyncio.sleep(delay)

    def start_flush(self) -> None:
        """Flush the raw sink in the background (at most one flush at a time)."""
        task = self._flushing
        if task is not None and (not task.done() or task.cancelled() or task.exception() is not None):
            return  # still running, or failed: the consumer loop re-raises it (check_flush) and stops
        self._flushing = asyncio.ensure_future(self.flush())

    def check_flush(self) -> None:
        """Re-raise the error of a failed background flush (the worker then stops, nothing committed)."""
        if self._flushing is not None and self._flushing.done():
            task, self._flushing = self._flushing, None
            task.result()

    async def wait_flush(self) -> None:
        """Wait for the background flush in progress, if any."""
        if self._flushing is not None:
            await asyncio.shield(self._flushing)
            self.check_flush()

    async def flush(self) -> None:
        """Flush the raw sink (Delta write in a thread), then commit the offsets it covered."""
        t0 = time.perf_counter()
        tokens, rows = await self.raw.flush()
        if rows:
            metrics.RAW_WRITTEN.inc(rows)
            metrics.RAW_FLUSHES.inc()
            metrics.RAW_FLUSH_SECONDS.observe(time.perf_counter() - t0)
        for offsets in tokens:
            self.pending.update(offsets)
        await self.commit()

    async def commit(self) -> None:
        """Commit the offsets of flushed batches; on failure keep them for the next try (if still ours)."""
        async with self._commit_lock:
            if not self.pending or self.consumer is None:
                return
            offsets, self.pending = self.pending, {}
            try:
                await self.consumer.commit(offsets)
                if self._dead_acked:  # committed positions are never re-run: forget their dead letters
                    self._dead_acked = {p for p in self._dead_acked if p[1] >= offsets.get(p[0], -1)}
            except Exception as exc:  # broker away, rebalance in progress, partition revoked, ...
                owned = self.consumer.assignment()
                for tp, off in offsets.items():
                    if tp in owned and self.pending.get(tp, -1) < off:
                        self.pending[tp] = off
                log.warning("offset commit failed (%s); %d partition(s) kept for the next try", exc, len(self.pending))

    async def on_revoked(self) -> None:
        """Before a rebalance: finish the batches taken from the consumer (the one being validated
        included), flush the raw sink, commit. The consumer hands out no new records until the
        rebalance is over, so what is committed here is everything this worker did with its partitions.

        Waits at most the rebalance timeout for the batches (a Redis outage keeps them retrying); what is
        not committed then is redelivered to the next owner, which the markers make harmless.
        """
        try:
            await asyncio.wait_for(self._drained.wait(), timeout=self.s.stream_rebalance_timeout_s)
        except TimeoutError:
            log.warning("stream worker: batches still running at a rebalance; their messages will be redelivered")
        async with self._batch_lock:
            try:
                await self.wait_flush()
                await self.flush()
            except Exception:
                log.exception("stream worker: flush before rebalance failed; the batches will be redelivered")

    def on_assigned(self, assigned: set[TopicPartition]) -> None:
        """After a rebalance: forget the offsets of partitions this worker no longer owns (committing them
        would fail the whole commit, and the new owner has its own), and their lag gauges."""
        self.pending = {tp: off for tp, off in self.pending.items() if tp in assigned}
        for tp in [tp for tp in self.next_offset if tp not in assigned]:
            del self.next_offset[tp]
            self._released.add(tp)  # if it comes back without a committed offset, its log was lost
            with contextlib.suppress(KeyError):  # never measured
                metrics.CONSUMER_LAG.remove(str(tp.partition))

    async def shutdown(self) -> None:
        """Worker stop: flush what is buffered, commit it, leave the group."""
        try:
            if self._flushing is not None and not self._flushing.done():
                await asyncio.wait([self._flushing], timeout=60)
            if self.raw.buffered:
                log.info("stream worker stopping: flushing %d buffered raw events", self.raw.buffered)
            tokens, _ = self.raw.flush_sync()
            for offsets in tokens:
                self.pending.update(offsets)
            await self.commit()
        except Exception:
            log.exception("raw sink: final flush failed; the messages stay uncommitted")
        if self._newest_event is not None:
            await self.heartbeat(None, time.time(), force=True)
        if self.consumer is not None:
            try:
                await self.consumer.stop()
            except Exception:
                log.exception("stream worker: consumer stop failed")
        try:
            await self.dlq_topic.stop()
        except Exception:
            log.exception("stream worker: dead-letter producer stop failed")

    def update_lag(self) -> None:
        """Consumer lag per partition: high watermark minus the next offset to process."""
        consumer = self.consumer
        if consumer is None:
            return
        for tp in consumer.assignment():
            try:
                high = consumer.highwater(tp)
            except Exception:  # not fetched yet
                continue
            if high is not None and tp in self.next_offset:
                metrics.CONSUMER_LAG.labels(str(tp.partition)).set(max(0, high - self.next_offset[tp]))


class _ResetRequested(Exception):
    """The topic check asked for log resets (handled by the consumer loop, between batches)."""


def _topic_partition(tp: Any) -> tuple[str, int]:
    """``(topic, partition)`` of a consumer's partition key (a plain name counts as partition 0: tests)."""
    return (tp.topic, tp.partition) if isinstance(tp, TopicPartition) else (str(tp), 0)


def _positions(b: _Batch, invalid: Sequence[tuple[int, str]]) -> list[tuple[Any, Any]]:
    """``(partition, record)`` of each invalid message of a batch (positions index ``b.records``)."""
    starts: list[tuple[int, Any]] = []
    n = 0
    for tp, part in b.source.items():
        starts.append((n, tp))
        n += len(part)
    out = []
    k = 0
    for i, _ in invalid:  # invalid positions increase
        while k + 1 < len(starts) and starts[k + 1][0] <= i:
            k += 1
        out.append((starts[k][1], b.records[i]))
    return out
