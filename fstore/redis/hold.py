"""Holding the stream workers while ``fstore backfill`` rewrites speed tiles (docs/design.md §3 "Evolution").

A backfill rebuilds new tile series from ``raw_events``; a worker writing the same tiles meanwhile would
race it. So the backfill **holds** the speed layer: it sets :data:`HOLD_KEY` to a token; each live worker
(:mod:`fstore.redis.workers`) notices between two batches, finishes what it took (tiles, raw sink
flushed, future events due moved), acknowledges the token in :data:`ACKS_KEY` with its processing clock
(``"<token> <clock µs>"``: every event it stored as a future field is stamped at or after that clock) and
waits, consuming nothing, until the key is gone; then it reloads the applied plan and goes on. The hold
key has a TTL that the backfill keeps refreshing, so a backfill that dies releases the workers by itself
(after at most :data:`HOLD_TTL_S`). The key names one backfill at a time: a second backfill started meanwhile is
refused (:class:`HoldTaken`) and cannot refresh or release the first one's hold — two backfills sharing it
let the first one's release resume the workers while the second still rebuilt its view, and the events
the workers counted meanwhile were deleted with the old speed hashes (probe-evo3).
Kafka keeps what arrives meanwhile. A running ``fstore ingest`` is waited
for like a worker while its batch is in flight; at its next batch it removes its registration instead of
acknowledging (it keeps no future events to move later) and stops (:mod:`jobs.ingest_speed`).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fstore.redis.connect import AdminClient
from fstore.redis.layout import PREFIX
from fstore.redis.workers import as_text, live_workers

HOLD_KEY = f"{PREFIX}:stream:hold"
ACKS_KEY = f"{PREFIX}:stream:held"
HOLD_TTL_S = 120


#: Set the hold to ARGV[1] when it is free or already ARGV[1] (refresh); otherwise return the holder's token.
_TAKE = """
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
  return 1
end
return v
"""
#: Delete the hold only when ARGV[1] holds it.
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class HoldTaken(RuntimeError):
    """Another backfill holds the stream workers; the message says what to do."""


def hold(client: AdminClient, token: str) -> None:
    """Take (or refresh) the hold for ``token``; workers acknowledge it between batches.

    Raises:
        HoldTaken: another backfill's token holds it (nothing changed).
    """
    got = client.eval(_TAKE, 1, HOLD_KEY, token, HOLD_TTL_S)
    if got != 1:
        raise HoldTaken(
            f"another fstore backfill holds the stream workers (hold {as_text(got)}): backfills run one at a "
            f"time; run this one again once it has ended (a backfill that died frees it within {HOLD_TTL_S} s)"
        )


def ack_value(token: str, clock: int) -> str:
    """What a holding worker writes in :data:`ACKS_KEY`."""
    return f"{token} {clock}"


def ack(client: AdminClient, name: str, token: str, clock: int) -> None:
    """The worker ``name`` holds for ``token`` with its processing clock; the acknowledgements expire with
    the hold (a backfill that dies leaves no key behind, docs/design.md §7)."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(ACKS_KEY, name, ack_value(token, clock))
    pipe.expire(ACKS_KEY, HOLD_TTL_S)
    pipe.execute()


def wait_held(
    client: AdminClient, token: str, timeout: float, on_wait: Callable[[set[str]], None] | None = None
) -> dict[str, int]:
    """Wait until every live worker acknowledged ``token``; returns each holding worker's clock (µs).

    Raises:
        TimeoutError: naming the workers that did not acknowledge within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        hold(client, token)
        live = live_workers(client)
        acks: dict[str, int] = {}
        for k, v in client.hgetall(ACKS_KEY).items():
            got, _, clock = as_text(v).partition(" ")
            if got == token and clock.isdigit():
                acks[as_text(k)] = int(clock)
        missing = live - set(acks)
        if not missing:
            return {w: acks[w] for w in live}
        if time.monotonic() >= deadline:
            ingests = " (an ingest:<host>:<pid> is a running fstore ingest finishing a batch: wait for it)"
            raise TimeoutError(
                f"stream worker(s) {', '.join(sorted(missing))} did not hold within {timeout:.0f} s; the hold is "
                "released. Check the workers (GET /health, their logs) and run the backfill again"
                + (ingests if any(w.startswith("ingest:") for w in missing) else "")
            )
        if on_wait is not None:
            on_wait(missing)
        time.sleep(0.2)


def release(client: AdminClient, token: str) -> None:
    """End the hold of ``token`` (another backfill's hold is left alone): the workers reload the applied plan
    and go on."""
    if client.eval(_RELEASE, 1, HOLD_KEY, token):  # one key per call: the two live in different slots on a cluster
        client.delete(ACKS_KEY)
