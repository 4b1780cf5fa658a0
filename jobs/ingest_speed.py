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
claims and markers find themselves; a ``fstore backfill`` in between rebuilds its view's markers with its
tiles, without those events, so the view counts them then: :mod:`jobs.backfill`). Events stamped after the
processing clock (at most 5 minutes ahead) are stored as exact future fields, which readers count from their
event_time on; unlike the worker, ingest does not stay to fold them into tiles later, which changes no value.

While it writes speed tiles, ingest registers like a stream worker (:mod:`fstore.redis.workers`, the name
``ingest:<host>:<pid>``, the fingerprint of the plan it runs: the one it started with, for validation and
tiles alike), renewed from a thread every :data:`REGISTER_S` seconds however long a batch takes, and removed
when it ends (success, failure, Ctrl-C). ``fstore apply`` therefore waits for an ingest running an older plan
before it frees what the plan removed, and ``fstore backfill`` waits for the batch in flight: ingest checks
the hold only at a batch boundary (:meth:`IngestSpeed.begin`, after registering), so a batch that started
before the hold is finished completely — tiles and ``raw_events`` commit — while the backfill sees it live
and waits; at the next boundary ingest sees the hold, removes its registration (the backfill goes on at
once: it waits only for live registrations, so no acknowledgement is needed — ingest keeps no future
events to fold later, which is what a worker's acknowledged clock is for) and stops with exit code 1,
nothing of that batch written. An ingest killed mid-batch stops blocking after
:data:`~fstore.redis.workers.LIVE_S`, like a worker. Its plan is fixed when it starts, but it is visible only
from its first batch on: an ``fstore apply`` in between waited for nobody, so at each boundary, after
registering, ingest also compares the applied record with its plan and stops the same way (exit 1, nothing
of that batch written) when another plan was applied.

Limits. Copies of one event_id with different payloads written at the same moment by ingest and another
writer (the stream's raw sink, another ingest) can leave the speed tiles on the copy that claimed first and
``raw_events`` on the one stored first; backfill the days the stream is receiving with the stream itself
(docs/design.md §2 status).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import threading
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

from fstore import applied, plan_source
from fstore.core.events import Row
from fstore.core.plan import Plan
from fstore.core.plan_json import fingerprint
from fstore.plan_source import current_plan
from fstore.redis import workers
from fstore.redis.connect import AdminClient, admin_client, async_client
from fstore.redis.hold import HOLD_KEY
from jobs.stream.faults import is_outage
from jobs.stream.pipeline import Claims
from jobs.stream.settings import StreamSettings
from jobs.stream.sinks import TileWriter

log = logging.getLogger("fstore.ingest")

CHUNK = 20_000  # copies per claim and tile-writer call
#: Seconds between two registrations while ingest runs (live for :data:`~fstore.redis.workers.LIVE_S` after one).
REGISTER_S = 0.5


def ingest_name() -> str:
    """The registration name of this ingest process (:mod:`fstore.redis.workers`)."""
    return f"ingest:{socket.gethostname()}:{os.getpid()}"


class SpeedFailed(RuntimeError):
    """The claims or the tiles could not be written; the message says why and what to do."""


class IngestSpeed:
    """Claims ingested first copies and applies those inside the horizon to the speed tiles of ``settings``.

    Before each batch, :meth:`begin` registers this ingest as live with the fingerprint of ``plan`` and checks
    the hold of ``fstore backfill``; then the batch's calls hand it the rows about to be written, their payload
    hashes and the ingestion's processing clock (the one validation used) and get the events newly applied to
    the tiles. From the first :meth:`begin` to :meth:`close` (a context manager) a thread renews the
    registration, so a backfill waits for the batch in flight and ``fstore apply`` for ``plan``.

    Args:
        settings: the stream worker's settings (its Redis, horizon and TTLs).
        plan: the plan the tiles follow (default: the process's, the one validation uses); the same for the
            whole ingestion.
        name: the registration name (default :func:`ingest_name`).

    Raises:
        SpeedFailed: Redis failed, a backfill holds the speed layer, or the tiles refused a value; the caller
            stops before writing the batch (``fstore ingest``: exit 1).
    """

    def __init__(self, settings: StreamSettings, plan: Plan | None = None, name: str | None = None) -> None:
        self.s = settings
        # the applied record this ingest must still match at each batch (None: a plan given or installed)
        self._record: Path | None = None if plan is not None or plan_source.installed() else plan_source.repo_dir()
        self.plan = current_plan() if plan is None else plan
        self.fingerprint = fingerprint(self.plan)
        self.name = name or ingest_name()
        self._client: AdminClient | None = None
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    def __enter__(self) -> IngestSpeed:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def begin(self) -> None:
        """At a batch boundary, before the batch's first call: register as live (at once, then every
        :data:`REGISTER_S` seconds from a thread), then check the hold. Registering first means a backfill
        that sets its hold after this check finds the registration and waits for the batch.

        Raises:
            SpeedFailed: a backfill holds the speed layer (the registration is removed first, so the backfill
                goes on at once), or Redis failed.
        """
        try:
            if self._client is None:
                self._client = admin_client(
                    self.s.redis_url, self.s.redis_cluster, socket_timeout=10, socket_connect_timeout=10
                )
            workers.register(self._client, self.name, self.fingerprint)
            token = self._client.get(HOLD_KEY)
            # After registering, like the hold: an apply that recorded its plan before this registration was
            # visible did not wait for this ingest, so it must not write under the plan it started with.
            record = applied.load(self._record) if self._record is not None and token is None else None
        except Exception as exc:
            raise self._failed(exc) from exc
        if token is not None:
            self.close()
            held = token.decode() if isinstance(token, bytes) else token
            raise SpeedFailed(
                f"fstore backfill holds the speed layer (hold {held}); nothing of this batch was written. Run "
                "fstore ingest again once the backfill is done (what was written is not written twice)."
            )
        if record is not None and fingerprint(record.plan) != self.fingerprint:
            self.close()
            raise SpeedFailed(
                f"fstore apply recorded another plan ({applied.record_path(self._record or '.')}) since this "
                "ingest started; nothing of this batch was written. Run fstore ingest again: it runs the "
                "applied plan (what was written is not written twice)."
            )
        if self._beat is None:
            self._stop.clear()
            self._beat = threading.Thread(target=self._renew, name="ingest-registration", daemon=True)
            self._beat.start()

    def _renew(self) -> None:
        while not self._stop.wait(REGISTER_S):
            client = self._client
            if client is None:
                return
            try:
                workers.register(client, self.name, self.fingerprint)
            except Exception as exc:  # the next round tries again; the batch's own Redis calls report an outage
                log.warning("ingest registration skipped: %s", exc)

    def close(self) -> None:
        """Stop renewing and remove the registration (a failure is logged: it lapses after ``LIVE_S``)."""
        beat, self._beat = self._beat, None
        if beat is not None:
            self._stop.set()
            beat.join()  # no renewal after the removal below
        client, self._client = self._client, None
        if client is None:
            return
        try:
            workers.deregister(client, self.name)
        except Exception as exc:
            log.warning("ingest registration not removed (it lapses in %g s): %s", workers.LIVE_S, exc)
        finally:
            client.close()

    def __call__(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        if not rows:
            return 0
        try:
            return asyncio.run(self._apply(rows, hashes, now))
        except Exception as exc:
            raise self._failed(exc) from exc

    @staticmethod
    def _failed(exc: Exception) -> SpeedFailed:
        if not is_outage(exc):
            return SpeedFailed(f"the speed step failed ({exc!r}); nothing of this batch was written to raw_events")
        return SpeedFailed(
            f"could not claim the event_ids to write, nor count them in the speed tiles, in Redis "
            f"(FSTORE_REDIS_URL) ({exc!r}); nothing of this batch was written to raw_events. fstore ingest "
            "counts what it writes online as the stream worker would, and claims it so that a later copy "
            "sent through Kafka does not count (docs/design.md §2): start Redis (`fstore services up`) or "
            "point FSTORE_REDIS_URL at the stream's Redis and run it again (what was written is not written "
            "twice), or pass --no-speed for events no stream worker and no online reader will see."
        )

    async def _apply(self, rows: Sequence[Row], hashes: Sequence[str], now: int) -> int:
        s, plan = self.s, self.plan
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
