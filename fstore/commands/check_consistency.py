"""``fstore check-consistency``: the online/offline consistency promise, measured."""

from __future__ import annotations

import json
import sys

import click


@click.command("check-consistency")
@click.option("--api-url", default="http://127.0.0.1:8000", show_default=True, help="A running `fstore serve`.")
@click.option("--sample", default=1000, show_default=True, help="Entities sampled per feature view.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--view", "views", multiple=True, help="Feature view(s) to check (default: all).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_consistency(api_url: str, sample: int, seed: int, views: tuple[str, ...], as_json: bool) -> None:
    """Read GET /features for sampled entities, recompute each offline at the response's as_of from
    raw_events, and report mismatches per feature. Exits 1 on any mismatch.

    Run it once every event up to now is in raw_events (the stream job's raw sink flushes in
    micro-batches); events still in flight show up as mismatches.
    """
    from tqdm import tqdm

    from fstore.consistency import check
    from fstore.core.features import VIEWS
    from services.online_api.settings import get_api_settings

    cfg = get_api_settings()
    chosen = views or tuple(VIEWS)
    key = cfg.api_key.get_secret_value() if cfg.api_key else None
    with tqdm(total=sample * len(chosen), unit="entity", file=sys.stderr, disable=None) as bar:
        report = check(api_url, cfg.table("raw_events"), sample, seed, chosen, key, progress=bar.update)
    summary = {
        "entities": report.entities,
        "values_compared": report.compared,
        "mismatches": sum(report.mismatches.values()),
        "by_feature": dict(report.mismatches),
        "examples": report.examples,
    }
    if as_json:
        click.echo(json.dumps(summary))
    else:
        click.echo(
            f"checked {report.entities:,} entities, {report.compared:,} values: {summary['mismatches']} mismatches"
        )
        for f, n in sorted(report.mismatches.items()):
            click.echo(f"  {f:<40} {n}")
        for ex in report.examples[:5]:
            click.echo(f"  e.g. {ex}")
    if not report.ok:
        sys.exit(1)
