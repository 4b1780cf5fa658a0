"""``fstore schedule``: run a job at fixed UTC times or every N seconds, retry by exit code, export metrics."""

from __future__ import annotations

import signal
import sys
from datetime import time
from pathlib import Path
from types import FrameType

import click


def _times(_ctx: click.Context, _param: click.Parameter, value: tuple[str, ...]) -> tuple[time, ...]:
    try:
        return tuple(time.fromisoformat(v) for v in value)
    except ValueError as exc:
        raise click.BadParameter(f"{exc}: use HH:MM (UTC)") from None


@click.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.option(
    "--job",
    default=None,
    help="Job name (metric label `task`)  [default: the fstore subcommand, `batch` for `fstore batch ...`; "
    "else the program's name]",
)
@click.option("--at", "at", multiple=True, callback=_times, help="UTC time of day HH:MM (repeatable).")
@click.option("--every", type=click.FloatRange(min=1), default=None, help="Or: run every SECONDS.")
@click.option("--retries", type=click.IntRange(min=0), default=3, show_default=True, help="Retries of a slot.")
@click.option(
    "--retry-delay", type=click.FloatRange(min=0), default=300.0, show_default=True, help="First retry wait (doubles)."
)
@click.option(
    "--retry-on",
    type=int,
    multiple=True,
    default=(1, 124),
    show_default=True,
    help="Exit codes worth a retry (a signal always is).",
)
@click.option("--timeout", type=click.FloatRange(min=1), default=None, help="Kill an attempt after SECONDS.")
@click.option("--state", type=click.Path(dir_okay=False, path_type=Path), default=None, help="State file (JSON).")
@click.option("--catch-up/--no-catch-up", default=True, show_default=True, help="Run a missed daily slot at start.")
@click.option("--textfile", type=click.Path(dir_okay=False, path_type=Path), multiple=True, help="Also serve this.")
@click.option("--metrics-host", default="0.0.0.0", show_default=True, help="Bind address of the metrics server.")
@click.option("--metrics-port", type=click.IntRange(0, 65535), default=9110, show_default=True, help="0: none.")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
def schedule(
    job: str | None,
    at: tuple[time, ...],
    every: float | None,
    retries: int,
    retry_delay: float,
    retry_on: tuple[int, ...],
    timeout: float | None,
    state: Path | None,
    catch_up: bool,
    textfile: tuple[Path, ...],
    metrics_host: str,
    metrics_port: int,
    command: tuple[str, ...],
) -> None:
    """Run COMMAND at the --at times (UTC) or --every N seconds, forever, and retry a failed attempt when
    its exit code is in --retry-on (default 1 and 124 = timeout; `fstore batch` exits 2 when its
    data-quality gate fails, which no retry fixes). {date} and {yesterday} in COMMAND become the slot's
    UTC date and the day before. Metrics (fstore_schedule_*, and the --textfile contents) are served on
    --metrics-port; docs/operations.md lists them.

    \b
    Examples:
      fstore schedule --at 01:30 --state data/metrics/batch.state.json \\
          --textfile data/metrics/batch.prom -- fstore batch --date {yesterday} --no-progress
      fstore schedule --every 900 --retries 0 -- fstore check-consistency --from-samples
    """
    from prometheus_client import start_http_server

    from fstore.schedule import JobMetrics, Policy, Scheduler, Slots

    try:
        slots = Slots(at, every)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    name = job or (command[1] if len(command) > 1 and Path(command[0]).name == "fstore" else Path(command[0]).name)
    metrics = JobMetrics(name, textfile)
    policy = Policy(retries, retry_delay, max(retry_delay, 3600.0), frozenset(retry_on))
    sched = Scheduler(
        name, list(command), slots, policy, state, timeout, catch_up, metrics, log=lambda m: click.echo(m, err=True)
    )

    def stop(signum: int, _frame: FrameType | None) -> None:
        sched.stop.set()
        raise SystemExit(128 + signum)  # interrupts a running attempt, which then gets SIGTERM too

    signal.signal(signal.SIGTERM, stop)
    if metrics_port:
        start_http_server(metrics_port, metrics_host, registry=metrics.registry)
    click.echo(f"fstore schedule: job {name!r}, metrics on {metrics_host}:{metrics_port}", err=True)
    try:
        sched.run()
    except KeyboardInterrupt:
        sys.exit(130)
