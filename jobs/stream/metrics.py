"""Prometheus metrics of the stream worker (served by ``prometheus_client`` on a configurable port)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry()

EVENTS_IN = Counter("fstore_stream_events_in_total", "Messages consumed from the events topic", registry=REGISTRY)
EVENTS_DONE = Counter(
    "fstore_stream_events_processed_total",
    "Messages fully processed: dead-lettered or applied to the tiles (raw sink pending)",
    registry=REGISTRY,
)
EVENTS_VALID = Counter("fstore_stream_events_valid_total", "Valid events (every copy)", registry=REGISTRY)
EVENTS_INVALID = Counter(
    "fstore_stream_events_invalid_total", "Messages dead-lettered, by reason", ["reason"], registry=REGISTRY
)


def declare_reasons(reasons: Iterable[str]) -> None:
    """Create the dead-letter counter of every reason at 0, before any message has one.

    Prometheus counts an increase only between two samples of a series: a ``{reason}`` series that first
    appears with a whole burst in it (a producer release that breaks the schema) would add nothing to
    ``rate()``, so neither the dashboard nor FstoreDeadLetterRateHigh would see that first flood.
    """
    for reason in reasons:
        EVENTS_INVALID.labels(reason)


DUPLICATES = Counter(
    "fstore_stream_duplicates_skipped_total",
    "Valid copies not applied to tiles because their event_id was already counted",
    registry=REGISTRY,
)
LATE = Counter("late_events_total", "Valid events with event_time before the batch cutover C", registry=REGISTRY)
BEYOND_HORIZON = Counter(
    "fstore_stream_beyond_horizon_events_total",
    "Valid events older than the late horizon: raw_events only, no tiles",
    registry=REGISTRY,
)
FUTURE_STORED = Counter(
    "fstore_stream_future_events_total",
    "Events stamped after the processing clock, stored as exact fields until their time comes (per view)",
    registry=REGISTRY,
)
FUTURE_MOVED = Counter(
    "fstore_stream_future_events_moved_total",
    "Future-event fields moved into the tiles once the clock passed their event_time (per view)",
    registry=REGISTRY,
)
RAW_WRITTEN = Counter("fstore_stream_raw_events_written_total", "Rows appended to raw_events", registry=REGISTRY)
RAW_FLUSHES = Counter("fstore_stream_raw_flushes_total", "Delta commits of the raw sink", registry=REGISTRY)
BATCH_SIZE = Histogram(
    "fstore_stream_batch_size",
    "Messages per processed batch",
    registry=REGISTRY,
    buckets=(1, 10, 100, 500, 1_000, 2_500, 5_000, 10_000, 20_000, 50_000),
)
PROCESSING = Histogram(
    "fstore_stream_batch_seconds",
    "Validate + aggregate + Redis time per batch",
    registry=REGISTRY,
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
)
RAW_FLUSH_SECONDS = Histogram(
    "fstore_stream_raw_flush_seconds",
    "Time of one raw_events commit",
    registry=REGISTRY,
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
FRESHNESS = Histogram(
    "fstore_stream_freshness_lag_seconds",
    "Wall clock at tile commit minus the Kafka record timestamp",
    registry=REGISTRY,
    buckets=(
        0.005,
        0.01,
        0.025,
        0.05,
        0.075,
        0.1,
        0.15,
        0.2,
        0.3,
        0.4,
        0.5,
        0.6,
        0.75,
        1.0,
        1.25,
        1.5,
        2.0,
        3.0,
        5.0,
        10.0,
        30.0,
        60.0,
        300.0,
    ),
)
CONSUMER_LAG = Gauge(
    "fstore_stream_consumer_lag",
    "High watermark minus next offset to read, per partition",
    ["partition"],
    registry=REGISTRY,
)
REDIS_RETRIES = Counter(
    "fstore_stream_redis_errors_total", "Redis round trips that failed and were retried", registry=REGISTRY
)
TILE_COMMITS = Counter(
    "fstore_stream_tile_commits_total",
    "Batches whose speed-tile updates Redis has applied (one pipelined round trip each)",
    registry=REGISTRY,
)
LAST_TILE_COMMIT = Gauge(
    "fstore_stream_last_tile_commit_timestamp_seconds", "Wall clock of the last speed-tile commit", registry=REGISTRY
)
DLQ_RETRIES = Counter(
    "fstore_stream_dlq_retries_total", "Dead letters re-sent after a failed produce", registry=REGISTRY
)

DLQ_TRUNCATED = Counter(
    "fstore_stream_dlq_truncated_total",
    "Dead letters whose value was cut (longer than FSTORE_STREAM_DLQ_MAX_BYTES, or refused by the broker as too large)",
    registry=REGISTRY,
)

LOG_RESETS = Counter(
    "fstore_stream_log_reset_total",
    "Times the worker found a partition's log reset (offset beyond its end, offsets gone, topic re-created) "
    "and went back to the log's start",
    ["topic", "partition"],
    registry=REGISTRY,
)
BROKER_UP = Gauge(
    "fstore_stream_broker_up",
    "1 if the broker answered the worker's last metadata check of the events topic (every "
    "FSTORE_STREAM_TOPIC_CHECK_S), 0 if it did not: consumer lag and commits cannot say so while it is down",
    registry=REGISTRY,
)
REDIS_LOST_WRITES = Gauge(
    "fstore_stream_redis_lost_writes",
    "1 once this worker found that Redis lost writes it had made (its witness key went back: restart without "
    "persistence, an older snapshot, a lagging replica promoted); speed values may be undercounted until "
    "fstore repair",
    registry=REGISTRY,
)
REPLAYING = Gauge(
    "fstore_stream_replaying",
    "1 while the worker replays a reset log and has not reached the end the new log had at the reset",
    registry=REGISTRY,
)
PLAN_STALE = Gauge(
    "fstore_plan_stale",
    "1 while the applied plan record changed but could not be read: the worker runs the previous plan",
    registry=REGISTRY,
)
PLAN_RELOAD_FAILURES = Counter(
    "fstore_plan_reload_failures_total",
    "Changed applied plan records the worker could not read (it kept the previous plan)",
    registry=REGISTRY,
)


def observe_many(hist: Histogram, value: float, n: int) -> None:
    """``hist.observe(value)`` ``n`` times, in one step (same buckets and sum as the loop)."""
    bounds, counts = getattr(hist, "_upper_bounds", None), getattr(hist, "_buckets", None)
    if n == 1 or bounds is None or counts is None:
        for _ in range(n):
            hist.observe(value)
        return
    hist._sum.inc(value * n)
    counts[bisect_left(bounds, value)].inc(n)


def serve(port: int, host: str = "127.0.0.1") -> None:
    """Start the metrics HTTP server on ``host:port`` (port 0: none).

    Raises:
        OSError: the address cannot be bound (another worker's port), naming it and the variable to change.
    """
    if port:
        try:
            start_http_server(port, addr=host, registry=REGISTRY)
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"metrics server cannot listen on {host}:{port} ({exc.strerror}): set FSTORE_STREAM_METRICS_PORT "
                "to a free port (0: no metrics server), or FSTORE_STREAM_METRICS_HOST",
            ) from exc
