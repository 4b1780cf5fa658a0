"""The batch view's loading registry on a real Redis, without Spark (docs/design.md §4 and §7).

A run registers the version it loads (:class:`jobs.batch.batch_view.LoadingLease`) so that the next run can
remove the keys of a run killed while loading. Two promises around it: every Redis key carries a TTL, the
registry too, even after a kill -9 with no run following; and a failed run never deletes the version the
pointer serves (a pointer swap that Redis applied although its reply never arrived).
"""

from __future__ import annotations

import pytest
import redis

from fstore.core.timeutil import DAY
from fstore.redis.layout import POINTER_KEY, BatchPointer
from jobs.batch import batch_view
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
