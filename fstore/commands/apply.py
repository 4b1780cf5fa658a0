"""``fstore apply`` / ``fstore plan``: register the user's feature definitions (docs/design.md §3).

``apply`` compiles the Feast repository (all or nothing: a repository with a mistake is rejected, each
mistake named, and nothing changes — neither Feast's registry nor fstore's record), shows what the
change needs, registers the objects with Feast (``feast apply``), frees the Redis state of what was
removed and records the compiled plan with its **pending** features (:mod:`fstore.applied`). The API
refuses a pending feature (409) until ``fstore backfill`` has built it; every process follows the record.
``plan`` shows the change and changes nothing.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import click

EXIT_INVALID = 2


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
    _run(repo, dry_run=True, feast=False)


@click.command("apply")
@_repo_option
@click.option("--skip-feast", is_flag=True, help="Do not run `feast apply` (record fstore's plan only).")
def apply(repo: Path | None, skip_feast: bool) -> None:
    """Compile and register the feature definitions of the Feast repository.

    A repository with mistakes is rejected as a whole (exit code 2, each mistake named, nothing changed).
    Otherwise: prints the change, runs `feast apply`, frees the Redis state of removed features and
    records the plan every fstore process runs from. New or redefined features are refused by the API
    (409) until `fstore backfill --view VIEW` has built them. The first apply records the baseline.
    """
    _run(repo, dry_run=False, feast=not skip_feast)


def _run(repo: Path | None, *, dry_run: bool, feast: bool) -> None:
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
        lines: list[str] = []
    else:
        lines = change.lines()
        click.echo("\n".join(lines) if lines else "no change")
    if dry_run:
        return
    if feast:
        _feast_apply(root)
    if old is not None and (change.free or change.removed):
        _free(old.plan, new, change)
    pending: tuple[str, ...] = ()
    building: tuple[str, ...] = ()
    if old is not None:
        refs = {f"{v.name}:{f}" for v in new.views for f in v.feature_names}
        still = [r for r in old.pending if r in refs and r not in change.pending]
        pending = tuple(dict.fromkeys([*change.pending, *still]))
        building = tuple(sorted({r.partition(":")[0] for r in pending}))
    record = applied.AppliedPlan(new, int(time.time() * 1_000_000), pending, building)
    applied.save(root, record)
    click.echo(f"applied plan {record.fingerprint[:12]} ({len(new.views)} view(s)) to {applied.record_path(root)}")
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


def _free(old: object, new: object, change: object) -> None:
    from fstore.core.plan import Plan
    from fstore.core.plan_diff import PlanChange
    from fstore.redis.connect import admin_client
    from fstore.redis.free_keys import free_series, free_views
    from fstore.settings import Settings, load_settings

    assert isinstance(old, Plan) and isinstance(new, Plan) and isinstance(change, PlanChange)
    s = load_settings(Settings)  # not the cached settings: the environment of this command
    client = admin_client(s.redis_url, s.redis_cluster, socket_timeout=5, socket_connect_timeout=2)
    kept = {v.name for v in new.views}
    gone_views = sorted({v.name for v in old.views} - kept)
    try:
        freed = free_views(client, gone_views)
        by_view: dict[str, list[tuple[int, str]]] = {}
        for sr in change.free:
            if sr.view in kept:
                by_view.setdefault(sr.view, []).append((sr.hop, sr.measure))
        fields = sum(free_series(client, v, series).fields for v, series in by_view.items())
    except Exception as exc:  # Redis down: refuse before recording, so a later apply frees them
        raise click.ClickException(
            f"could not free the Redis state of removed features ({type(exc).__name__}: {exc}); "
            "Feast's registry is updated but fstore's record is not: start Redis and run `fstore apply` again"
        ) from None
    if gone_views or fields:
        click.echo(f"freed {freed.keys} key(s) of removed views {gone_views} and {fields} field(s) of removed series")
