"""Holding the stream workers while ``fstore backfill`` rewrites speed tiles (docs/design.md §3 "Evolution").

A backfill rebuilds new tile series from ``raw_events``; a worker writing the same tiles meanwhile would
race it. So the backfill **holds** the speed layer: it sets :data:`HOLD_KEY` to a token; each live worker
(:mod:`fstore.redis.workers`) notices between two batches, finishes what it took (tiles, raw sink
flushed, future events due moved), acknowledges the token in :data:`ACKS_KEY` with its processing clock
(``"<token> <clock µs>"``: every event it stored as a future field is stamped at or after that clock) and
waits, consuming nothing, until the key is gone; then it reloads the applied plan and goes on. The hold
key has a TTL that the backfill keeps refreshing, so a backfill that dies releases the workers by itself
(after at most :data:`HOLD_TTL_S`). Kafka keeps what arrives meanwhile. A running ``fstore ingest`` is waited
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


def hold(client: AdminClient, token: str) -> None:
    """Set (or refresh) the hold; workers acknowledge it between batches."""
    client.set(HOLD_KEY, token, ex=HOLD_TTL_S)


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


def release(client: AdminClient) -> None:
    """End the hold: the workers reload the applied plan and go on."""
    client.delete(HOLD_KEY)  # one key per call: the two live in different slots on a cluster
    client.delete(ACKS_KEY)
