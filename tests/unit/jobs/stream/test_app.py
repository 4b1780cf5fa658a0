"""jobs.stream.app: Faust runs the worker and the DLQ producer, but never its own Kafka consumer (ADR 0009).

The speed layer consumes with its own aiokafka consumer in the group ``FSTORE_STREAM_APP_ID``. If Faust's
consumer started too it would join the same group and take partitions from it. The worker starts the
services ``App.on_init_dependencies`` returns; this checks that list, so a faust-streaming release that
stops honouring ``BootStrategy.enable_kafka_consumer`` fails here rather than in production.
"""

from __future__ import annotations

import pytest
from faust.transport.consumer import Consumer

from jobs.stream.app import app, app_options

pytestmark = pytest.mark.unit


def test_the_worker_starts_faust_producer_and_agents_but_no_faust_consumer() -> None:
    services = list(app.on_init_dependencies())
    assert not any(isinstance(s, Consumer) for s in services), services
    assert app.topics not in services  # the conductor that feeds Faust agents
    assert app.producer in services  # declares the events topic (dead letters have a producer of their own)
    assert app.agents in services  # tasks and timers


def test_app_options_name_the_consumer_group() -> None:
    from jobs.stream.settings import get_stream_settings

    s = get_stream_settings()
    opts = app_options(s)
    assert opts["id"] == s.stream_app_id == app.conf.id
    assert opts["broker"] == [f"kafka://{h.strip()}" for h in s.kafka_bootstrap.split(",") if h.strip()]


def test_a_metrics_port_in_use_is_named_with_its_variable() -> None:
    """The worker exits 1 when its metrics port is taken (docs/runbook.md, worker exit codes); the CRITICAL
    line then says which address and which variable to change, not only 'Address already in use'."""
    import socket

    from jobs.stream import metrics

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match=f"127.0.0.1:{port}.*FSTORE_STREAM_METRICS_PORT"):
            metrics.serve(port, "127.0.0.1")
