"""``fstore repair``: rebuild the Redis views after Redis lost its data (from Delta, no Spark run)."""

from __future__ import annotations

import sys

import click


@click.command("repair")
@click.option("--force", is_flag=True, help="Run even though a stream worker committed in the last 30 s.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
def repair(force: bool, progress: bool | None) -> None:
    """Reload the batch view of the last published run from its Delta tiles, then rebuild the speed view
    since its cutover from raw_events (exactly once: the stream's de-duplication markers), restoring the
    stream's event_id claims too, so a later copy re-sent with another entity does not count online.

    Use it when the API answers 503 "the batch view is missing from Redis" or after Redis restarted
    empty. Stop the stream worker first (SIGTERM; it flushes and commits), flush Redis (what a worker wrote
    since the loss may count a later copy of an event in place of its first), run this once the worker's
    last commit is 30 s old, start the worker again. Exit code 1 when refused or on an error, and when it
    finds such a later copy counted (GET /health then stays degraded): stop the workers, flush Redis and
    run it again. Runbook: docs/runbook.md, "Redis lost its data".
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from tqdm import tqdm

    from fstore.settings import load_settings
    from jobs.batch.settings import load_batch_settings
    from jobs.repair import TAKEN_MESSAGE, RepairRefused
    from jobs.repair import repair as run_repair
    from jobs.stream.settings import StreamSettings

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(desc="speed view", unit="event", disable=not show, file=sys.stderr) as bar:
        try:
            report = run_repair(load_batch_settings(), load_settings(StreamSettings), force=force, progress=bar.update)
        except RepairRefused as exc:
            raise click.ClickException(str(exc)) from None
        except (RedisConnectionError, RedisTimeoutError) as exc:  # a wrong FSTORE_REDIS_URL, Redis down
            raise click.ClickException(f"Redis unreachable ({exc}): start it, or check FSTORE_REDIS_URL") from None
    click.echo(report.summary())
    if not report.exact:
        raise click.ClickException(TAKEN_MESSAGE.format(n=report.speed_taken))
