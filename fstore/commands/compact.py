"""``fstore compact``: write the de-duplicated winners of closed days beside ``raw_events``."""

from __future__ import annotations

import json
from datetime import date, datetime

import click


@click.command("compact")
@click.option(
    "--before",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="Compact the days before this date (default: today, UTC: every closed day).",
)
@click.option("--data-dir", default=None, help="Root of the Delta tables (default: FSTORE_DATA_DIR).")
def compact(before: datetime | None, data_dir: str | None) -> None:
    """Write each closed day's de-duplication winners to raw_events_winners (docs/training_data.md).

    Point-in-time requests then read those days' winners instead of de-duplicating every copy. A day whose
    copies or superseded marks changed since (late events, another writer) is rewritten here, and until then
    read from raw_events as before, so the answer never changes. Run it after the nightly batch. Prints one
    JSON line: days written, kept (already current), conflicted (event ids unmarked on two days: left to
    raw_events), old files removed, rows written.
    """
    from fstore.clock import wall_clock
    from fstore.core.timeutil import to_date
    from fstore.delta import raw_winners
    from fstore.offline.local import raw_events_uri
    from fstore.plan_source import current_plan

    last: date = before.date() if before is not None else to_date(wall_clock())
    report = raw_winners.compact(raw_events_uri(data_dir), current_plan().schema, before=last)
    click.echo(
        json.dumps(
            {
                "written": len(report.written),
                "kept": len(report.kept),
                "conflicted": [d.isoformat() for d in report.conflicted],
                "removed_files": report.removed_files,
                "rows": report.rows,
            }
        )
    )
