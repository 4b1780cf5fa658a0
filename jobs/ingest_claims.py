"""The event_id claims of ``fstore ingest``: a copy loaded from a file is the first copy on the stream too.

``fstore ingest`` writes its first copies to ``raw_events`` only; the speed tiles are the stream worker's.
Without a trace in Redis, a later copy of the same event_id sent through Kafka with another payload (another
event_time, entity or price) would count online — in the speed tiles when it is stamped after the cutover C
— while the batch layer and point-in-time reads count the ingested copy, the first in arrival order
(docs/design.md §2). So before each ``raw_events`` commit, ingest claims the ids it is about to write as the
worker claims a first copy too old for its tiles (:mod:`jobs.stream.claims`): the payload hash alone. A later
copy with another hash then loses its claim and never reaches the tiles; the same bytes again find their own
claim and go on, which is right: the copy ingested is not in any tile, and they are the same event.

Claiming before the commit keeps the order the worker keeps (claims, then the sinks): a crash in between
leaves a claim without its row, and the file ingested again finds its own claims. Claims live as the
worker's do (the marker generations of ``FSTORE_STREAM_MARKER_TTL_S``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from fstore.clock import Clock, wall_clock
from fstore.core.plan import Plan
from fstore.redis.connect import async_client
from jobs.stream.pipeline import Claims
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import TileWriter

CHUNK = 20_000  # ids per call of the tile writer's claim (one script call per claims bucket and 2,000 ids)


class ClaimsFailed(RuntimeError):
    """The claims could not be made (Redis unreachable, a refused script); the message says what to do."""


class IngestClaims:
    """Claims ``(event_ids, payload hashes)`` with the hash alone, in the Redis of ``settings``.

    Raises:
        ClaimsFailed: Redis failed; the caller stops before writing the batch (``fstore ingest``: exit 1).
    """

    def __init__(self, settings: StreamSettings, plan: Plan, clock: Clock = wall_clock) -> None:
        self.s, self.plan, self.clock = settings, plan, clock
        self.claimed = 0

    def __call__(self, ids: Sequence[str], hashes: Sequence[str]) -> None:
        if not ids:
            return
        try:
            asyncio.run(self._claim(ids, hashes))
        except Exception as exc:
            raise ClaimsFailed(
                f"could not claim the event_ids to write in Redis (FSTORE_REDIS_URL) ({exc!r}); nothing of "
                "this batch was written. fstore ingest claims them so that a later copy sent through Kafka does "
                "not count online (docs/design.md §2): start Redis (`fstore services up`) or point FSTORE_REDIS_URL "
                "at the stream's Redis and run it again (what was written is not written twice), or pass "
                "--no-claims for events no stream worker will see."
            ) from exc

    async def _claim(self, ids: Sequence[str], hashes: Sequence[str]) -> None:
        s = self.s
        client = async_client(s.redis_url, s.redis_cluster, timeout=30, connect_timeout=10)
        writer = TileWriter(client, self.plan, s.marker_ttl_s, s.tile_ttl_s, clock=self.clock)
        try:
            for lo in range(0, len(ids), CHUNK):
                part, digests = list(ids[lo : lo + CHUNK]), list(hashes[lo : lo + CHUNK])
                await writer.claim(Claims(part, digests, [None] * len(part)))
                self.claimed += len(part)
        finally:
            await client.aclose()
