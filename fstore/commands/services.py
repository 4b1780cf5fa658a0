"""``fstore services``: the local Redis and Apache Kafka broker (install, start, stop, inspect)."""

from __future__ import annotations

from pathlib import Path

import click

from fstore.settings import STATE_DIR

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=STATE_DIR,
    show_default=True,
    help="Directory of the pid files, logs and services.env.",
)


@click.group()
def services() -> None:
    """Local Redis and Apache Kafka broker (KRaft) for the demo and development.

    `install` fetches the Kafka and delta-spark jars from Maven Central once (make setup runs it). `up`
    writes .fstore/services.env, which every fstore command reads, so no variable needs exporting; the
    broker keeps its log and its ports in the state directory across restarts.
    """


@services.command()
def install() -> None:
    """Fetch and cache the Apache Kafka and delta-spark jars (Maven); a second run downloads nothing.

    Exit status 1 if the Kafka jars cannot be had. Missing delta-spark jars only warn: the batch job and
    the Spark engine then commit and read Delta through delta-rs.
    """
    import time

    from fstore.jvm import artifacts
    from fstore.jvm.maven import JarError, fetch
    from fstore.settings import get_settings

    cache = get_settings().jar_cache
    sets = [("kafka", artifacts.KAFKA, True)]
    minor = artifacts.spark_minor()
    delta = artifacts.delta_jars_for(minor)
    if delta is None:
        click.echo(f"delta   skipped: no delta-spark build for PySpark {minor}; the batch job uses delta-rs", err=True)
    else:
        sets.append(("delta", delta, False))
    for label, jars, required in sets:
        t0 = time.monotonic()
        try:
            paths, fetched = fetch(jars, cache)
        except JarError as exc:
            if required:
                raise click.ClickException(str(exc)) from None
            click.echo(f"{label:<7} WARNING {exc}; the batch job uses delta-rs", err=True)
            continue
        how = f"fetched in {time.monotonic() - t0:.1f} s" if fetched else "cached"
        click.echo(f"{label:<7} {how:<18} {len(paths)} jars in {jars.directory(cache)}")


@services.command()
@state_dir_option
@click.option("--redis-port", type=int, default=None, help="Redis port  [default: a free one]")
@click.option("--broker-port", type=int, default=None, help="Broker port  [default: a free one]")
@click.option("--timeout", type=float, default=90.0, show_default=True, help="Seconds to wait for health.")
def up(state_dir: Path, redis_port: int | None, broker_port: int | None, timeout: float) -> None:
    """Start Redis and the broker (reusing healthy running ones) and create the event topics.

    A service that died is started again on its recorded port when that port is free, so what already
    reads services.env reaches it again.
    """
    from fstore.devsvc import services as localsvc
    from fstore.plan_source import declared_topic
    from fstore.settings import get_settings
    from fstore.topics import on_declared_topic

    settings = on_declared_topic(get_settings(), declared_topic())
    topics = {settings.events_topic: settings.topic_partitions, settings.dlq_topic: 1}
    try:
        redis, broker, reused = localsvc.up(
            state_dir, redis_port=redis_port, broker_port=broker_port, topics=topics, start_timeout=timeout
        )
    except localsvc.ServiceError as exc:
        raise click.ClickException(str(exc)) from None
    for svc in (redis, broker):
        how = "already running" if reused[svc.name] else "started"
        click.echo(f"{svc.name:<7} {how:<16} {svc.address:<28} pid {svc.pid}  log {svc.log_path}")
    # the partitions the topics have, not those asked for: an existing topic keeps its count
    actual = {**topics, **{k: v for k, v in localsvc.list_topics(broker.bootstrap).items() if k in topics}}
    parts = ", ".join(f"{name} ({n} partition{'s' if n > 1 else ''})" for name, n in actual.items())
    click.echo(f"topics  {parts}")
    has = actual[settings.events_topic]
    if "topic_partitions" in settings.model_fields_set and has != settings.topic_partitions:
        click.echo(
            f"WARNING {settings.events_topic} already exists with {has} partition{'s' if has > 1 else ''}: "
            f"FSTORE_TOPIC_PARTITIONS={settings.topic_partitions} applies only when the topic is created "
            "(docs/scaling.md: adding partitions later moves keys)",
            err=True,
        )
    click.echo(f"env     {localsvc.env_file(state_dir)} (read by fstore; `fstore services env` to export)")


@services.command()
@state_dir_option
def down(state_dir: Path) -> None:
    """Stop the services started by `up` and remove services.env."""
    from fstore.devsvc import services as localsvc

    for name, pid in localsvc.down(state_dir).items():
        click.echo(f"{name:<7} stopped (pid {pid})" if pid is not None else f"{name:<7} not running")
    click.echo(f"removed {localsvc.env_file(state_dir)}")


@services.command()
@state_dir_option
def status(state_dir: Path) -> None:
    """Show whether each service is running and healthy. Exit status 1 unless both are healthy."""
    from fstore.devsvc import services as localsvc

    rows = localsvc.status(state_dir)
    for st in rows:
        if not st.running:
            click.echo(f"{st.name:<7} not running")
        else:
            health = "healthy" if st.healthy else "UNHEALTHY"
            click.echo(f"{st.name:<7} {health:<16} {st.address:<28} pid {st.pid}  log {st.log_path}")
    if not all(st.healthy for st in rows):
        raise SystemExit(1)


@services.command()
@state_dir_option
def env(state_dir: Path) -> None:
    """Print `export` lines for the running services: eval "$(fstore services env)"."""
    import shlex

    from fstore.devsvc import services as localsvc

    values = localsvc.read_env(state_dir)
    if not values:
        raise click.ClickException(f"no {localsvc.env_file(state_dir)}; run `fstore services up` first")
    for key, value in values.items():
        click.echo(f"export {key}={shlex.quote(value)}")
