"""``fstore stream``: run the speed-layer worker (Faust) in the foreground."""

from __future__ import annotations

import click


@click.command()
@click.option("--loglevel", default=None, help="Log level  [default: FSTORE_STREAM_LOG_LEVEL, 'info']")
def stream(loglevel: str | None) -> None:
    """Consume the events topic into Redis speed tiles, events.dlq and Delta raw_events.

    The events topic is the one the repository's stream source declares (FSTORE_EVENTS_TOPIC overrides it).

    Runs the plan compiled from the feature repository (FSTORE_FEATURE_REPO, default feature_repo/): its
    event schema validates the messages and gives raw_events its columns; its views' tiles are kept.
    Configuration: FSTORE_KAFKA_BOOTSTRAP, FSTORE_REDIS_URL, FSTORE_DATA_DIR, FSTORE_EVENTS_TOPIC,
    FSTORE_DLQ_TOPIC and the FSTORE_STREAM_* variables (see jobs/stream/settings.py). Stops cleanly on
    SIGTERM/SIGINT after flushing the raw sink. Equivalent: `faust -A jobs.stream.app worker`.

    \b
    Example:
      FSTORE_STREAM_METRICS_PORT=9108 fstore stream
    """
    from fstore.settings import SettingsError

    try:
        from jobs.stream.app import run_worker
    except SettingsError as exc:
        raise click.ClickException(str(exc)) from None
    run_worker(loglevel)
