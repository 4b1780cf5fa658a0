"""``fstore repair``: rebuild Redis after it lost its data, from Delta alone (no Spark run).

Redis holds only derived state (docs/design.md §7): the batch view is reloaded from the Delta tile partition of
the last published run (``batch_views`` says which version, cutover C and run date) under its own
version, then published; the speed view is rebuilt from ``raw_events``: the first-ingested copy of every
event_id (copies read back as far as the de-duplication markers reach) whose event_time is at or after
C, applied through the stream worker's own tile writer, so the markers make it exactly once.

Run it with the stream worker stopped (SIGTERM: the worker flushes and commits what it consumed, so
``raw_events`` holds it all); restart the worker afterwards and it resumes from its committed offsets.
A worker that committed within the last ``FRESH_HEARTBEAT_S`` seconds makes the command refuse
(``--force`` overrides): a running worker could apply a later copy of an event before the repair applies
the first one. See docs/runbook.md.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from fstore.clock import Clock, wall_clock
from fstore.core.dedupe import drop_superseded, first_ingested_arrow
from fstore.core.event_schema import EventSchema
from fstore.core.timeutil import SECOND, to_date
from fstore.delta import batch_views, raw_log
from fstore.plan_source import current_plan
from fstore.redis.connect import admin_client, async_client
from fstore.redis.layout import HEARTBEAT_KEY, BatchPointer, Heartbeat
from jobs.batch import batch_view
from jobs.batch.plan import tiles_table
from jobs.batch.settings import BatchSettings
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import TileWriter

FRESH_HEARTBEAT_S = 30
CHUNK = 20_000  # events per tile-writer call


class RepairRefused(RuntimeError):
    """The repair would not be exact now (a live worker); the message says what to do."""


@dataclass
class RepairReport:
    """What one repair did."""

    batch_version: str | None = None
    cutover: int | None = None
    batch_keys: dict[str, int] = field(default_factory=dict)
    speed_events: int = 0
    speed_skipped: int = 0  # already counted (markers): e.g. a second repair

    def summary(self) -> str:
        batch = (
            f"batch view {self.batch_version} reloaded ({sum(self.batch_keys.values())} keys)"
            if self.batch_version
            else "no batch view was ever published"
        )
        return f"{batch}; speed view: {self.speed_events} events applied, {self.speed_skipped} already counted"


def repair(
    batch: BatchSettings,
    stream: StreamSettings,
    *,
    force: bool = False,
    clock: Clock = wall_clock,
    progress: Callable[[int], object] | None = None,
) -> RepairReport:
    """Reload the batch view and rebuild the speed view (see the module docstring).

    Raises:
        RepairRefused: a stream worker committed within :data:`FRESH_HEARTBEAT_S` s (unless ``force``).
    """
    client = admin_client(batch.redis_url, batch.redis_cluster)
    try:
        now = clock()
        beat = Heartbeat.loads(client.get(HEARTBEAT_KEY))
        if beat is not None and now - beat.committed_at < FRESH_HEARTBEAT_S * SECOND and not force:
            raise RepairRefused(
                "a stream worker committed tiles in the last 30 s: stop it (SIGTERM) before `fstore repair`, "
                "then start it again (or pass --force if you know it is stopped)"
            )
        report = RepairReport()
        last = batch_views.latest(batch.table("batch_views"))
        plan = current_plan()
        if last is not None:
            for view in plan.views:
                tiles = raw_log.read_table(
                    batch.table(tiles_table(view.name)),
                    filter=pc.field("run_date") == pa.scalar(last.run_date, pa.date32()),
                )
                keys, _ = batch_view.load_tiles(
                    tiles, view, last.version, client, batch.batch_view_ttl_s, batch.redis_chunk
                )
                report.batch_keys[view.name] = keys
            batch_view.publish(
                client, BatchPointer(last.version, last.cutover), batch.batch_view_ttl_s, batch.batch_view_grace_s
            )
            report.batch_version, report.cutover = last.version, last.cutover
        since = last.cutover if last is not None else now - plan.longest_window - plan.largest_hop
        events = speed_events(stream.table("raw_events"), since, now - stream.marker_ttl_s * SECOND, plan.schema)
        applied, skipped = asyncio.run(_apply(stream, events, progress, clock()))
        report.speed_events, report.speed_skipped = applied, skipped
        return report
    finally:
        client.close()


def speed_events(raw_uri: str, since: int, reach: int, schema: EventSchema) -> list[dict[str, Any]]:
    """The first-ingested copy of every event id stored from ``reach`` on whose timestamp is ``>= since``
    (copies superseded by a winner on an earlier day dropped first, docs/design.md §2), as rows of the
    plan's fields (the timestamp in UTC epoch µs; a field older files lack is ``None``)."""
    ts = schema.timestamp_field
    first = to_date(min(since, reach))
    copies = raw_log.read_table(raw_uri, filter=pc.field("event_date") >= pa.scalar(first, pa.date32()))
    superseded = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), first, date.max)
    winners = first_ingested_arrow(drop_superseded(copies, superseded, schema.id_field, ts), schema.id_field)
    micros = pc.cast(pc.cast(winners.column(ts), pa.timestamp("us", tz="UTC")), pa.int64())
    keep = pc.greater_equal(micros, since)
    winners, micros = winners.filter(keep), micros.filter(keep)
    cols = {
        n: micros.to_pylist()
        if n == ts
        else winners.column(n).to_pylist()
        if n in winners.column_names
        else [None] * winners.num_rows
        for n in schema.names
    }
    return [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]


async def _apply(
    s: StreamSettings, events: list[dict[str, Any]], progress: Callable[[int], object] | None, now: int
) -> tuple[int, int]:
    """Apply through the worker's tile writer; events stamped at or after ``now`` become exact future fields
    (docs/design.md §5), which readers count from their event_time on."""
    client = async_client(s.redis_url, s.redis_cluster, timeout=30, connect_timeout=30)
    writer = TileWriter(client, current_plan(), s.marker_ttl_s, s.tile_ttl_s)
    skipped = 0
    try:
        for lo in range(0, len(events), CHUNK):
            chunk = events[lo : lo + CHUNK]
            skipped += len(await writer.apply(chunk, now))
            if progress is not None:
                progress(len(chunk))
    finally:
        await client.aclose()
    return len(events) - skipped, skipped
