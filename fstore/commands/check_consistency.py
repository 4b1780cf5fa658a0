"""``fstore check-consistency``: the online/offline consistency promise, measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click


@click.command("check-consistency")
@click.option("--api-url", default="http://127.0.0.1:8000", show_default=True, help="A running `fstore serve`.")
@click.option("--sample", default=1000, show_default=True, help="Entities sampled per feature view.")
@click.option("--seed", default=0, show_default=True, help="Sampling seed.")
@click.option("--view", "views", multiple=True, help="Feature view(s) to check (default: all).")
@click.option(
    "--from-samples",
    is_flag=True,
    help="Replay what the API served (FSTORE_SAMPLES_DIR) instead of calling --api-url.",
)
@click.option(
    "--since",
    type=click.FloatRange(min=0, min_open=True),
    default=3600.0,
    show_default=True,
    help="--from-samples: answers served in the last SECONDS.",
)
@click.option(
    "--settle",
    type=click.FloatRange(min=0),
    default=60.0,
    show_default=True,
    help="--from-samples: skip answers younger than SECONDS (their events may not be in raw_events yet).",
)
@click.option(
    "--in-flight",
    type=click.FloatRange(min=0),
    default=5.0,
    show_default=True,
    help="--from-samples: leave out a row whose entity has an event ingested within SECONDS before its as_of.",
)
@click.option(
    "--metrics-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="--from-samples: Prometheus textfile of the figures  [default: <data_dir>/metrics/consistency.prom]",
)
@click.option("--keep-days", type=click.IntRange(min=1), default=7, show_default=True, help="Sample retention.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def check_consistency(
    api_url: str,
    sample: int,
    seed: int,
    views: tuple[str, ...],
    from_samples: bool,
    since: float,
    settle: float,
    in_flight: float,
    metrics_file: Path | None,
    keep_days: int,
    as_json: bool,
) -> None:
    """Recompute served feature values offline at the answer's as_of from raw_events and report the
    mismatches per feature. Exits 1 on any mismatch, and when the API cannot be read.

    Default: read GET /features now for sampled entities of a running API (run it once every event up
    to now is in raw_events: the stream job's raw sink flushes in micro-batches).

    --from-samples: replay the answers the API itself kept (FSTORE_API_SAMPLE_RATE of them, written to
    FSTORE_SAMPLES_DIR), served between --since and --settle seconds ago; rows whose events were still
    being ingested are counted apart. Writes the mismatch rate per feature as a Prometheus textfile and
    deletes samples older than --keep-days. Run it on a schedule (`fstore schedule --every 900 --
    fstore check-consistency --from-samples`).
    """
    from tqdm import tqdm

    from fstore import consistency, samples
    from fstore.clock import wall_clock
    from fstore.core.timeutil import SECOND
    from fstore.plan_source import current_plan
    from services.online_api.settings import get_api_settings

    cfg = get_api_settings()
    raw_uri = cfg.table("raw_events")
    if from_samples:
        folder = cfg.samples_path()
        if folder is None:
            raise click.ClickException("no samples folder: set FSTORE_SAMPLES_DIR (the data root is not local)")
        now = wall_clock()
        rows = list(samples.read_samples(folder, now - int(since * SECOND), now - int(settle * SECOND)))
        report = consistency.replay(rows, raw_uri, int(in_flight * SECOND), views)
        root = cfg.data_root()
        target = metrics_file or (None if "://" in root else Path(root) / "metrics" / "consistency.prom")
        if target is not None:
            consistency.write_textfile(report, target, len(rows))
        samples.prune(folder, keep_days, now)
        if not rows:
            click.echo(f"no served samples in {folder} between {since:.0f}s and {settle:.0f}s ago", err=True)
    else:
        plan = current_plan()
        unknown = [v for v in views if v not in {x.name for x in plan.views}]
        if unknown:
            raise click.BadParameter(
                f"unknown feature view(s) {', '.join(unknown)} (known: {', '.join(v.name for v in plan.views)})",
                param_hint="--view",
            )
        chosen = views or tuple(v.name for v in plan.views)
        key = cfg.api_key.get_secret_value() if cfg.api_key else None
        import httpx

        with tqdm(total=sample * len(chosen), unit="entity", file=sys.stderr, disable=None) as bar:
            try:
                report = consistency.check(api_url, raw_uri, sample, seed, chosen, key, progress=bar.update)
            except httpx.HTTPStatusError as exc:  # 401 without the API key, 503 without Redis, ...
                status, detail = exc.response.status_code, exc.response.text[:300]
                raise click.ClickException(f"the API at {api_url} answered {status}: {detail}") from None
            except httpx.HTTPError as exc:  # refused, timed out, a bad URL: no traceback for a user's mistake
                raise click.ClickException(
                    f"cannot read GET /features from {api_url} ({type(exc).__name__}: {exc}): is `fstore serve` "
                    "running there? (--api-url)"
                ) from None
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary))
    else:
        rate = summary["mismatch_rate"]
        click.echo(
            f"checked {report.entities:,} entities, {report.compared:,} values: {summary['mismatches']} mismatches"
            + (f" (mismatch rate {rate:.4%})" if rate is not None else "")
            + (f"; {report.in_flight} rows left out as in flight" if from_samples else "")
        )
        for f, n in sorted(report.mismatches.items()):
            click.echo(f"  {f:<40} {n}")
        for ex in report.examples[:5]:
            click.echo(f"  e.g. {ex}")
    if report.mismatches or (not from_samples and not report.ok):
        sys.exit(1)
