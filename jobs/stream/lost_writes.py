"""Noticing that Redis lost writes the stream worker made: the speed view then undercounts, silently.

Redis restarted without persistence or from an older snapshot, or a failover to a replica that had not
received the last writes, takes the speed tiles back in time while the worker's Kafka offsets stay
committed: the events in between are never counted again, and nothing else notices (the heartbeat is
simply rewritten). So each worker process keeps a *witness* key of its own
(:func:`fstore.redis.layout.witness_key`), rewritten with a new sequence number at every heartbeat: when
it does not read back what this process wrote last, Redis lost writes. The worker then logs CRITICAL, sets
``fstore_stream_redis_lost_writes`` (alert ``FstoreRedisLostWrites``) and writes
:data:`~fstore.redis.layout.LOST_WRITES_KEY`, which makes GET /health degraded until ``fstore repair``
(docs/runbook.md, "Redis lost its data").

A write whose reply was lost (timeout) leaves the sequence unknown: the next check starts a new chain
instead of raising a false alarm. A witness idle longer than most of its TTL may have expired: not an alarm.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

from fstore.redis.layout import LOST_WRITES_KEY, LOST_WRITES_TTL_S, witness_key

WITNESS_TTL_S = 7 * 86_400

MESSAGE = (
    "Redis lost writes the stream worker had made (restarted without persistence or from an older snapshot, "
    "or failed over to a replica that lagged): speed values may be undercounted until `fstore repair` "
    "(docs/runbook.md, 'Redis lost its data')"
)


class WriteWitness:
    """One worker process's witness chain; ``lost`` latches once a loss is seen."""

    def __init__(self, worker: str | None = None, clock: Any = time.monotonic) -> None:
        self.key = witness_key(worker or uuid.uuid4().hex)
        self.lost = False
        self._clock = clock
        self._seq = 0
        self._last: str | None = None  # what this process wrote last, None when unknown
        self._written_at = float("-inf")

    async def check(self, kv: Any, now_us: int) -> bool:
        """Read the witness back, then write the next one; ``True`` the first time writes were found lost.

        Raises whatever the client raises (the caller treats Redis errors as it does for the heartbeat);
        the chain then restarts.
        """
        raw = await kv.get(self.key)  # a failure here changes nothing: the next check reads again
        found = raw.decode() if isinstance(raw, bytes) else raw
        expired = found is None and self._clock() - self._written_at > 0.9 * WITNESS_TTL_S
        first = self._last is not None and found != self._last and not expired and not self.lost
        if first:
            body = json.dumps({"detected_at": now_us, "message": MESSAGE, "witness": self.key})
            await kv.set(LOST_WRITES_KEY, body, ex=LOST_WRITES_TTL_S)
            self.lost = True
        self._last = None  # a write whose reply is lost leaves the witness unknown: the next check starts anew
        self._seq += 1
        value = str(self._seq)
        await kv.set(self.key, value, ex=WITNESS_TTL_S)
        self._last, self._written_at = value, self._clock()
        return first
