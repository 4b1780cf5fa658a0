"""The speed layer's share of ``fstore ingest``: a file loaded is counted online as if sent through Kafka.

``fstore ingest`` writes its first copies to ``raw_events``. Left there alone, they would be missing online
wherever the speed tiles serve (at and after the cutover C) until a batch run's cutover passes them, and a
later copy of one of them sent through Kafka with another payload would count online in its place, while
the batch layer and point-in-time reads keep the ingested copy, the first in arrival order (docs/design.md
§2, §5). So before each ``raw_events`` commit, ingest does what the stream worker does with a batch's first
copies (:mod:`jobs.stream.layer`): it *claims* their event_ids (:mod:`jobs.stream.claims`: the payload hash,
and the entities of a copy going to the tiles), then applies the copies inside the worker's horizon
(``FSTORE_STREAM_LATE_HORIZON_S``, default the tile TTL) to the speed tiles through the worker's own
:class:`~jobs.stream.sinks.TileWriter`, whose markers make that exactly once. A later copy with another hash
then loses its claim and never reaches the tiles; the same bytes again are skipped by the markers.

Claims and tiles before the commit keep the worker's order (claims, tiles, then the raw sink): a crash in
between leaves counted events whose rows are not stored yet, and the file ingested again stores them (its
claims and markers find themselves). Events stamped after the processing clock (at most 5 minutes ahead)
are stored as exact future fields, which readers count from their event_time on; unlike the worker, ingest
does not stay to fold them into tiles later, which changes no value.

Limits. Ingest is not a registered stream worker: ``fstore apply`` does not wait for it before freeing what a
plan removed (a batch in flight may write such keys again; they expire with their TTL), and it refuses to
run while ``fstore backfill`` holds the speed layer but is not waited for by a backfill that starts during
one of its batches: run ingest and backfill one after the other. Copies of one event_id with different
payloads written at the same moment by ingest and another writer (the stream's raw sink, another ingest)
can leave the speed tiles on the copy that claimed first and ``raw_events`` on the one stored first; backfill
the days the stream is receiving with the stream itself (docs/design.md §2 status).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fstore.core.events import Row
from fstore.plan_source import current_plan
from fstore.redis.connect import admin_client, async_client
from fstore.redis.hold import HOLD_KEY
from jobs.stream.faults import is_outage
from jobs.stream.pipeline import Claims
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import TileWriter

CHUNK = 20_000  # copies per claim and tile-writer call


class SpeedFailed(RuntimeError):
    """The claims or the tiles could not be written; the message says why and what to do."""


class IngestSpeed:
    """Claims ingested first copies and applies those inside the horizon to the speed tiles of ``settings``.

    Called with the rows a batch is about to write, their payload hashes and the ingestion's processing clock
    (the one validation used); returns the events newly applied to the tiles. Each call follows the applied
    plan (:func:`fstore.plan_source.current_plan`, as the worker does between batches) and refuses while
    ``fstore backfill`` holds the speed layer (:mod:`fstore.redis.hold`): the backfill rebuilds tiles from
    ``raw_events`` and waits only for the stream workers it knows.

    Raises:
        SpeedFailed: Redis failed, a backfill holds the speed layer, or the tiles refused a value; the caller
            stops before writing the batch (``fstore ingest``: exit 1).
    """

    def __init__(self, settings: StreamSettings) -> None:
        self.s = settings

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        if not rows:
            return 0
        try:
            return asyncio.run(self._apply(rows, hashes, now))
        except SpeedFailed:
            raise
        except Exception as exc:
            if not is_outage(exc):
                raise SpeedFailed(
                    f"the speed step failed ({exc!r}); nothing of this batch was written to raw_events"
                ) from exc
            raise SpeedFailed(
                f"could not claim the event_ids to write, nor count them in the speed tiles, in Redis "
                f"(FSTORE_REDIS_URL) ({exc!r}); nothing of this batch was written to raw_events. fstore ingest "
                "counts what it writes online as the stream worker would, and claims it so that a later copy "
                "sent through Kafka does not count (docs/design.md §2): start Redis (`fstore services up`) or "
                "point FSTORE_REDIS_URL at the stream's Redis and run it again (what was written is not written "
                "twice), or pass --no-speed for events no stream worker and no online reader will see."
            ) from exc

    def _held(self) -> str | None:
        client = admin_client(self.s.redis_url, self.s.redis_cluster, socket_timeout=10, socket_connect_timeout=10)
        try:
            token = client.get(HOLD_KEY)
        finally:
            client.close()
        return token.decode() if isinstance(token, bytes) else token

    async def _apply(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        s = self.s
        token = await asyncio.to_thread(self._held)
        if token is not None:
            raise SpeedFailed(
                f"fstore backfill holds the speed layer (hold {token}); nothing of this batch was written. Run "
                "fstore ingest again once the backfill is done (what was written is not written twice)."
            )
        plan = current_plan()
        idf, ts = plan.schema.id_field, plan.schema.timestamp_field
        oldest = now - s.horizon_us
        client = async_client(s.redis_url, s.redis_cluster, timeout=30, connect_timeout=10)
        writer = TileWriter(client, plan, s.marker_ttl_s, s.tile_ttl_s)
        applied = 0
        try:
            for lo in range(0, len(rows), CHUNK):
                part, digests = rows[lo : lo + CHUNK], list(hashes[lo : lo + CHUNK])
                tiled: list[Row | None] = [r if r[ts] >= oldest else None for r in part]
                lost = await writer.claim(Claims([r[idf] for r in part], digests, tiled), now)
                mine = [r for r in part if r[ts] >= oldest and r[idf] not in lost]
                if mine:
                    skipped = await writer.apply(mine, now)
                    applied += len(mine) - len(skipped)
        finally:
            await client.aclose()
        return applied
