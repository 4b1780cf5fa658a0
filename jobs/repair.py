"""``fstore repair``: rebuild Redis after it lost its data, from Delta alone (no Spark run).

Redis holds only derived state (docs/design.md §7): the batch view is reloaded from the Delta tile partition of
the last published run (``batch_views`` says which version, cutover C and run date) under its own
version, then published; the speed view is rebuilt from ``raw_events``: the first-ingested copy of every
event_id (copies read back as far as the de-duplication markers reach) whose event_time is at or after
C, applied through the stream worker's own tile writer, so the markers make it exactly once.

The worker's event_id claims (:mod:`jobs.stream.claims`) are restored too, before the tiles, as the worker
writes them: each replayed winner claims its id with its payload hash (``raw_events`` stores the hash the
worker computes, of the message's original bytes) and its entities, since its markers now cover them. A
winner before C is not replayed (the batch view counts it) and sets no marker, so it claims with its hash
alone, as a copy too old for the tiles does: a later copy with another payload then never counts online,
whatever its entities or time. Those claims are restored for the ids the worker's claims could still
hold: a copy stored since the start of the previous claim generation, read from any day (a first copy
too old for the tiles lands on an old day; the files of those days are skipped by their ``ingested_at``
statistics).

Run it with the stream worker stopped (SIGTERM: the worker flushes and commits what it consumed, so
``raw_events`` holds it all); restart the worker afterwards and it resumes from its committed offsets.
A worker that committed within the last ``FRESH_HEARTBEAT_S`` seconds makes the command refuse
(``--force`` overrides): a running worker could apply a later copy of an event before the repair applies
the first one. See docs/runbook.md.
"""

from __future__ import annotations

import asyncio
import json
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
from fstore.redis.layout import HEARTBEAT_KEY, LOST_WRITES_KEY, LOST_WRITES_TTL_S, BatchPointer, Heartbeat
from jobs.batch import batch_view
from jobs.batch.plan import tiles_table
from jobs.batch.settings import BatchSettings
from jobs.stream.pipeline import Claims
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import TileWriter
from jobs.stream.speed_lua import marker_generation

FRESH_HEARTBEAT_S = 30
CHUNK = 20_000  # events per tile-writer call


class RepairRefused(RuntimeError):
    """The repair would not be exact now (a live worker); the message says what to do."""


#: What ``fs:redis:lost_writes`` says after a repair found later copies counted in a first copy's place.
TAKEN_MESSAGE = (
    "fstore repair found {n} event_id(s) of raw_events claimed in Redis by another copy: a stream worker ran "
    "after Redis lost its data and counted a later copy of those events, so online values count it instead of "
    "the first copy (docs/design.md §2). Stop every stream worker, flush Redis (redis-cli FLUSHALL) and run "
    "`fstore repair` again (docs/runbook.md, 'Redis lost its data')"
)


@dataclass
class RepairReport:
    """What one repair did."""

    batch_version: str | None = None
    cutover: int | None = None
    batch_keys: dict[str, int] = field(default_factory=dict)
    speed_events: int = 0
    speed_skipped: int = 0  # already counted (markers): e.g. a second repair
    speed_taken: int = 0  # left out: another copy of the id claimed it first (a worker ran since Redis was lost)
    claims: int = 0  # event_id claims restored (the replayed winners' and those of winners before the cutover)
    lost_writes_cleared: bool = False  # a worker had flagged Redis as having lost its writes

    @property
    def exact(self) -> bool:
        """Whether the rebuilt views count every winner of ``raw_events``: no later copy took a first copy's
        place (a worker that ran between the loss and the repair counted it; only a flush undoes that)."""
        return self.speed_taken == 0

    def summary(self) -> str:
        batch = (
            f"batch view {self.batch_version} reloaded ({sum(self.batch_keys.values())} keys)"
            if self.batch_version
            else "no batch view was ever published"
        )
        taken = f", {self.speed_taken} claimed by another copy" if self.speed_taken else ""
        return (
            f"{batch}; speed view: {self.speed_events} events applied, {self.speed_skipped} already counted{taken}; "
            f"{self.claims} event_id claims restored"
            + ("; the lost-writes flag cleared" if self.lost_writes_cleared else "")
        )


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
        at = clock()
        ttl = stream.marker_ttl_s
        claims_from = (marker_generation(at, ttl)[0] - 1) * ttl * SECOND  # the oldest claim the worker may hold
        events = replay(stream.table("raw_events"), since, now - ttl * SECOND, plan.schema, claims_from)
        asyncio.run(_apply(stream, events, progress, at, report))
        if report.exact:
            report.lost_writes_cleared = bool(client.delete(LOST_WRITES_KEY))  # the views are whole again
        else:  # later copies are counted in first copies' place: GET /health degraded until a flush + repair
            body = {"detected_at": clock(), "message": TAKEN_MESSAGE.format(n=report.speed_taken)}
            client.set(LOST_WRITES_KEY, json.dumps(body), ex=LOST_WRITES_TTL_S)
        return report
    finally:
        client.close()


def speed_events(raw_uri: str, since: int, reach: int, schema: EventSchema) -> list[dict[str, Any]]:
    """The first-ingested copy of every event id stored from ``reach`` on whose timestamp is ``>= since``
    (copies superseded by a winner on an earlier day dropped first, docs/design.md §2), as rows of the
    plan's fields (the timestamp in UTC epoch µs; a field older files lack is ``None``)."""
    return replay(raw_uri, since, reach, schema).rows


@dataclass
class Replay:
    """What a repair writes to the speed view: ``rows`` (:func:`speed_events`) with their payload ``hashes``,
    and ``claims``: the id and ``payload_hash`` columns of the winners before ``since`` whose claims it restores
    (Arrow, taken as Python objects a chunk at a time: they can be as many as the worker's claims)."""

    rows: list[dict[str, Any]]
    hashes: list[str]
    claims: pa.Table


def replay(raw_uri: str, since: int, reach: int, schema: EventSchema, claims_from: int | None = None) -> Replay:
    """The winners :func:`speed_events` replays, with their payload hashes, and, when ``claims_from`` (UTC
    epoch µs) is given, the winners before ``since`` with a copy stored (``ingested_at``) from then on.

    For those, copies stored from ``claims_from`` on are read from every day, not only from ``reach`` on: a
    first copy too old for the tiles lies on an old day. Of such a day only those copies are read, so its
    winner may be a later copy than the true first one; the claim is still safe: every copy of that day is
    stamped before ``since``, so the one copy it lets through (the same bytes again) never counts online.
    """
    ts, idf = schema.timestamp_field, schema.id_field
    first = to_date(min(since, reach))
    where = pc.field("event_date") >= pa.scalar(first, pa.date32())
    stored = pc.field("ingested_at") >= pa.scalar(claims_from or 0, raw_log.TS)
    copies = raw_log.read_table(raw_uri, filter=where if claims_from is None else where | stored, schema=schema)
    marks_from = first if claims_from is None else date.min
    superseded = raw_log.superseded_on(raw_log.superseded_uri(raw_uri), marks_from, date.max)
    winners = first_ingested_arrow(drop_superseded(copies, superseded, idf, ts), idf)
    micros = pc.cast(pc.cast(winners.column(ts), pa.timestamp("us", tz="UTC")), pa.int64())
    keep = pc.greater_equal(micros, since)
    claims = winners.select([idf, "payload_hash"]).slice(0, 0)
    if claims_from is not None and winners.num_rows:
        recent = pc.unique(copies.filter(stored).column(idf))
        before = pc.and_(pc.invert(keep), pc.is_in(winners.column(idf), value_set=recent))
        claims = winners.select([idf, "payload_hash"]).filter(before)
    winners, micros = winners.filter(keep), micros.filter(keep)
    cols = {
        n: micros.to_pylist()
        if n == ts
        else winners.column(n).to_pylist()
        if n in winners.column_names
        else [None] * winners.num_rows
        for n in schema.names
    }
    rows = [dict(zip(cols, row, strict=True)) for row in zip(*cols.values(), strict=True)]
    hashes = winners.column("payload_hash").to_pylist() if winners.num_rows else []
    return Replay(rows, hashes, claims)


async def _apply(
    s: StreamSettings, events: Replay, progress: Callable[[int], object] | None, now: int, report: RepairReport
) -> None:
    """Claim, then apply through the worker's tile writer, as the worker does (the claims of a chunk before its
    tiles; one script call per claims bucket, so per hash slot on a Redis Cluster); events stamped at or after
    ``now`` become exact future fields (docs/design.md §5), which readers count from their event_time on."""
    client = async_client(s.redis_url, s.redis_cluster, timeout=30, connect_timeout=30)
    plan = current_plan()
    writer = TileWriter(client, plan, s.marker_ttl_s, s.tile_ttl_s)
    idf = plan.schema.id_field
    try:
        for lo in range(0, events.claims.num_rows, CHUNK):  # winners before the cutover: their hash alone, no tiles
            part = events.claims.slice(lo, CHUNK)
            ids, digests = part.column(0).to_pylist(), part.column(1).to_pylist()
            await writer.claim(Claims(ids, digests, [None] * len(ids)), now)
            report.claims += part.num_rows
            if progress is not None:
                progress(part.num_rows)
        for lo in range(0, len(events.rows), CHUNK):
            chunk = events.rows[lo : lo + CHUNK]
            hashes = events.hashes[lo : lo + CHUNK]
            taken = await writer.claim(Claims([r[idf] for r in chunk], hashes, list(chunk)), now)
            report.claims += len(chunk)
            mine = [r for r in chunk if r[idf] not in taken] if taken else chunk
            skipped = len(await writer.apply(mine, now))
            report.speed_events += len(mine) - skipped
            report.speed_skipped += skipped
            report.speed_taken += len(chunk) - len(mine)
            if progress is not None:
                progress(len(chunk))
    finally:
        await client.aclose()
