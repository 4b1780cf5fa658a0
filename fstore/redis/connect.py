"""The Redis clients of every layer, standalone or Redis Cluster (``FSTORE_REDIS_CLUSTER``), built in one place.

* Hot paths (the online reader, the stream worker's tile writer): a redis-py client on the standalone
  server, whose settings :class:`fstore.redis.resp.RespPool` mirrors, or a
  :class:`fstore.redis.cluster.ClusterPool` / :class:`fstore.redis.cluster.SyncClusterPool` on a cluster.
  Both answer ``get``, ``set``, ``ping`` and ``script_load`` the way the callers use them.
* Bulk and administrative work (the batch-view loader, the pointer swap, ``fstore repair``): a redis-py
  ``Redis`` or ``RedisCluster`` (whose pipelines are grouped per node and whose ``scan_iter`` walks every
  primary).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.cluster import ClusterNode

from fstore.redis.cluster import ClusterPool, SyncClusterPool, seeds_of

AsyncClient = aioredis.Redis | ClusterPool
SyncClient = redis.Redis | SyncClusterPool
AdminClient = redis.Redis | redis.RedisCluster


def async_client(url: str, cluster: bool, *, timeout: float | None, connect_timeout: float | None) -> AsyncClient:
    """The async client of a hot path (no retries: a failure surfaces at once, as a 503 or a batch retry)."""
    if cluster:
        return ClusterPool.from_url(url, timeout=timeout, connect_timeout=connect_timeout)
    return aioredis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=connect_timeout,
        retry_on_timeout=False,
        health_check_interval=0,
    )


def sync_client(url: str, cluster: bool, *, timeout: float | None, connect_timeout: float | None) -> SyncClient:
    """The blocking client of a hot path (Feast's ``online_read``)."""
    kw: dict[str, Any] = {"socket_timeout": timeout, "socket_connect_timeout": connect_timeout}
    if cluster:
        return SyncClusterPool.from_url(url, **kw)
    return redis.Redis.from_url(url, retry_on_timeout=False, **kw)


def admin_client(url: str, cluster: bool, **kwargs: Any) -> AdminClient:
    """A redis-py client for bulk work; on a cluster a ``RedisCluster`` (it reads the slot map at once, so
    an unreachable cluster fails here)."""
    if cluster:
        seeds, auth = seeds_of(url)
        nodes = [ClusterNode(host, port) for host, port in seeds]  # type: ignore[no-untyped-call]
        return redis.RedisCluster(
            startup_nodes=nodes, username=auth.get("username"), password=auth.get("password"), **kwargs
        )
    return redis.Redis.from_url(url, **kwargs)
