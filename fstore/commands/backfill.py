"""``fstore backfill --view V``: build what an applied change needs, then serve its features."""

from __future__ import annotations

import sys

import click


@click.command("backfill")
@click.option("--view", "view", required=True, help="The feature view whose pending features to build.")
@click.option(
    "--skip-batch",
    is_flag=True,
    help="Do not re-run the nightly job (only when the batch view already holds what the change needs).",
)
@click.option("--timeout", type=float, default=60.0, show_default=True, help="Seconds to wait for the workers to hold.")
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
def backfill(view: str, skip_batch: bool, timeout: float, progress: bool | None) -> None:
    """Build the tiles the applied plan needs for VIEW — the batch tiles and batch view (the nightly job
    re-run for its last run date) and the speed tiles since the cutover, rebuilt from raw_events while the
    stream workers hold (a running fstore ingest finishes its batch in flight, then stops with exit code 1)
    — then serve the view's pending features (the API refused them with 409 until now; while the view's
    speed tiles are rebuilt it refuses every feature of the view).

    Run it after `fstore apply` has reported features "refused until built". Safe to re-run. Exit code 1
    when refused (nothing applied, unknown view, workers that do not hold, another backfill holding them:
    backfills run one at a time) or on an error; the features then stay pending. See docs/features.md.
    """
    from redis.exceptions import ConnectionError as RedisConnectionError
    from redis.exceptions import TimeoutError as RedisTimeoutError
    from tqdm import tqdm

    from fstore.settings import load_settings
    from jobs.backfill import BackfillRefused, run_batch_command
    from jobs.backfill import backfill as run_backfill
    from jobs.batch.settings import load_batch_settings
    from jobs.stream.settings import StreamSettings

    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(desc="speed tiles", unit="hash", disable=not show, file=sys.stderr) as bar:
        try:
            report = run_backfill(
                view,
                load_batch_settings(),
                load_settings(StreamSettings),
                run_batch=None if skip_batch else run_batch_command(),
                timeout=timeout,
                say=click.echo,
                progress=bar.update,
            )
        except BackfillRefused as exc:
            raise click.ClickException(str(exc)) from None
        except (RedisConnectionError, RedisTimeoutError) as exc:  # a wrong FSTORE_REDIS_URL, Redis down
            raise click.ClickException(f"Redis unreachable ({exc}): start it, or check FSTORE_REDIS_URL") from None
    click.echo(report.summary())
