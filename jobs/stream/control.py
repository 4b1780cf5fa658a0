"""The worker's side of plan changes (docs/design.md §3 "Evolution", :mod:`fstore.redis.hold`).

Once a second, between two batches, a worker registers as live, checks whether ``fstore apply`` recorded
a new plan (one ``stat``) and whether ``fstore backfill`` holds the speed layer. Redis calls go through a
small blocking client in a thread: they are two per second, off the hot path, and a failure only skips
this round (logged), never stops the stream.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid

from fstore.redis.connect import admin_client
from fstore.redis.hold import ACKS_KEY, HOLD_KEY, WORKERS_KEY, ack_value
from jobs.stream.settings import StreamSettings

log = logging.getLogger("fstore.stream")

#: Seconds between two checks.
CONTROL_S = 1.0


def worker_id() -> str:
    """A name unique to this worker process."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Control:
    """Liveness, the applied plan and the backfill's hold, checked at most once a second."""

    def __init__(self, s: StreamSettings, name: str | None = None) -> None:
        self.client = admin_client(s.redis_url, s.redis_cluster, socket_timeout=2, socket_connect_timeout=2)
        self.name = name or worker_id()
        self._next = float("-inf")

    def due(self) -> bool:
        """Whether a check is due (and, if so, the next one is a second away)."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + CONTROL_S
        return True

    def _poll(self) -> str | None:
        self.client.hset(WORKERS_KEY, self.name, repr(time.time()))
        token = self.client.get(HOLD_KEY)
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
        await asyncio.to_thread(self.client.hset, ACKS_KEY, self.name, ack_value(token, clock))

    async def still_held(self, token: str) -> bool | None:
        """Whether the hold ``token`` still stands (registering this worker as live); ``None`` when Redis
        did not answer."""
        try:
            return await asyncio.to_thread(self._poll) == token
        except Exception as exc:
            log.warning("hold check failed, still holding: %s", exc)
            return None
