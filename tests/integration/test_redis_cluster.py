"""fstore on a real Redis Cluster (docs/operations.md, "Redis Cluster"; issue 15 Build 2).

1. The whole lambda path on a 3-primary cluster: the stream worker (a subprocess, ``FSTORE_REDIS_CLUSTER=1``)
   writes speed tiles, ``fstore batch`` loads and publishes the batch view, the worker runs again after the
   cutover; the API (``POST``/``GET /features``) and Feast's ``get_online_features`` (sync and async, the
   store's ``redis_cluster: true``) read it and equal the brute force of docs/design.md §3. Every primary
   holds part of both views, so the reads really span the nodes.
2. The batch view's housekeeping walks every primary: an abandoned version's keys (all slots) are removed,
   and the pointer's compare-and-set keeps a later cutover.
3. Failover: a 3-primary + 3-replica cluster; during continuous API reads one primary is killed (SIGKILL);
   every answer is either exact or a 503, never a wrong value, and answers are exact again within seconds
   of its replica taking over.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from feast import FeatureStore

from fstore.core.aggregates import isclose
from fstore.core.timeutil import DAY, HOUR, SECOND, floor_to, to_date
from fstore.devsvc.cluster import RedisCluster
from fstore.devsvc.services import Broker
from fstore.feast.online_store import FstoreOnlineStore
from fstore.online.reader import EntityRead, SyncOnlineReader
from fstore.plan_source import current_plan
from fstore.redis.cluster import Addr, ClusterPool, SyncClusterPool, slot_of
from fstore.redis.connect import sync_client
from fstore.redis.layout import POINTER_KEY, BatchPointer, batch_key, entity_tag
from jobs.batch import batch_view
from services.online_api.app import create_app
from services.online_api.settings import ApiSettings
from tests.support import bruteforce
from tests.support.e2e import PRODUCTS, check_view, event, phase1_events, publish
from tests.support.feast import applied_repo
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY, FeatureView
from tests.support.online import AS_OF, C, load, make_events
from tests.support.paths import message, run_batch
from tests.support.redis_faults import lost_reply_connection
from tests.support.stream import WorkerProcess

pytestmark = pytest.mark.integration


def flush(cluster: RedisCluster) -> None:
    for port in cluster.primary_ports():
        node = redis.Redis(port=port)
        node.flushall()
        node.close()


def keys_per_primary(cluster: RedisCluster, pattern: str) -> list[int]:
    out = []
    for port in cluster.primary_ports():
        node = redis.Redis(port=port)
        out.append(sum(1 for _ in node.scan_iter(match=pattern, count=1000)))
        node.close()
    return out


def feast_equals_brute_force(
    fs: FeatureStore, view: FeatureView, entities: list[str], events: list[Event], as_of: int
) -> None:
    refs = [f"{view.name}:{n}" for n in view.feature_names]
    rows = [{view.entity.join_key: e} for e in entities]
    out = fs.get_online_features(features=refs, entity_rows=rows, full_feature_names=True).to_dict()
    out_async = asyncio.run(fs.get_online_features_async(features=refs, entity_rows=rows, full_feature_names=True))
    assert out_async.to_dict() == out
    for i, e in enumerate(entities):
        for name, want in bruteforce.values(view, events, e, as_of).items():
            got = out[f"{view.name}__{name}"][i]
            assert isclose(got, want) and (got is None) == (want is None), (view.name, e, name, got, want)


def test_stream_batch_api_and_feast_on_a_cluster_equal_brute_force(
    kafka_broker: Broker, redis_cluster: RedisCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    flush(redis_cluster)
    url = redis_cluster.url
    now = time.time_ns() // 1000
    if now - floor_to(now, DAY) < 10 * SECOND:  # keep a few seconds of "today" for the speed side
        time.sleep(10)
        now = time.time_ns() // 1000
    c = floor_to(now, DAY)
    rng = random.Random(15)
    first = phase1_events(rng, c, now)
    msgs = [message(e) for e in first]
    msgs += [msgs[i] for i in rng.sample(range(len(msgs)), len(msgs) // 30)]  # identical re-sent copies

    w = WorkerProcess(tmp_path, kafka_broker, url, FSTORE_REDIS_CLUSTER="1", FSTORE_STREAM_RAW_MAX_AGE_S="1")
    try:
        w.start()
        publish(kafka_broker, w.topic, msgs)
        w.wait_done(len(msgs), timeout=180)
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

        run_batch((to_date(c) - timedelta(days=1)).isoformat(), tmp_path / "data", url, FSTORE_REDIS_CLUSTER="1")
        client = redis.RedisCluster.from_url(url)
        pointer = BatchPointer.loads(client.get(POINTER_KEY))
        client.close()
        assert pointer is not None and pointer.cutover == c

        now2 = time.time_ns() // 1000
        more = [
            event(rng, i, f"{rng.choice('sm')}{rng.randrange(30)}", c + rng.randrange(0, now2 - c + 1), "f")
            for i in range(300)
        ]
        late = [event(rng, i, f"m{rng.randrange(30)}", c - rng.randrange(1, HOUR), "late") for i in range(100)]
        msgs2 = [message(e) for e in more + late]
        w.start()
        publish(kafka_broker, w.topic, msgs2)
        w.wait_done(len(msgs) + len(msgs2), timeout=180)
        w.stop()
        assert w.proc is not None and w.proc.returncode == 0, w.log_tail()
    finally:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)

    # Both views are spread over every primary: the reads below span the nodes.
    assert all(n > 0 for n in keys_per_primary(redis_cluster, f"fs:*:b:{pointer.version}"))
    assert all(n > 0 for n in keys_per_primary(redis_cluster, "fs:*:s:*"))

    expected = [e for e in first if e.event_time < c] + [e for e in first + more if e.event_time >= c]
    as_of = time.time_ns() // 1000
    users = [f"{k}{u}" for k in "bsm" for u in range(30)]
    settings = ApiSettings(redis_url=url, redis_cluster=True)
    with TestClient(create_app(settings, clock=lambda: as_of)) as api:
        health = api.get("/health").json()  # the pointer and the worker's heartbeat, read through the cluster
        assert health["status"] == "ok" and health["batch_version"] == pointer.version, health
        assert health["detail"]["speed_layer"]["last_commit"] is not None, health
        n = check_view(api, USER_ACTIVITY, "user_id", users, expected, c)
        n += check_view(api, PRODUCT_ENGAGEMENT, "product_id", PRODUCTS, expected, c)
    assert n > 1000

    monkeypatch.setenv("FSTORE_REDIS_URL", url)
    fs = FeatureStore(repo_path=str(applied_repo(tmp_path / "feast", url, tmp_path / "data", redis_cluster=True)))
    online = fs._get_provider().online_store
    assert isinstance(online, FstoreOnlineStore)
    online.clock = lambda: as_of
    feast_equals_brute_force(fs, USER_ACTIVITY, users[::3], expected, as_of)
    feast_equals_brute_force(fs, PRODUCT_ENGAGEMENT, PRODUCTS, expected, as_of)

    # Not vacuous: counting the late events (before C, not yet batched) would change values.
    assert any(
        bruteforce.values(USER_ACTIVITY, expected + late, f"m{u}", as_of)
        != bruteforce.values(USER_ACTIVITY, expected, f"m{u}", as_of)
        for u in range(30)
    )


def test_batch_view_housekeeping_walks_every_primary(redis_cluster: RedisCluster) -> None:
    flush(redis_cluster)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        # A run killed while loading v-dead: its keys are on every primary, its lease has lapsed.
        for i in range(60):
            client.hset(batch_key("user_activity", f"u{i}", "v-dead"), "f", "1")
        client.sadd(batch_view.LOADING_KEY, "v-dead")
        assert all(n > 0 for n in keys_per_primary(redis_cluster, "fs:*:b:v-dead"))
        assert batch_view.remove_abandoned(client) == ["v-dead"]
        assert keys_per_primary(redis_cluster, "fs:*:b:v-dead") == [0, 0, 0]

        assert batch_view.publish(client, BatchPointer("v2", C), 3600, 60).published
        older = batch_view.publish(client, BatchPointer("v1", C - DAY), 3600, 60)
        assert not older.published and older.previous == BatchPointer("v2", C)
        assert batch_view.current(client) == BatchPointer("v2", C)
        assert batch_view.publish(client, BatchPointer("v1", C - DAY), 3600, 60, allow_older=True).published
        assert batch_view.current(client) == BatchPointer("v1", C - DAY)
    finally:
        client.close()


def test_publish_guards_hold_on_a_cluster(redis_cluster: RedisCluster) -> None:
    """The swap, the lease and the deletion verdict are scripts over keys of the pointer's slot; the keys of
    a version lie on every primary. A published version keeps its keys, a dropped one loses them on every
    primary, and a swap of a dropped version (its lease gone) is refused."""
    flush(redis_cluster)
    assert {slot_of(k) for k in (batch_view.LOADING_KEY, batch_view.lease_key("v"))} == {slot_of(POINTER_KEY)}
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        for version in ("v-pub", "v-drop"):
            for i in range(60):
                client.hset(batch_key("user_activity", f"u{i}", version), "f", "1")
                client.expire(batch_key("user_activity", f"u{i}", version), 3600)
        assert all(n > 0 for n in keys_per_primary(redis_cluster, "fs:*:b:v-drop"))
        published = batch_view.LoadingLease(client, "v-pub", 3600)
        dropped = batch_view.LoadingLease(client, "v-drop", 3600)
        assert batch_view.publish(client, BatchPointer("v-pub", C), 3600, 60, lease=published).published
        published.close(keep=True)
        dropped.close(keep=False)
        assert keys_per_primary(redis_cluster, "fs:*:b:v-drop") == [0, 0, 0]
        assert sum(keys_per_primary(redis_cluster, "fs:*:b:v-pub")) == 60
        with pytest.raises(batch_view.LeaseLost):
            batch_view.publish(client, BatchPointer("v-drop", C + DAY), 3600, 60, lease=dropped)
        assert batch_view.current(client) == BatchPointer("v-pub", C)
        assert not client.smembers(batch_view.LOADING_KEY)
    finally:
        client.close()


def test_a_swap_retried_by_redis_cluster_after_a_lost_reply_retires_the_old_view_once(
    redis_cluster: RedisCluster,
) -> None:
    """``RedisCluster`` retries a command whose connection failed on its own; the swap it sends twice must
    still name the replaced version, whose keys on every primary alone get the grace TTL."""
    flush(redis_cluster)
    client = redis.RedisCluster.from_url(redis_cluster.url)
    connection, sent = lost_reply_connection("EVAL")
    lossy = redis.RedisCluster.from_url(redis_cluster.url, connection_class=connection)
    try:
        for version in ("v-old", "v-new"):
            for i in range(60):
                client.hset(batch_key("user_activity", f"u{i}", version), "f", "1")
                client.expire(batch_key("user_activity", f"u{i}", version), 3600)
        assert batch_view.publish(client, BatchPointer("v-old", C - DAY), 3600, 60).published
        result = batch_view.publish(lossy, BatchPointer("v-new", C), 3600, 60)
        assert sent[0] == 2  # applied with its reply lost, then sent again by RedisCluster
        assert result.published and result.previous == BatchPointer("v-old", C - DAY) and result.retired_keys == 60
        assert batch_view.current(client) == BatchPointer("v-new", C)
        for i in range(60):
            assert 0 < client.ttl(batch_key("user_activity", f"u{i}", "v-old")) <= 60
            assert client.ttl(batch_key("user_activity", f"u{i}", "v-new")) > 60
    finally:
        lossy.close()
        client.close()


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster]:
    """3 primaries + 3 replicas, failing a silent primary over after 1 s."""
    with RedisCluster(tmp_path / "cluster", primaries=3, replicas=1, node_timeout_ms=1000) as cluster:
        yield cluster


def wait_replicated(cluster: RedisCluster, timeout: float = 10) -> None:
    """Until every replica holds as many keys as its primary (the failover must not lose acknowledged data)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sizes = {p: redis.Redis(port=p).dbsize() for p in cluster.ports}
        primaries = cluster.primary_ports()
        if sum(sizes[p] for p in cluster.ports if p not in primaries) == sum(sizes[p] for p in primaries):
            return
        time.sleep(0.1)
    raise AssertionError("replicas did not catch up")


def test_failover_of_a_primary_answers_exact_or_503(cluster_with_replicas: RedisCluster) -> None:
    cluster = cluster_with_replicas
    base = make_events(15, 4000)
    events = [e._replace(user_id=f"u{i % 40}", product_id=f"p{i % 37}") for i, e in enumerate(base)]
    client = redis.RedisCluster.from_url(cluster.url)
    load(client, events, "v1", C)
    client.close()
    wait_replicated(cluster)
    users, products = [f"u{i}" for i in range(40)], [f"p{i}" for i in range(37)]
    want = {("user_activity", u): bruteforce.values(USER_ACTIVITY, events, u, AS_OF) for u in users}
    want |= {("product_engagement", p): bruteforce.values(PRODUCT_ENGAGEMENT, events, p, AS_OF) for p in products}
    body: dict[str, Any] = {
        "entities": [{"user_id": u, "product_id": p} for u, p in zip(users, products + products, strict=False)],
        "features": ["user_activity", "product_engagement"],
    }
    victim_slot = slot_of(entity_tag("user_activity", "u0"))

    def exact(rows: list[dict[str, object]]) -> None:
        for row in rows:
            for view, key in (("user_activity", "user_id"), ("product_engagement", "product_id")):
                entity = row["entity"][key]  # type: ignore[index]
                for name, w in want[(view, entity)].items():
                    got = row["values"][f"{view}:{name}"]  # type: ignore[index]
                    assert isclose(got, w) and (got is None) == (w is None), (view, entity, name, got, w)

    settings = ApiSettings(redis_url=cluster.url, redis_cluster=True, redis_timeout_ms=300)
    statuses: list[int] = []
    with TestClient(create_app(settings, clock=lambda: AS_OF)) as api:
        r = api.post("/features", json=body)
        assert r.status_code == 200, r.text
        exact(r.json()["rows"])
        owner = slot_owner(cluster, victim_slot)  # the primary of u0's slot: every request needs it
        node = cluster.node(owner)
        assert node.pid is not None
        os.kill(node.pid, signal.SIGKILL)
        killed = time.monotonic()
        recovered = None
        while time.monotonic() - killed < 30:
            r = api.post("/features", json=body)
            statuses.append(r.status_code)
            assert r.status_code in (200, 503), r.text
            if r.status_code == 200:
                exact(r.json()["rows"])  # never a wrong value
                if recovered is None:
                    recovered = time.monotonic() - killed
                elif time.monotonic() - killed > recovered + 1:
                    break
            else:
                assert "unreachable" in r.json()["detail"]
                time.sleep(0.02)
        node.stop()
    print(f"failover: {statuses.count(503)} answers 503, {statuses.count(200)} exact; exact again after {recovered} s")
    assert 503 in statuses, statuses[:20]  # the outage was seen ...
    assert recovered is not None and recovered < 20, statuses  # ... and ended once the replica took over
    assert owner not in cluster.primary_ports()
    # The blocking reader (Feast's online_read path) finds the new primary too.
    pool = SyncClusterPool.from_url(cluster.url, socket_timeout=1, socket_connect_timeout=1)
    try:
        served = current_plan().view(USER_ACTIVITY.name)
        snap = SyncOnlineReader(pool, lambda: AS_OF).read([EntityRead(served, u, served.feature_names) for u in users])
    finally:
        pool.close()
    for u, res in zip(users, snap.results, strict=True):
        assert all(isclose(res.values[n], w) for n, w in want[("user_activity", u)].items())


def slot_owner(cluster: RedisCluster, slot: int) -> int:
    """Port of the primary that serves ``slot`` now."""
    node = redis.Redis(port=cluster.primary_ports()[0])
    try:
        for lo, hi, primary, *_ in node.execute_command("CLUSTER", "SLOTS"):  # type: ignore[no-untyped-call]
            if lo <= slot <= hi:
                return int(primary[1])
    finally:
        node.close()
    raise AssertionError(f"slot {slot} has no owner")


def test_feast_blocking_reader_fails_within_its_timeout_when_a_primary_is_down(tmp_path: Path) -> None:
    """Feast's ``online_read`` (the blocking reader on ``sync_client``, ``timeout_ms: 300``) answers exact values,
    then, with the primary of an entity's slot killed, raises a ConnectionError within about its timeout — not
    after redis-py's default retries (10, exponential backoff: ≈ 4 s per call, probe-scale)."""
    events = [e._replace(user_id=f"u{i % 40}") for i, e in enumerate(make_events(16, 2000))]
    users = [f"u{i}" for i in range(40)]
    want = {u: bruteforce.values(USER_ACTIVITY, events, u, AS_OF) for u in users}
    served = current_plan().view(USER_ACTIVITY.name)
    reads = [EntityRead(served, u, served.feature_names) for u in users]
    with RedisCluster(tmp_path / "cluster", primaries=3) as cluster:
        client = redis.RedisCluster.from_url(cluster.url)
        load(client, events, "v1", C)
        client.close()
        pool = sync_client(cluster.url, True, timeout=0.3, connect_timeout=0.3)  # as FstoreOnlineStore builds it
        try:
            snap = SyncOnlineReader(pool, lambda: AS_OF).read(reads)
            for u, res in zip(users, snap.results, strict=True):
                assert all(isclose(res.values[n], w) for n, w in want[u].items()), u
            node = cluster.node(slot_owner(cluster, slot_of(entity_tag("user_activity", "u0"))))
            assert node.pid is not None
            os.kill(node.pid, signal.SIGKILL)
            deadline = time.monotonic() + 5
            while node.is_running() and time.monotonic() < deadline:
                time.sleep(0.02)
            started = time.monotonic()
            with pytest.raises(redis.ConnectionError):
                SyncOnlineReader(pool, lambda: AS_OF).read(reads)
            took = time.monotonic() - started
        finally:
            pool.close()
    assert took < 1.5, f"the blocking reader took {took:.2f} s to report a dead primary (timeout 0.3 s)"


def test_several_seeds_the_first_down_every_client_reads_the_map_from_the_next(redis_cluster: RedisCluster) -> None:
    """FSTORE_REDIS_URL may list several cluster nodes: a process that starts while the first is down reads
    the slot map from the next (probe-scale: with one seed down, a new API answered 503 to everything and a
    new worker exited 1)."""
    from fstore.devsvc.process import free_port
    from fstore.redis.connect import admin_client, async_client

    live = redis_cluster.nodes[1]
    url = f"redis://127.0.0.1:{free_port()},127.0.0.1:{live.port}"  # nothing listens on the first
    admin = admin_client(url, True, socket_timeout=2, socket_connect_timeout=1)
    admin.set("fs:seeds:probe", b"1", ex=60)  # routed to the slot's primary, whichever node it is
    assert sync_client(url, True, timeout=1, connect_timeout=1).get("fs:seeds:probe") == b"1"

    async def read() -> Any:
        client = async_client(url, True, timeout=1, connect_timeout=1)
        try:
            return await client.get("fs:seeds:probe")
        finally:
            await client.aclose()

    assert asyncio.run(read()) == b"1"
    admin.close()


class _StaleAfterRefresh(ClusterPool):
    """A pool whose slot map is marked stale right after each refresh, as a concurrent request whose node
    failed does (``_Router.absorb``) while other requests wait for the refresh they share."""

    async def refresh(self) -> list[Addr]:
        owners = await super().refresh()
        self._router.owners = None
        return owners


class _SyncStaleAfterRefresh(SyncClusterPool):
    """:class:`_StaleAfterRefresh` for the blocking pool (Feast's reader, shared by a server's threads)."""

    def refresh(self) -> list[Addr]:
        owners = super().refresh()
        self._router.owners = None
        return owners


def test_requests_route_on_the_map_they_refreshed_when_a_concurrent_failure_marks_it_stale(
    redis_cluster: RedisCluster,
) -> None:
    """probe-scale2: during a failover under concurrent reads, a request that waited for a shared slot-map
    refresh found the map reset by another request's failure and died on an assertion (the API answered 500).
    Each request must route on the map its refresh returned (a stale one only costs a MOVED or a 503)."""
    keys = {f"probe-scale2:{{k{i}}}": f"v{i}".encode() for i in range(30)}
    client = redis.RedisCluster.from_url(redis_cluster.url)
    try:
        for k, v in keys.items():
            client.set(k, v, ex=60)
        assert len({slot_owner(redis_cluster, slot_of(k)) for k in keys}) == 3  # every primary is read
    finally:
        client.close()

    async def read_all() -> list[Any]:
        pool = _StaleAfterRefresh.from_url(redis_cluster.url, timeout=2, connect_timeout=2)
        try:
            got = await asyncio.gather(*(pool.get(k) for k in keys))
            assert await pool.ping()
            return got
        finally:
            pool.close()

    assert asyncio.run(read_all()) == list(keys.values())
    sync_pool = _SyncStaleAfterRefresh.from_url(redis_cluster.url, socket_timeout=2, socket_connect_timeout=2)
    try:
        assert [sync_pool.get(k) for k in keys] == list(keys.values())
    finally:
        sync_pool.close()
