"""``fstore publish``: replay a message file into Kafka at a target rate."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from fstore.core.plan import Plan

COMPRESSION = ["none", "gzip", "snappy", "lz4", "zstd"]


def partition_key(plan: Plan) -> str:
    """The event field a JSONL message is keyed by: the join key of the first entity whose field every event
    carries (copies of one event then share a partition, and an entity's events stay in order), else the
    declared id field."""
    required = {f.name for f in plan.schema.fields if f.required}
    return next((e.join_key for e in plan.entities if e.join_key in required), plan.schema.id_field)


@click.command()
@click.argument("file", required=False, type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--topic",
    default=None,
    help="Destination topic  [default: FSTORE_EVENTS_TOPIC, else the topic the stream source declares, else 'events']",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Target events per second; 0 = as fast as possible.",
)
@click.option("--bootstrap", default=None, help="Kafka bootstrap servers  [default: FSTORE_KAFKA_BOOTSTRAP]")
@click.option(
    "--batch-size",
    type=click.IntRange(min=1),
    default=10_000,
    show_default=True,
    help="Messages read from the file at a time.",
)
@click.option(
    "--compression",
    type=click.Choice(COMPRESSION),
    default="none",
    show_default=True,
    help="Producer compression (consumers on aiokafka need extra packages for lz4/zstd/snappy).",
)
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
@click.option(
    "--live",
    is_flag=True,
    help="Instead of FILE, generate the shipped example's traffic now (event times = now) for --duration seconds.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True),
    default=60.0,
    show_default=True,
    help="--live: seconds of traffic.",
)
@click.option("--seed", type=click.IntRange(min=0), default=7, show_default=True, help="--live: random seed.")
@click.option("--users", type=click.IntRange(min=1), default=10_000, show_default=True, help="--live: users.")
@click.option("--products", type=click.IntRange(min=1), default=1_000, show_default=True, help="--live: products.")
@click.option(
    "--duplicate-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="--live: share of re-sent events.",
)
@click.option(
    "--malformed-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="--live: share of invalid messages.",
)
@click.option(
    "--pii-rate",
    type=click.FloatRange(0, 1),
    default=0.0,
    show_default=True,
    help="--live: share of events carrying personal data.",
)
def publish(
    file: Path | None,
    topic: str | None,
    rate: float,
    bootstrap: str | None,
    batch_size: int,
    compression: str,
    progress: bool,
    live: bool,
    duration: float,
    seed: int,
    **live_options: Any,
) -> None:
    """Send the messages of FILE (.jsonl or .parquet) to Kafka, in file order and byte-for-byte.

    The key is the Parquet `key` column, or for JSONL the event's partition key when the line is JSON with
    a string there (no key otherwise): the join key of the first entity the applied repository requires in
    every event, else its id field. A missing topic is created (FSTORE_TOPIC_PARTITIONS partitions for
    the events topic, 1 otherwise). Ends with the achieved rate and the delivered/failed counts; the exit
    status is 1 if any message was not delivered.

    With --live (no FILE), the shipped example's synthetic traffic is generated on the fly (see `fstore
    generate`; it follows feature_repo/'s event schema) with event times starting now, and each message
    is sent at its arrival time: --rate events/s on average for --duration seconds.

    \b
    Examples:
      fstore publish data/events.parquet --rate 5000
      fstore publish --live --rate 200 --duration 300 --malformed-rate 0.01
    """
    import sys
    import time

    from tqdm import tqdm

    from examples.synth import live as live_traffic
    from fstore.devsvc.services import ServiceError, ensure_topics
    from fstore.kafka import client as kafka_io
    from fstore.kafka.messages import MessageFileError, count_messages
    from fstore.plan_source import current_plan, declared_topic
    from fstore.settings import get_settings
    from fstore.topics import on_declared_topic

    if (file is None) == (not live):
        raise click.UsageError("give either FILE or --live")
    settings = on_declared_topic(get_settings(), declared_topic())
    topic = topic or settings.events_topic
    bootstrap = bootstrap or settings.kafka_bootstrap
    config = {"compression.type": compression}
    if live:
        if rate <= 0:
            raise click.UsageError("--live needs --rate > 0 (events per second)")
        try:
            plan = live_traffic.live_plan(rate, duration, time.time_ns() // 1000, **live_options)
        except ValueError as exc:
            raise click.UsageError(str(exc)) from None
        total = plan.expected
    else:
        assert file is not None
        try:
            total = count_messages(file)
            batches = kafka_io.iter_keyed_batches(file, partition_key(current_plan()), batch_size)
        except MessageFileError as exc:  # names the file and what is wrong with it
            raise click.ClickException(str(exc)) from None
        except (OSError, ValueError) as exc:
            raise click.ClickException(f"cannot read {file}: {exc}") from None
    partitions = settings.topic_partitions if topic == settings.events_topic else 1
    try:
        created = ensure_topics(bootstrap, {topic: partitions})
    except ServiceError as exc:
        raise click.ClickException(
            f"{exc}\nStart local services with `fstore services up`, or set FSTORE_KAFKA_BOOTSTRAP."
        ) from None
    if created:
        click.echo(f"created topic {topic!r} with {partitions} partition(s) on {bootstrap}")
    with tqdm(
        total=total, unit="msg", unit_scale=True, disable=not progress, file=sys.stderr, desc=f"publish → {topic}"
    ) as bar:
        if live:
            report = live_traffic.publish_live(plan, seed, bootstrap, topic, config=config, progress=bar.update)
        else:
            assert file is not None
            report = kafka_io.publish(
                batches,
                bootstrap,
                topic,
                rate=rate,
                config=config,
                progress=bar.update,
            )
    click.echo(report.summary())
    if not report.ok:
        raise SystemExit(1)
