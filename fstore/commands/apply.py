"""``fstore apply`` / ``fstore plan``: register the user's feature definitions (docs/design.md §3).

``apply`` compiles the Feast repository (all or nothing: a repository with a mistake is rejected, each
mistake named, and nothing changes — neither Feast's registry nor fstore's record), shows what the
change needs, registers the objects with Feast (``feast apply``) and records the compiled plan with its
**pending** features (:mod:`fstore.applied`). The API refuses a pending feature (409) until
``fstore backfill`` has built it; every process follows the record. Then it frees the Redis state of what
was removed — only once every live stream worker runs the new plan (:mod:`fstore.redis.workers`), so no
worker writes a freed key again; a worker that does not follow in time leaves the keys (exit code 3, the
record says what is left) and the next ``fstore apply`` frees them. ``plan`` shows the change and changes
nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import click

from fstore.applying import WAIT_S

EXIT_INVALID = 2
#: The plan is applied but the Redis state of what it removed is not freed yet (re-run `fstore apply`).
EXIT_NOT_FREED = 3


def _repo_option(f: click.decorators.FC) -> click.decorators.FC:
    return click.option(
        "--repo",
        type=click.Path(file_okay=False, path_type=Path),
        default=None,
        help="The Feast repository (default: FSTORE_FEATURE_REPO, else the project's feature_repo/).",
    )(f)


@click.command("plan")
@_repo_option
def plan(repo: Path | None) -> None:
    """Show what `fstore apply` would change: features added, removed and redefined, the tile series to
    build and to free, and the features that stay refused until `fstore backfill` builds them. Exit code 2
    when the repository has a mistake (each one named)."""
    _run(repo, dry_run=True, feast=False, wait_timeout=0.0)


@click.command("apply")
@_repo_option
@click.option("--skip-feast", is_flag=True, help="Do not run `feast apply` (record fstore's plan only).")
@click.option(
    "--wait-timeout",
    type=click.FloatRange(min=0),
    default=WAIT_S,
    show_default=True,
    help="Seconds to wait for every live stream worker to run the new plan before freeing removed state.",
)
def apply(repo: Path | None, skip_feast: bool, wait_timeout: float) -> None:
    """Compile and register the feature definitions of the Feast repository.

    A repository with mistakes is rejected as a whole (exit code 2, each mistake named, nothing changed).
    Otherwise: prints the change, runs `feast apply` and records the plan every fstore process runs from.
    New or redefined features are refused by the API (409) until `fstore backfill --view VIEW` has built
    them. The first apply records the baseline.

    The Redis state of removed views and features is freed once every live stream worker runs the new
    plan (they follow within about a second; a running fstore ingest registers too, with the plan it
    started with, until it ends). If one does not within --wait-timeout, nothing is freed and
    the exit code is 3: the plan is applied, the keys are left; check the workers and run `fstore apply`
    again, which frees them first.
    """
    _run(repo, dry_run=False, feast=not skip_feast, wait_timeout=wait_timeout)


def _run(repo: Path | None, *, dry_run: bool, feast: bool, wait_timeout: float) -> None:
    from fstore import plan_source
    from fstore.applying import Applying, NotFreed, RedisUnreachable
    from fstore.core.plan_error import PlanError

    root = (repo or plan_source.repo_dir()).resolve()
    try:
        new = plan_source.compile_dir(root)
        job = Applying(root, new, click.echo, lambda m: click.echo(m, err=True))
    except PlanError as exc:
        click.echo(f"fstore: {root} has {len(exc.problems)} mistake(s); nothing was applied:", err=True)
        for p in exc.problems:
            click.echo(f"  - {p}", err=True)
        sys.exit(EXIT_INVALID)
    if dry_run:
        job.describe()
        return
    try:
        job.prepare(wait_timeout)
        if feast:
            _feast_apply(root)
        job.record(wait_timeout)
    except RedisUnreachable as exc:
        raise click.ClickException(str(exc).replace("apply again", "run `fstore apply` again")) from None
    except NotFreed as exc:
        click.echo(str(exc), err=True)
        sys.exit(EXIT_NOT_FREED)


def _feast_apply(root: Path) -> None:
    from fstore.applying import ENV_CALLER_RECORDS

    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast) if feast.exists() else "feast", "apply"]
    click.echo(f"$ {' '.join(cmd)}   (in {root})")
    env = {**os.environ, ENV_CALLER_RECORDS: "1"}  # this command records fstore's plan itself
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        click.echo(done.stdout + done.stderr, err=True)
        raise click.ClickException(f"`feast apply` failed (exit {done.returncode}); fstore's record is unchanged")
