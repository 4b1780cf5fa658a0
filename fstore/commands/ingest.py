"""``fstore ingest``: the backfill path into ``raw_events``."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
from types import FrameType
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    from fstore.ingest import IngestReport


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-size", default=200_000, show_default=True, help="Messages per Delta commit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object per file.")
@click.option(
    "--speed/--no-speed",
    default=True,
    show_default=True,
    help="Hand what is written to the speed layer in Redis (FSTORE_REDIS_URL), as the stream worker does: "
    "claim the event_ids and count the recent events in the speed tiles. --no-speed: for events no stream "
    "worker and no online reader will see.",
)
def ingest(files: tuple[str, ...], batch_size: int, as_json: bool, speed: bool) -> None:
    """Append the valid events of JSONL/Parquet message FILES to the Delta table raw_events.

    Every message is validated against the event schema of the feature repository
    (FSTORE_FEATURE_REPO, the stream source's declared fields); invalid ones go to the Delta table
    dead_letters with their reason (personal data masked). raw_events takes the schema's fields as
    columns; a field added to the schema adds a nullable column. An event_id that is already in raw_events is
    not written again, so re-ingesting a file adds nothing. Prints counts per rejection reason.

    Before each commit, what is about to be written goes to the speed layer in Redis as the stream worker's
    events do: the event_ids are claimed (a later copy sent through Kafka with another payload does not
    count) and the events inside the stream's horizon are counted in the speed tiles, so GET /features
    serves them at once. Redis unreachable: the ingestion stops before that commit, with exit code 1 (what
    was committed stays, and running it again goes on); --no-speed skips this. Meanwhile the ingestion
    registers like a stream worker, so fstore backfill waits for the batch in flight and fstore apply for the
    plan it runs; under a backfill's hold, or once another plan is applied, it stops at the next batch with
    exit code 1 (run it again after). Ctrl-C stops after the batch in flight (exit code 130; a second Ctrl-C
    stops at once).
    """
    from tqdm import tqdm

    from fstore.ingest import Ingestor, Interrupted
    from fstore.kafka.messages import MessageFileError, count_messages
    from fstore.settings import get_settings
    from jobs.ingest_speed import SpeedFailed

    settings = get_settings()
    to_speed = None
    if speed:
        from jobs.ingest_speed import IngestSpeed
        from jobs.stream.settings import get_stream_settings

        to_speed = IngestSpeed(get_stream_settings())
    ingestor = Ingestor(
        settings.table("raw_events"),
        settings.table("dead_letters"),
        keep_unparseable=settings.dead_letter_keep_unparseable,
        speed=to_speed,
    )
    # Ctrl-C stops between two batches, so a batch's speed tiles never go without its raw_events commit and the
    # registration is always removed; a second Ctrl-C stops at once.
    stopping = threading.Event()

    def on_interrupt(signum: int, frame: FrameType | None) -> None:
        if stopping.is_set():
            signal.default_int_handler(signum, frame)
        stopping.set()
        click.echo("\nstopping after the batch in flight (Ctrl-C again to stop at once)", err=True)

    signal.signal(signal.SIGINT, on_interrupt)
    failed: SpeedFailed | Interrupted | None = None
    try:
        for path in files:
            try:  # a file that is not a message file is found before its first batch: nothing of it is written
                with tqdm(
                    total=count_messages(path),
                    unit="msg",
                    unit_scale=True,
                    desc=f"ingest {path}",
                    file=sys.stderr,
                    disable=None,
                ) as bar:
                    report = ingestor.ingest_file(path, batch_size, progress=bar.update, stop=stopping.is_set)
            except MessageFileError as exc:
                raise click.ClickException(str(exc)) from None
            except (SpeedFailed, Interrupted) as exc:  # the batches committed before stay; nothing of this one
                failed = exc
                break
            _show(report, as_json, speed, settings.table("raw_events"), settings.table("dead_letters"))
    finally:  # success, failure or Ctrl-C: no longer registered, so no backfill or apply waits for this ingest
        if to_speed is not None:
            to_speed.close()
    if failed is not None:
        click.echo(f"Error: {failed}", err=True)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(130 if isinstance(failed, Interrupted) else 1)
    # Everything is committed and reported. delta-rs's native thread pools can abort the interpreter's
    # teardown afterwards ("terminate called without an active exception", SIGABRT; apache/arrow#34314),
    # which would turn a finished ingest into exit status -6: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _show(report: IngestReport, as_json: bool, speed: bool, raw: str, dead: str) -> None:
    s = report.summary()
    if as_json:
        click.echo(json.dumps(s))
        return
    click.echo(f"{report.source}: {s['messages']:,} messages in {s['seconds']}s ({s['messages_per_s'] or 0:,}/s)")
    click.echo(f"  written to {raw}: {report.written:,}")
    click.echo(f"  duplicates skipped: {report.duplicates:,}; already in raw_events: {report.already_present:,}")
    click.echo(f"  rejected to {dead}: {report.invalid:,}")
    for reason, n in sorted(report.rejected.items()):
        click.echo(f"    {reason:<28} {n:,}")
    if speed:
        click.echo(f"  speed layer: {report.claimed:,} event_ids claimed, {report.tiled:,} counted in the speed tiles")
