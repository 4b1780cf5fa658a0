"""``fstore generate``: write the shipped example's synthetic e-commerce event stream to a JSONL or Parquet
message file (the command lives with the example it generates; :mod:`fstore.cli` registers it)."""

from __future__ import annotations

import json
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from fstore.core.timeutil import DAY, day_start, iso, to_micros

if TYPE_CHECKING:
    from examples.synth.generator import GeneratorConfig


@dataclass(frozen=True)
class GenerateSummary:
    """What one ``fstore generate`` run wrote."""

    path: str
    messages: int
    bytes: int
    seconds: float
    duplicates: int
    late: int
    malformed: int
    pii: int

    @property
    def events_per_s(self) -> float:
        """Throughput, messages per second of wall time (generation + encoding + file writing)."""
        return self.messages / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly figures."""
        return {**asdict(self), "seconds": round(self.seconds, 3), "events_per_s": round(self.events_per_s)}


def write_stream(cfg: GeneratorConfig, seed: int, out: str | Path, progress: bool | None = None) -> GenerateSummary:
    """Generate the stream of ``(cfg, seed)`` into the message file ``out`` (format by extension).

    Args:
        cfg: what to generate.
        seed: random seed; the same config and seed give a byte-identical file.
        out: ``.jsonl`` or ``.parquet`` path (parent directories are created).
        progress: show a tqdm bar on stderr (None: only when stderr is a terminal).

    Returns:
        Counts, size and timing of the run.
    """
    import numpy as np
    import orjson
    from tqdm import tqdm

    from examples.synth.generator import DUPLICATE, LATE, MALFORMED, PII, generate, planned_total
    from fstore.kafka.messages import MessageWriter

    counts = dict.fromkeys((DUPLICATE, LATE, MALFORMED, PII), 0)
    messages = 0
    began = time.perf_counter()
    with (
        MessageWriter(out) as writer,
        tqdm(
            total=planned_total(cfg),
            unit="msg",
            unit_scale=True,
            desc=f"generate {out}",
            file=sys.stderr,
            disable=None if progress is None else not progress,
        ) as bar,
    ):
        for batch in generate(cfg, seed, dumps=orjson.dumps):
            writer.write(batch.keys, batch.values)
            messages += len(batch.values)
            for bit in counts:
                counts[bit] += int(np.count_nonzero(batch.flags & bit))
            bar.update(len(batch.values))
    seconds = time.perf_counter() - began
    return GenerateSummary(
        str(out),
        messages,
        Path(out).stat().st_size,
        seconds,
        counts[DUPLICATE],
        counts[LATE],
        counts[MALFORMED],
        counts[PII],
    )


def parse_end(text: str | None) -> int:
    """``--end`` as UTC epoch µs.

    An ISO date or date-time (UTC when it has no offset); None means today 00:00 UTC.
    """
    if text is None:
        return day_start(datetime.now(UTC).date())  # the only clock read: the default range ends today
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise click.BadParameter(
            f"{text!r} is not an ISO date or date-time (e.g. 2025-06-01 or 2025-06-01T12:00:00Z)", param_hint="--end"
        ) from None
    return to_micros(dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC))


_RATE = click.FloatRange(0.0, 1.0)


@click.command()
@click.option(
    "--out",
    required=True,
    type=click.Path(dir_okay=False, path_type=Path),
    help="Output message file: .jsonl (one message per line) or .parquet (key, value columns).",
)
@click.option(
    "--events",
    type=click.IntRange(min=0),
    default=None,
    help="Exact number of messages, injected ones included. Default: users × days × "
    "sessions-per-user-per-day sessions (about 12 events each).",
)
@click.option("--users", type=click.IntRange(min=1), default=10_000, show_default=True, help="Number of users.")
@click.option("--products", type=click.IntRange(min=1), default=1_000, show_default=True, help="Number of products.")
@click.option(
    "--days",
    type=click.FloatRange(min=0, min_open=True),
    default=30.0,
    show_default=True,
    help="Length of the time range, ending at --end.",
)
@click.option(
    "--end",
    "end_text",
    metavar="ISO",
    default=None,
    help="End of the range (exclusive): ISO date or date-time, UTC if no offset. Default: today "
    "00:00 UTC — pass --end for output that is identical on every day.",
)
@click.option(
    "--seed",
    type=click.IntRange(min=0),
    default=7,
    show_default=True,
    help="Random seed: the same options and seed give a byte-identical file.",
)
@click.option(
    "--sessions-per-user-per-day",
    type=click.FloatRange(min=0),
    default=0.5,
    show_default=True,
    help="Traffic volume when --events is not given.",
)
@click.option("--click-rate", type=_RATE, default=0.1, show_default=True, help="Clicks per impression.")
@click.option("--cart-rate", type=_RATE, default=0.3, show_default=True, help="Add-to-carts per click.")
@click.option("--purchase-rate", type=_RATE, default=0.5, show_default=True, help="Purchases per add-to-cart.")
@click.option(
    "--zipf-exponent",
    type=click.FloatRange(min=0),
    default=1.1,
    show_default=True,
    help="Product popularity skew: share of the product at rank r ∝ 1/r^exponent.",
)
@click.option(
    "--epoch-ms-rate",
    type=_RATE,
    default=0.1,
    show_default=True,
    help="Share of events whose event_time is epoch milliseconds instead of ISO-8601.",
)
@click.option(
    "--duplicate-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Share of messages that re-send an earlier event (half byte-identical, half with the same "
    "event_id and a changed payload).",
)
@click.option(
    "--late-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Share of events that arrive 1–48 h after their event_time.",
)
@click.option(
    "--malformed-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Share of invalid messages, cycling through every rejection reason of the event contract.",
)
@click.option(
    "--pii-rate",
    type=_RATE,
    default=0.0,
    show_default=True,
    help="Share of (valid) events that also carry e-mail, phone and IP fields.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the summary as one JSON object.")
def generate(out: Path, end_text: str | None, days: float, seed: int, as_json: bool, **options: Any) -> None:
    """Write the shipped example's synthetic e-commerce traffic to a message file, in arrival order.

    The events follow the schema of the example repository (feature_repo/); another repository needs
    its own traffic.
    Sessions follow the funnel page views → impressions → click → add_to_cart → purchase, with Zipf
    product popularity and a day/night traffic curve. Keys are user ids. The file can be ingested
    (`fstore ingest`) or replayed into Kafka (`fstore publish`).

    Example: fstore generate --out data/events.parquet --events 1000000 --end 2025-06-01 --late-rate 0.01
    """
    from examples.synth.generator import GeneratorConfig
    from fstore.kafka.messages import MessageFileError, file_format

    try:
        file_format(out)  # before any work: a user mistake, not a traceback after generating
    except MessageFileError as exc:
        raise click.BadParameter(str(exc), param_hint="--out") from None
    end = parse_end(end_text)
    try:
        cfg = GeneratorConfig(start=end - round(days * DAY), end=end, **options)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    summary = write_stream(cfg, seed, out)
    if as_json:
        click.echo(json.dumps(summary.as_dict()))
        return
    click.echo(
        f"wrote {summary.messages:,} messages to {out} ({summary.bytes / 1e6:,.1f} MB) in "
        f"{summary.seconds:.2f} s: {summary.events_per_s:,.0f} events/s"
    )
    click.echo(
        f"  range [{iso(cfg.start)}, {iso(cfg.end)}), {cfg.users:,} users, {cfg.products:,} products, seed {seed}"
    )
    click.echo(
        f"  injected: {summary.duplicates:,} duplicates, {summary.late:,} late, "
        f"{summary.malformed:,} malformed, {summary.pii:,} with personal data"
    )
