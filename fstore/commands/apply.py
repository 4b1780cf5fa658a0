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
import time
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from fstore.applied import AppliedPlan
    from fstore.core.plan import Plan
    from fstore.core.plan_diff import PlanChange
    from fstore.redis.connect import AdminClient

EXIT_INVALID = 2
#: The plan is applied but the Redis state of what it removed is not freed yet (re-run `fstore apply`).
EXIT_NOT_FREED = 3
#: Default seconds `fstore apply` waits for the live stream workers to run the new plan before freeing.
WAIT_S = 15.0


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
    plan (they follow within about a second). If one does not within --wait-timeout, nothing is freed and
    the exit code is 3: the plan is applied, the keys are left; check the workers and run `fstore apply`
    again, which frees them first.
    """
    _run(repo, dry_run=False, feast=not skip_feast, wait_timeout=wait_timeout)


def _run(repo: Path | None, *, dry_run: bool, feast: bool, wait_timeout: float) -> None:
    from fstore import applied, plan_source
    from fstore.core.plan_diff import diff
    from fstore.core.plan_error import PlanError

    root = (repo or plan_source.repo_dir()).resolve()
    try:
        new = plan_source.compile_dir(root)
    except PlanError as exc:
        click.echo(f"fstore: {root} has {len(exc.problems)} mistake(s); nothing was applied:", err=True)
        for p in exc.problems:
            click.echo(f"  - {p}", err=True)
        sys.exit(EXIT_INVALID)
    try:
        old = applied.load(root)
    except ValueError as exc:
        click.echo(f"fstore: {exc}; treating the repository as never applied", err=True)
        old = None
    change = diff(old.plan if old is not None else None, new)
    if old is None:
        click.echo(f"no plan applied yet in {root}: this apply records the baseline")
    else:
        lines = change.lines()
        click.echo("\n".join(lines) if lines else "no change")
        if old.unfreed:
            click.echo(f"left to free by the last apply: {_show_unfreed(old)} (this apply frees it first)")
    if dry_run:
        return
    views, series = _removed(old.plan, new, change) if old is not None else ((), ())
    client = _redis() if old is not None and (old.unfreed or views or series) else None
    if old is not None and old.unfreed:
        assert client is not None
        _free(client, root, old, wait_timeout, first=True)
    if feast:
        _feast_apply(root)
    pending: tuple[str, ...] = ()
    building: tuple[str, ...] = ()
    if old is not None:
        refs = {f"{v.name}:{f}" for v in new.views for f in v.feature_names}
        still = [r for r in old.pending if r in refs and r not in change.pending]
        pending = tuple(dict.fromkeys([*change.pending, *still]))
        building = tuple(sorted({r.partition(":")[0] for r in pending}))
    record = applied.AppliedPlan(new, int(time.time() * 1_000_000), pending, building, views, series)
    applied.save(root, record)
    click.echo(f"applied plan {record.fingerprint[:12]} ({len(new.views)} view(s)) to {applied.record_path(root)}")
    if record.unfreed:
        assert client is not None
        _free(client, root, record, wait_timeout)
    for view in building:
        click.echo(f"next: fstore backfill --view {view}   (its new features are refused until then)")


def _feast_apply(root: Path) -> None:
    feast = Path(sys.executable).with_name("feast")
    cmd = [str(feast) if feast.exists() else "feast", "apply"]
    click.echo(f"$ {' '.join(cmd)}   (in {root})")
    done = subprocess.run(cmd, cwd=root, env=os.environ.copy(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        click.echo(done.stdout + done.stderr, err=True)
        raise click.ClickException(f"`feast apply` failed (exit {done.returncode}); fstore's record is unchanged")


def _removed(old: Plan, new: Plan, change: PlanChange) -> tuple[tuple[str, ...], tuple[tuple[str, int, str], ...]]:
    """The views ``new`` removed, and the tile series (view, hop µs, measure) it removed from kept views."""
    kept = {v.name for v in new.views}
    views = tuple(sorted({v.name for v in old.views} - kept))
    series = tuple(sorted({(sr.view, sr.hop, sr.measure) for sr in change.free if sr.view in kept}))
    return views, series


def _show_unfreed(record: AppliedPlan) -> str:
    return f"the keys of view(s) {list(record.unfreed_views)} and {len(record.unfreed_series)} tile series"


def _redis() -> AdminClient:
    """A client of this command's Redis, checked: unreachable refuses the apply before anything is recorded."""
    from fstore.redis.connect import admin_client
    from fstore.settings import Settings, load_settings

    s = load_settings(Settings)  # not the cached settings: the environment of this command
    try:
        client = admin_client(s.redis_url, s.redis_cluster, socket_timeout=5, socket_connect_timeout=2)
        client.ping()
    except Exception as exc:
        raise click.ClickException(
            f"Redis is unreachable ({type(exc).__name__}: {exc}); the Redis state of removed features could not be "
            "freed, so fstore's record is not changed: start Redis and run `fstore apply` again"
        ) from None
    return client


def _free(client: AdminClient, root: Path, record: AppliedPlan, timeout: float, first: bool = False) -> None:
    """Free the Redis state ``record`` removed once every live stream worker runs its plan, then record that;
    exit code 3 (the keys left, the record saying so) when a worker does not follow in time or Redis fails.
    ``first``: what a previous apply left, freed before this apply changes anything."""
    from fstore import applied
    from fstore.redis.free_keys import free_series, free_views
    from fstore.redis.workers import wait_following

    fp = record.fingerprint
    shown: set[str] = set()

    def waiting(behind: dict[str, str]) -> None:
        if set(behind) != shown:
            shown.clear()
            shown.update(behind)
            names = ", ".join(f"{w} (plan {f[:12]})" for w, f in sorted(behind.items()))
            click.echo(f"waiting (up to {timeout:g} s) for stream worker(s) to run plan {fp[:12]}: {names}")

    try:
        wait_following(client, fp, timeout, waiting)
        freed = free_views(client, record.unfreed_views)
        by_view: dict[str, list[tuple[int, str]]] = {}
        for view, hop, measure in record.unfreed_series:
            by_view.setdefault(view, []).append((hop, measure))
        fields = sum(free_series(client, v, series).fields for v, series in by_view.items())
    except Exception as exc:  # a worker behind, or Redis failed: the record keeps what is left
        state = (
            "This apply changed nothing"
            if first
            else f"Plan {fp[:12]} is applied (what it removed is no longer served)"
        )
        click.echo(
            f"fstore: NOT FREED: {_show_unfreed(record)}: {exc}. {state}, but a stream worker still "
            "running an older plan could write those keys again, so they are left. Check the workers (GET /health, "
            "their logs) or Redis, then run `fstore apply` again: it frees them first.",
            err=True,
        )
        sys.exit(EXIT_NOT_FREED)
    current = applied.load(root)
    if current is not None and current.fingerprint == fp:
        applied.save(root, current.freed())
    click.echo(
        f"freed {freed.keys} key(s) of removed views {list(record.unfreed_views)} and {fields} field(s) of "
        f"removed series (every live stream worker runs plan {fp[:12]})"
    )
