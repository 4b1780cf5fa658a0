"""The Faust app of the speed layer: ``faust -A jobs.stream.app worker`` or ``fstore stream``.

Faust provides the worker, the timers and the CLI; its own Kafka consumer is disabled (it would join the
group with a second, per-message subscription). The app's task runs :class:`jobs.stream.layer.SpeedLayer`,
which consumes ``events`` in bulk: validation, dead letters, speed tiles, the raw sink and offset commits
(see that module for the flow and its guarantees); dead letters go through an idempotent producer of their
own (:mod:`jobs.stream.dead_letters`).
"""

from __future__ import annotations

import logging
from typing import Any

import faust
from faust.app.base import BootStrategy

from fstore.plan_source import declared_topic
from fstore.settings import STATE_DIR
from fstore.topics import on_declared_topic
from jobs.stream import metrics
from jobs.stream.dead_letters import KafkaDeadLetters
from jobs.stream.faults import exit_code
from jobs.stream.layer import SpeedLayer, bootstrap_servers, stop_worker
from jobs.stream.settings import StreamSettings, get_stream_settings

log = logging.getLogger("fstore.stream")


class _Boot(BootStrategy):
    """Faust services without Faust's consumer: the speed layer consumes with its own bulk consumer."""

    enable_kafka_consumer = False


class StreamApp(faust.App):
    """A Faust app whose worker starts the producer, timers and tasks but no Faust consumer."""

    BootStrategy = _Boot


def app_options(s: StreamSettings) -> dict[str, Any]:
    """The options of the worker's Faust app (id, broker, raw serializers, DLQ producer acks, no web server)."""
    (STATE_DIR / "faust").mkdir(parents=True, exist_ok=True)
    return {
        "id": s.stream_app_id,
        "broker": [f"kafka://{h}" for h in bootstrap_servers(s)],
        "store": "memory://",
        "datadir": str(STATE_DIR / "faust" / s.stream_app_id),
        "key_serializer": "raw",
        "value_serializer": "raw",
        "topic_partitions": s.topic_partitions,
        "topic_replication_factor": 1,
        "web_enabled": False,
        "producer_acks": -1,
        "logging_config": None,
    }


def make_app(s: StreamSettings) -> faust.App:
    """The Faust app configured from settings (producer for the DLQ, timers, the consumer task)."""
    return StreamApp(**app_options(s))


settings = on_declared_topic(get_stream_settings(), declared_topic())  # the topic the repository's source declares
app = make_app(settings)
events_topic = app.topic(settings.events_topic, key_type=bytes, value_type=bytes, partitions=settings.topic_partitions)

_layer: SpeedLayer | None = None
_start_failure: BaseException | None = None  # why the speed layer could not even be built (its exit code)


def layer() -> SpeedLayer:
    """The worker's :class:`SpeedLayer` (created on first use, inside the worker's event loop)."""
    global _layer
    if _layer is None:
        dead = KafkaDeadLetters(bootstrap_servers(settings), settings.dlq_topic, f"{settings.stream_app_id}-dlq")
        _layer = SpeedLayer(settings, events_topic, dead)
    return _layer


@app.task  # type: ignore[untyped-decorator]
async def start_metrics() -> None:
    """Serve Prometheus metrics once the worker starts."""
    metrics.serve(settings.stream_metrics_port, settings.stream_metrics_host)
    log.info(
        "stream worker: %s -> redis %s, raw_events %s, metrics port %s",
        settings.events_topic,
        settings.redis_url,
        settings.table("raw_events"),
        settings.stream_metrics_port or "off",
    )


@app.task  # type: ignore[untyped-decorator]
async def speed_layer() -> None:
    """Consume ``events`` in bulk: DLQ, speed tiles, raw sink; commit after the raw flush."""
    global _start_failure
    try:
        state = layer()
    except Exception as exc:  # e.g. no node of a Redis Cluster answers: its slot map is read here
        _start_failure = exc
        stop_worker(exc, "cannot start")
        return
    await state.run()


@app.timer(interval=0.5)  # type: ignore[untyped-decorator]
async def housekeeping() -> None:
    """Flush an idle raw buffer when its age bound passes, retry failed commits, refresh the lag gauge, check
    the events topic (re-created, new partitions) every ``FSTORE_STREAM_TOPIC_CHECK_S``."""
    if _layer is None:  # not built yet, or it could not be (the worker is stopping)
        return
    state = _layer
    if state.consumer is None:
        return
    if state.raw.due():
        state.start_flush()
    elif state.pending and (state._flushing is None or state._flushing.done()):
        await state.commit()
    state.update_lag()
    await state.check_topic()


def run_worker(loglevel: str | None = None) -> None:
    """Run the worker in this process until SIGTERM/SIGINT (what ``fstore stream`` calls).

    Exits 0 after a requested stop; after a failure that stopped the speed layer, with
    :func:`jobs.stream.faults.exit_code` (69: an outage outlasted ``FSTORE_STREAM_OUTAGE_EXIT_S``; 70:
    anything else) — never 0, which is what Faust's worker returns after the SIGTERM the layer sends itself.
    """
    from faust.worker import Worker

    logging.basicConfig(
        level=(loglevel or settings.stream_log_level).upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        Worker(app, loglevel=loglevel or settings.stream_log_level, quiet=True).execute_from_commandline()
    except SystemExit as stop:
        failure = _layer.failure if _layer is not None else _start_failure
        if failure is not None:
            raise SystemExit(exit_code(failure)) from None
        raise stop
