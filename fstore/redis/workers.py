"""The stream workers' registration: which workers are live and which plan each one runs.

Once a second each stream worker writes ``"<epoch s> <plan fingerprint>"`` under its name in
:data:`WORKERS_KEY` (:func:`registration`). A worker is **live** when it registered within :data:`LIVE_S`
seconds; the fingerprint is that of the plan whose writes it has finished switching to — the batch it took
under an older plan is settled before it registers the new one. ``fstore backfill`` waits for the live
workers to hold (:mod:`fstore.redis.hold`); ``fstore apply`` waits for them to run the applied plan
(:func:`wait_following`) before it frees the Redis state of what the plan removed, so no worker writes a
freed key again. A worker that stopped registering (dead, or stuck longer than :data:`LIVE_S`) blocks
neither.

``fstore ingest`` registers the same way while it writes speed tiles (:mod:`jobs.ingest_speed`, under the name
``ingest:<host>:<pid>``): a backfill waits for its batch in flight, ``fstore apply`` for the plan it runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from fstore.redis.connect import AdminClient
from fstore.redis.layout import PREFIX

WORKERS_KEY = f"{PREFIX}:stream:workers"
#: A worker is live when it registered within this many seconds (workers register once a second).
LIVE_S = 10.0
#: The fingerprint of a worker that registered without one (an older fstore).
UNKNOWN = "unknown"
#: TTL of :data:`WORKERS_KEY`, renewed by every registration: like every key fstore writes it expires
#: (docs/design.md §7), once no worker has registered for this long (each one is dead long before).
WORKERS_TTL_S = 3_600


def as_text(v: bytes | str | None) -> str:
    """A Redis reply as text (``""`` for a missing value)."""
    return v.decode() if isinstance(v, bytes) else (v or "")


def registration(fingerprint: str, now: float | None = None) -> str:
    """What a worker running the plan ``fingerprint`` writes under its name in :data:`WORKERS_KEY`."""
    return f"{time.time() if now is None else now!r} {fingerprint}"


def register(client: AdminClient, name: str, fingerprint: str) -> None:
    """Register the worker ``name`` as live, running the plan ``fingerprint``; renews the key's TTL."""
    pipe = client.pipeline(transaction=False)
    pipe.hset(WORKERS_KEY, name, registration(fingerprint))
    pipe.expire(WORKERS_KEY, WORKERS_TTL_S)
    pipe.execute()


def deregister(client: AdminClient, name: str) -> None:
    """Remove the registration of ``name`` (it stopped writing): nobody waits for it any more."""
    client.hdel(WORKERS_KEY, name)


def parse_registration(value: bytes | str | None) -> tuple[float, str]:
    """``(registered at, fingerprint)`` of a registration; a bad one is ``(0.0, UNKNOWN)`` (never live)."""
    at, _, fp = as_text(value).strip().partition(" ")
    try:
        return float(at), fp.strip() or UNKNOWN
    except ValueError:
        return 0.0, UNKNOWN


def worker_plans(client: AdminClient, now: float | None = None) -> dict[str, str]:
    """The live workers (registered within :data:`LIVE_S` seconds) and the plan fingerprint each one runs."""
    t = time.time() if now is None else now
    out: dict[str, str] = {}
    for k, v in client.hgetall(WORKERS_KEY).items():
        at, fp = parse_registration(v)
        if t - at <= LIVE_S:
            out[as_text(k)] = fp
    return out


def live_workers(client: AdminClient, now: float | None = None) -> set[str]:
    """The workers that registered within :data:`LIVE_S` seconds."""
    return set(worker_plans(client, now))


def wait_following(
    client: AdminClient,
    fingerprint: str,
    timeout: float,
    on_wait: Callable[[dict[str, str]], None] | None = None,
    poll_s: float = 0.2,
) -> None:
    """Wait until every live worker runs the plan ``fingerprint``. ``on_wait`` gets the live workers that
    do not yet (name → the fingerprint they run) each round they are there.

    Raises:
        TimeoutError: naming the live workers that still run another plan after ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        behind = {w: fp for w, fp in worker_plans(client).items() if fp != fingerprint}
        if not behind:
            return
        if time.monotonic() >= deadline:
            names = ", ".join(f"{w} (plan {fp[:12]})" for w, fp in sorted(behind.items()))
            raise TimeoutError(f"stream worker(s) {names} did not follow plan {fingerprint[:12]} within {timeout:g} s")
        if on_wait is not None:
            on_wait(behind)
        time.sleep(poll_s)
