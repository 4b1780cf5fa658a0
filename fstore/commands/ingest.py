"""``fstore ingest``: the backfill path into ``raw_events``."""

from __future__ import annotations

import json
import os
import sys

import click


@click.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False))
@click.option("--batch-size", default=200_000, show_default=True, help="Messages per Delta commit.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON object per file.")
@click.option(
    "--claims/--no-claims",
    default=True,
    show_default=True,
    help="Claim the event_ids written in Redis (FSTORE_REDIS_URL) for the stream worker, so that a later copy "
    "sent through Kafka does not count online. --no-claims: for data no stream worker will see again.",
)
def ingest(files: tuple[str, ...], batch_size: int, as_json: bool, claims: bool) -> None:
    """Append the valid events of JSONL/Parquet message FILES to the Delta table raw_events.

    Every message is validated against the event schema of the feature repository
    (FSTORE_FEATURE_REPO, the stream source's declared fields); invalid ones go to the Delta table
    dead_letters with their reason (personal data masked). raw_events takes the schema's fields as
    columns; a field added to the schema adds a nullable column. An event_id that is already in raw_events is
    not written again, so re-ingesting a file adds nothing. Prints counts per rejection reason.

    Before each commit, the event_ids about to be written are claimed in Redis as the stream worker claims
    them (their payload hash): the copy ingested is the first copy, and a later one sent through Kafka
    with another payload does not count online either. Redis unreachable: the ingestion stops before that
    commit, with exit code 1 (what was committed stays, and running it again goes on); --no-claims skips
    the claims.
    """
    from tqdm import tqdm

    from fstore.ingest import Ingestor
    from fstore.kafka.messages import MessageFileError, count_messages
    from fstore.settings import get_settings
    from jobs.ingest_claims import ClaimsFailed

    settings = get_settings()
    claimer = None
    if claims:
        from fstore.plan_source import current_plan
        from jobs.ingest_claims import IngestClaims
        from jobs.stream.settings import get_stream_settings

        claimer = IngestClaims(get_stream_settings(), current_plan())
    ingestor = Ingestor(
        settings.table("raw_events"),
        settings.table("dead_letters"),
        keep_unparseable=settings.dead_letter_keep_unparseable,
        claim=claimer,
    )
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
                report = ingestor.ingest_file(path, batch_size, progress=bar.update)
        except MessageFileError as exc:
            raise click.ClickException(str(exc)) from None
        except ClaimsFailed as exc:  # the batches committed before stay; nothing of this one was written
            click.echo(f"Error: {exc}", err=True)
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(1)
        s = report.summary()
        if as_json:
            click.echo(json.dumps(s))
            continue
        click.echo(f"{path}: {s['messages']:,} messages in {s['seconds']}s ({s['messages_per_s'] or 0:,}/s)")
        click.echo(f"  written to {settings.table('raw_events')}: {report.written:,}")
        click.echo(f"  duplicates skipped: {report.duplicates:,}; already in raw_events: {report.already_present:,}")
        click.echo(f"  rejected to {settings.table('dead_letters')}: {report.invalid:,}")
        for reason, n in sorted(report.rejected.items()):
            click.echo(f"    {reason:<28} {n:,}")
    # Everything is committed and reported. delta-rs's native thread pools can abort the interpreter's
    # teardown afterwards ("terminate called without an active exception", SIGABRT; apache/arrow#34314),
    # which would turn a finished ingest into exit status -6: leave without that teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
