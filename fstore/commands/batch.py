"""``fstore batch``: run the nightly batch job for one date or backfill a range (local Spark)."""

from __future__ import annotations

import sys
import traceback
from datetime import date, datetime, timedelta
from typing import Any

import click

from jobs.batch.exit_codes import CONFIG, DQ_FAILED, RUN_FAILED, USAGE


class BatchCommand(click.Command):
    """A Click command whose usage errors exit with 64 (EX_USAGE), not Click's 2, which here means "the
    data-quality gate failed": a scheduler must be able to tell the two apart."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            exc.exit_code = USAGE
            raise

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            exc.exit_code = USAGE
            raise


def _day(_ctx: click.Context, _param: click.Parameter, value: datetime | None) -> date | None:
    return None if value is None else value.date()


@click.command("batch", cls=BatchCommand)
@click.option(
    "--date",
    "run_date",
    type=click.DateTime(["%Y-%m-%d"]),
    callback=_day,
    help="Run date D (UTC); the cutover is D+1 00:00 UTC.",
)
@click.option("--from", "first", type=click.DateTime(["%Y-%m-%d"]), callback=_day, help="First date of a backfill.")
@click.option("--to", "last", type=click.DateTime(["%Y-%m-%d"]), callback=_day, help="Last date of a backfill.")
@click.option("--master", default=None, help="Spark master (default: FSTORE_SPARK_MASTER, local[*]).")
@click.option(
    "--allow-older",
    is_flag=True,
    help="Publish the batch view even if a later cutover is serving (not after a backfill or repair: "
    "the speed tiles before the later cutover were not rebuilt, values would undercount).",
)
@click.option("--progress/--no-progress", default=None, help="Progress bar on stderr (default: when a terminal).")
def batch(
    run_date: date | None,
    first: date | None,
    last: date | None,
    master: str | None,
    allow_older: bool,
    progress: bool | None,
) -> None:
    """Rebuild tiles and feature snapshots in Delta, gate on data quality and publish the Redis batch view.

    One date: `fstore batch --date 2026-11-20`. A range, oldest first: `fstore batch --from 2026-11-01
    --to 2026-11-20` (each date publishes only if its cutover is not older than the serving one, so the
    view ends at the last date). Prints one JSON line of metrics per date. For a cluster use
    `spark-submit jobs/batch/rebuild_features.py`.

    \b
    Exit codes (what a scheduler acts on):
      0   published, or rebuilt without publishing because a later cutover serves
      1   the run failed (Spark, Delta, Redis, ...): retry
      2   the data-quality gate failed (the range stops there): fix the data, no retry
      64  usage error (a run date not over yet too: its cutover is after now): no retry
      78  invalid configuration (FSTORE_* variables, a feature repository
          FSTORE_FEATURE_REPO with mistakes, or a data root on an object store this
          Spark has no connector for): no retry
    """
    from tqdm import tqdm

    from fstore.core.plan_error import PlanError
    from fstore.plan_source import current_plan
    from fstore.settings import SettingsError
    from jobs.batch.batch_view import LeaseLost
    from jobs.batch.file_systems import missing_file_system
    from jobs.batch.rebuild_features import DQFailed, build_spark, rebuild
    from jobs.batch.run_failure import failure_line
    from jobs.batch.settings import load_batch_settings

    dates: list[date]
    if run_date is not None and first is None and last is None:
        dates = [run_date]
    elif run_date is None and first is not None and last is not None:
        dates = [first + timedelta(days=i) for i in range((last - first).days + 1)]
    else:
        raise click.UsageError("give either --date D or both --from D1 and --to D2")
    if not dates:
        raise click.UsageError("--from must not be after --to")
    from fstore.clock import wall_clock
    from jobs.batch.plan import OpenDay, check_closed

    try:  # a day still open would give the batch view tiles whose events are still arriving (docs/batch.md)
        check_closed(dates[-1], wall_clock())
    except OpenDay as exc:
        raise click.UsageError(str(exc)) from None
    try:
        settings = load_batch_settings(**({"spark_master": master} if master else {}))
        features = current_plan()
    except (SettingsError, PlanError) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(CONFIG)
    spark = build_spark(settings)
    if (why := missing_file_system(spark, settings.data_root())) is not None:
        click.echo(f"Error: {why}", err=True)
        spark.stop()
        sys.exit(CONFIG)
    show = sys.stderr.isatty() if progress is None else progress
    with tqdm(dates, desc="batch", unit="day", disable=not show, file=sys.stderr) as bar:
        for d in bar:
            bar.set_postfix_str(d.isoformat())
            try:
                res = rebuild(spark, settings, d, allow_older=allow_older, features=features)
            except DQFailed as exc:
                click.echo(f"{d}: {exc}", err=True)
                sys.exit(DQ_FAILED)
            except LeaseLost as exc:
                click.echo(f"Error: {d}: {exc}", err=True)
                sys.exit(RUN_FAILED)
            except Exception as exc:  # Spark, Delta, Redis, the disk: the trace, then one line that says why
                traceback.print_exc()
                click.echo(failure_line(d, exc), err=True)
                sys.exit(RUN_FAILED)
            if not res.published:
                click.echo(f"{d}: tables rebuilt; batch view not published (a later cutover is serving)", err=True)
