"""The batch view's loading registry on a real Redis, without Spark (docs/design.md §4 and §7).

A run registers the version it loads (:class:`jobs.batch.batch_view.LoadingLease`) so that the next run can
remove the keys of a run killed while loading. The promises around it: every Redis key carries a TTL, the
registry too, even after a kill -9 with no run following; a failed run never deletes the version the
pointer serves (a pointer swap that Redis applied although its reply never arrived); a swap retried after
a lost reply retires the replaced view once and never the new one; no cleanup deletes a version that a
concurrent run publishes meanwhile; and a run whose lease lapsed publishes nothing.

Faults are injected around real clients on a real Redis: a connection that loses a reply after Redis ran
the command, a client that lets another process act right after one reply, a client that blocks (a paused
process) while Redis and the other clients go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from fstore.core.timeutil import DAY
from fstore.devsvc.services import RedisServer
from fstore.redis.layout import POINTER_KEY, BatchPointer
from jobs.batch import batch_view
from tests.support.redis_faults import lost_reply_connection
from tests.support.redis_keys import keys_without_ttl

pytestmark = pytest.mark.integration

TTL_S = 3 * 86_400


def load_fake_view(client: redis.Redis, version: str, entities: int = 5) -> list[str]:
    keys = [f"fs:{{user_activity|u{i}}}:b:{version}" for i in range(entities)]
    for k in keys:
        client.hset(k, "3600:0:click", "1 1 1 1 0")
        client.expire(k, TTL_S)
    return keys


def test_a_run_killed_while_loading_leaves_no_key_without_ttl(redis_client: redis.Redis) -> None:
    lease = batch_view.LoadingLease(redis_client, "20261127-killed", TTL_S, lease_s=60)
    load_fake_view(redis_client, "20261127-killed")
    lease._stop.set()  # kill -9: the renewing thread and the process are gone, close() never runs
    lease._thread.join(5)
    assert redis_client.smembers(batch_view.LOADING_KEY) == {b"20261127-killed"}
    assert 0 < redis_client.ttl(batch_view.LOADING_KEY) <= TTL_S
    assert keys_without_ttl(redis_client) == []


def test_a_failed_run_never_deletes_the_version_the_pointer_serves(redis_client: redis.Redis) -> None:
    cutover = 20_000 * DAY
    # The swap reached Redis but the run saw an error (its reply lost): the run fails and closes its lease
    # without keeping the version, which the pointer nevertheless names.
    served = load_fake_view(redis_client, "20261127-swapped")
    lease = batch_view.LoadingLease(redis_client, "20261127-swapped", TTL_S)
    assert batch_view.publish(redis_client, BatchPointer("20261127-swapped", cutover), TTL_S, 3600).published
    lease.close(keep=False)
    assert all(redis_client.exists(k) for k in served)
    assert BatchPointer.loads(redis_client.get(POINTER_KEY)) == BatchPointer("20261127-swapped", cutover)
    assert not redis_client.exists(batch_view.LOADING_KEY, batch_view.lease_key("20261127-swapped"))

    # A run that failed before its swap still drops its half-loaded version.
    dropped = load_fake_view(redis_client, "20261127-failed")
    lease = batch_view.LoadingLease(redis_client, "20261127-failed", TTL_S)
    lease.close(keep=False)
    assert not any(redis_client.exists(k) for k in dropped)
    assert all(redis_client.exists(k) for k in served)
    assert keys_without_ttl(redis_client) == []


# --- Faults around the publish: lost replies, concurrent runs, paused runs ---------------------------------


def lossy_client(
    url: str, lose: str, retries: int, meanwhile: Callable[[], object] = lambda: None
) -> tuple[redis.Redis, list[int]]:
    """A real client whose connection loses the reply of the first ``lose`` command after Redis ran it
    (:func:`tests.support.redis_faults.lost_reply_connection`). With ``retries`` > 0 redis-py's own retry
    sends the command again on a fresh connection (as ``RedisCluster`` and ``redis.Redis(host=...)`` do by
    default); with 0 the error reaches the caller (``Redis.from_url``'s default, that of
    :func:`fstore.redis.connect.admin_client`). Returns the client and the count of ``lose`` commands sent.
    """
    connection, sent = lost_reply_connection(lose, meanwhile)
    return redis.Redis.from_url(url, connection_class=connection, retry=Retry(NoBackoff(), retries)), sent


def publish_losing_reply(
    url: str, pointer: BatchPointer, lease: batch_view.LoadingLease, meanwhile: Callable[[], object]
) -> batch_view.PublishResult:
    """Publish ``pointer`` under ``lease`` through a client that loses the swap's first reply; ``meanwhile``
    runs between the applied swap and its retry. The swap script ran exactly twice."""
    client, sent = lossy_client(url, "EVAL", 0, meanwhile)
    try:
        result = batch_view.publish(client, pointer, TTL_S, 3600, lease=lease)
    finally:
        client.close()
    assert sent[0] == 2
    return result


@pytest.mark.parametrize("client_retries", [0, 3], ids=["publish-retries", "redis-py-retries"])
def test_a_retried_swap_whose_first_reply_was_lost_retires_the_old_view_once(
    redis_client: redis.Redis, redis_server: RedisServer, client_retries: int
) -> None:
    cutover = 20_000 * DAY
    old = load_fake_view(redis_client, "20261126-old")
    assert batch_view.publish(redis_client, BatchPointer("20261126-old", cutover - DAY), TTL_S, 3600).published
    new = load_fake_view(redis_client, "20261127-new")
    client, sent = lossy_client(redis_server.url, "EVAL", client_retries)
    try:
        result = batch_view.publish(client, BatchPointer("20261127-new", cutover), TTL_S, 3600)
    finally:
        client.close()
    assert sent[0] == 2  # the script did run twice: once applied with its reply lost, once retried
    assert result.published
    assert result.previous == BatchPointer("20261126-old", cutover - DAY)  # not the run's own version
    assert result.retired_keys == len(old)
    assert batch_view.current(redis_client) == BatchPointer("20261127-new", cutover)
    assert all(0 < redis_client.ttl(k) <= 3600 for k in old)  # the grace period, not the 3 days
    assert all(redis_client.ttl(k) > 3600 for k in new)  # the new view keeps its full TTL
    assert keys_without_ttl(redis_client) == []


def test_a_swap_replaced_by_another_run_before_its_retry_keeps_its_keys(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """Run A's swap is applied, its reply lost; run B publishes a later cutover before A retries. A's retry
    must not undo B's swap, nor let A's failure cleanup delete keys that readers of A's pointer still use."""
    cutover = 20_000 * DAY
    load_fake_view(redis_client, "20261126-old")
    assert batch_view.publish(redis_client, BatchPointer("20261126-old", cutover - 2 * DAY), TTL_S, 3600).published
    a_keys = load_fake_view(redis_client, "20261127-a")
    load_fake_view(redis_client, "20261128-b")
    lease = batch_view.LoadingLease(redis_client, "20261127-a", TTL_S)

    def b_publishes() -> None:
        b = batch_view.publish(redis_client, BatchPointer("20261128-b", cutover), TTL_S, 3600)
        assert b.published and b.previous == BatchPointer("20261127-a", cutover - DAY) and b.retired_keys == 5

    a = publish_losing_reply(redis_server.url, BatchPointer("20261127-a", cutover - DAY), lease, b_publishes)
    assert a.published and a.superseded_by == BatchPointer("20261128-b", cutover) and a.retired_keys == 0
    lease.close(keep=a.published)
    assert batch_view.current(redis_client) == BatchPointer("20261128-b", cutover)
    assert all(0 < redis_client.ttl(k) <= 3600 for k in a_keys)  # retired by B, readable for the grace period
    assert not redis_client.smembers(batch_view.LOADING_KEY)


def test_a_swap_replaced_by_two_runs_before_its_retry_counts_as_published_and_keeps_its_keys(
    redis_client: redis.Redis, redis_server: RedisServer
) -> None:
    """Run A's swap is applied (which drops its lease), its reply lost; runs B then C publish before A
    retries, so the pointer no longer records A at all. A's retry finds no lease: it must count as published
    and superseded, not as a run that lost its lease — whose cleanup would delete the keys B's retirement
    left readable for the grace period."""
    cutover = 20_000 * DAY
    load_fake_view(redis_client, "20261126-old")
    assert batch_view.publish(redis_client, BatchPointer("20261126-old", cutover - 3 * DAY), TTL_S, 3600).published
    a_keys = load_fake_view(redis_client, "20261127-a")
    for v in ("20261128-b", "20261129-c"):
        load_fake_view(redis_client, v)
    lease = batch_view.LoadingLease(redis_client, "20261127-a", TTL_S)

    def b_then_c_publish() -> None:
        for v, c in (("20261128-b", cutover - DAY), ("20261129-c", cutover)):
            assert batch_view.publish(redis_client, BatchPointer(v, c), TTL_S, 3600).published

    a = publish_losing_reply(redis_server.url, BatchPointer("20261127-a", cutover - 2 * DAY), lease, b_then_c_publish)
    assert a.published and a.superseded_by == BatchPointer("20261129-c", cutover) and a.retired_keys == 0
    lease.close(keep=a.published)
    assert batch_view.current(redis_client) == BatchPointer("20261129-c", cutover)
    assert all(0 < redis_client.ttl(k) <= 3600 for k in a_keys)  # retired by B: kept for the grace period
    assert not redis_client.smembers(batch_view.LOADING_KEY)


def test_a_publish_without_a_lease_is_never_taken_for_a_superseded_retry(redis_client: redis.Redis) -> None:
    """``fstore repair`` publishes a version again without a lease. When the serving pointer records that
    version as the one it replaced (an ``--allow-older`` run with an earlier cutover replaced it), the swap
    is a new publish judged by cutover, not a retry of an old one: the later cutover serves again."""
    cutover = 20_000 * DAY
    load_fake_view(redis_client, "20261127-a")
    assert batch_view.publish(redis_client, BatchPointer("20261127-a", cutover), TTL_S, 3600).published
    load_fake_view(redis_client, "20261126-older")
    older = BatchPointer("20261126-older", cutover - DAY)
    assert batch_view.publish(redis_client, older, TTL_S, 3600, allow_older=True).published
    again = batch_view.publish(redis_client, BatchPointer("20261127-a", cutover), TTL_S, 3600)
    assert again.published and again.superseded_by is None and again.previous == older
    assert batch_view.current(redis_client) == BatchPointer("20261127-a", cutover)


def test_a_swap_that_arrives_after_the_failure_cleanup_is_refused(redis_client: redis.Redis) -> None:
    """A run gave up on its swap (no reply) and dropped its version; the swap, delayed on the wire, then
    reaches Redis. It must not make the deleted version serve."""
    cutover = 20_000 * DAY
    load_fake_view(redis_client, "20261126-serving")
    assert batch_view.publish(redis_client, BatchPointer("20261126-serving", cutover - DAY), TTL_S, 3600).published
    dropped = load_fake_view(redis_client, "20261127-late")
    lease = batch_view.LoadingLease(redis_client, "20261127-late", TTL_S)
    lease.close(keep=False)
    assert not any(redis_client.exists(k) for k in dropped)
    with pytest.raises(batch_view.LeaseLost):
        batch_view.publish(redis_client, BatchPointer("20261127-late", cutover), TTL_S, 3600, lease=lease)
    assert batch_view.current(redis_client) == BatchPointer("20261126-serving", cutover - DAY)


class AfterReply:
    """A real client that runs ``action`` right after the reply of the first ``command`` call (an
    interleaving of another process at exactly that point)."""

    def __init__(self, client: redis.Redis, command: str, action: Callable[[], object]) -> None:
        self._client, self._command, self._action = client, command, action

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if name != self._command:
            return attr

        def call(*args: object, **kwargs: object) -> object:
            reply = attr(*args, **kwargs)
            action, self._action = self._action, lambda: None
            action()
            return reply

        return call


def test_removing_abandoned_versions_never_deletes_a_version_published_meanwhile(
    redis_client: redis.Redis,
) -> None:
    """Run B cleans up while run A publishes: A's swap and lease release land between B's read of the
    loading registry and B's check of A's lease. B must not delete the keys A now serves."""
    cutover = 20_000 * DAY
    keys = load_fake_view(redis_client, "20261127-a")
    lease = batch_view.LoadingLease(redis_client, "20261127-a", TTL_S)

    def a_publishes() -> None:
        assert batch_view.publish(redis_client, BatchPointer("20261127-a", cutover), TTL_S, 3600).published
        lease.close(keep=True)

    b = AfterReply(redis_client, "smembers", a_publishes)
    assert batch_view.remove_abandoned(b) == []  # type: ignore[arg-type]
    assert batch_view.current(redis_client) == BatchPointer("20261127-a", cutover)
    assert all(redis_client.exists(k) for k in keys)
    assert not redis_client.smembers(batch_view.LOADING_KEY)


class Gate:
    """A real client whose calls block while the gate is closed: the process using it is paused (a long
    GC, a stopped VM), Redis and the other clients go on."""

    def __init__(self, client: redis.Redis) -> None:
        self._client, self._open = client, threading.Event()
        self._open.set()

    def close(self) -> None:
        self._open.clear()

    def open(self) -> None:
        self._open.set()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._client, name)
        if not callable(attr):
            return attr

        def call(*args: object, **kwargs: object) -> object:
            self._open.wait()
            return attr(*args, **kwargs)

        return call


def test_a_run_whose_lease_lapsed_fails_and_publishes_nothing(redis_client: redis.Redis) -> None:
    """Run A pauses longer than its lease; run B removes A's keys as abandoned; A wakes up. A's renewal
    must not bring the lease back, and A's swap must be refused: its view has no keys any more."""
    cutover = 20_000 * DAY
    load_fake_view(redis_client, "20261126-serving")
    assert batch_view.publish(redis_client, BatchPointer("20261126-serving", cutover - DAY), TTL_S, 3600).published
    keys = load_fake_view(redis_client, "20261127-paused")
    gate = Gate(redis_client)
    lease = batch_view.LoadingLease(gate, "20261127-paused", TTL_S, lease_s=2)  # type: ignore[arg-type]
    gate.close()  # A pauses; its renewals wait
    deadline = time.monotonic() + 5
    while redis_client.exists(batch_view.lease_key("20261127-paused")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert batch_view.remove_abandoned(redis_client) == ["20261127-paused"]  # run B
    assert not any(redis_client.exists(k) for k in keys)
    gate.open()  # A resumes
    time.sleep(1.5)  # at least two renewal periods
    assert not redis_client.exists(batch_view.lease_key("20261127-paused"))  # renewal did not resurrect it
    assert lease.lost.is_set()
    with pytest.raises(batch_view.LeaseLost, match="20261127-paused"):
        batch_view.publish(redis_client, BatchPointer("20261127-paused", cutover), TTL_S, 3600, lease=lease)
    assert batch_view.current(redis_client) == BatchPointer("20261126-serving", cutover - DAY)
    lease.close(keep=False)
    assert keys_without_ttl(redis_client) == []
