"""The worker's side of plan changes (docs/design.md §3 "Evolution", :mod:`fstore.redis.hold`).

Once a second, between two batches, a worker registers as live with the fingerprint of the plan it runs
(:mod:`fstore.redis.workers`: ``fstore apply`` waits for every live worker to run the applied plan before
it frees the keys of what the plan removed), checks whether ``fstore apply`` recorded a new plan (one
``stat``) and whether ``fstore backfill`` holds the speed layer. Redis calls go through a small blocking
client in a thread: they are two per second, off the hot path, and a failure only skips this round
(logged), never stops the stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from fstore.redis import hold, workers
from fstore.redis.connect import admin_client
from jobs.stream.settings import StreamSettings

log = logging.getLogger("fstore.stream")

#: Seconds between two checks.
CONTROL_S = 1.0


def worker_id() -> str:
    """A name unique to this worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Control:
    """Liveness, the applied plan and the backfill's hold, checked at most once a second."""

    def __init__(self, s: StreamSettings, fingerprint: str, name: str | None = None) -> None:
        """Args:
        s: the worker settings (its Redis).
        fingerprint: the fingerprint of the plan the worker runs (:attr:`fingerprint`, updated when it
            adopts another).
        name: the worker's name (default: :func:`worker_id`).
        """
        self.client = admin_client(s.redis_url, s.redis_cluster, socket_timeout=2, socket_connect_timeout=2)
        self.name = name or worker_id()
        self.fingerprint = fingerprint
        self._next = float("-inf")

    def due(self) -> bool:
        """Whether a check is due (and, if so, the next one is a second away)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CONTROL_S
        return True

    def register(self) -> None:
        """Register as live, running the plan :attr:`fingerprint` (blocking)."""
        workers.register(self.client, self.name, self.fingerprint)

    async def reregister(self) -> None:
        """:meth:`register` at once (after adopting a plan), off the event loop; a failure is logged (the
        next check registers again)."""
        try:
            await asyncio.to_thread(self.register)
        except Exception as exc:
            log.warning("worker registration skipped: %s", exc)

    def _poll(self) -> str | None:
        self.register()
        token = self.client.get(hold.HOLD_KEY)
        return token.decode() if isinstance(token, bytes) else token

    async def poll(self) -> str | None:
        """Register as live; the hold token if a backfill holds the speed layer. ``None`` also when Redis
        did not answer (logged: the next check tries again)."""
        try:
            return await asyncio.to_thread(self._poll)
        except Exception as exc:
            log.warning("plan/hold check skipped: %s", exc)
            return None

    async def ack(self, token: str, clock: int) -> None:
        """Tell the backfill this worker holds, with its processing clock."""
        await asyncio.to_thread(hold.ack, self.client, self.name, token, clock)

    async def still_held(self, token: str) -> bool | None:
        """Whether the hold ``token`` still stands (registering this worker as live); ``None`` when Redis
        did not answer."""
        try:
            return await asyncio.to_thread(self._poll) == token
        except Exception as exc:
            log.warning("hold check failed, still holding: %s", exc)
            return None
