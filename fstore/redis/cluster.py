"""Pipelined round trips to a Redis Cluster: route each command by its hash slot, one pipeline per node.

The online reader and the stream worker send many commands per request, each touching one slot (every key
of one entity of one view shares the hash tag of :mod:`fstore.redis.layout`). :class:`ClusterPool`
(asyncio, on the per-node :class:`fstore.redis.resp.RespPool`) and :class:`SyncClusterPool` (blocking,
per-node redis-py clients) keep a slot map read with ``CLUSTER SLOTS`` from any known node, group a
request's commands by the primary that owns their slot, send one pipeline per node (concurrently in the
async pool) and put the replies back in request order.

Redirections and failures (docs/operations.md, "Redis Cluster"):

* ``MOVED`` (a slot moved, e.g. a replica was promoted): the slot map is re-read and the redirected
  commands are sent again to the new owner (a ``MOVED`` command was not executed, so this is safe for
  every command, the tile script included); ``ASK`` (a slot being migrated): ``ASKING`` + the command to
  the named node, without changing the map. At most :data:`MAX_REDIRECTS` rounds.
* A node that cannot be reached (refused, dropped, timed out) fails the commands sent to it with
  ``ConnectionError`` / ``TimeoutError`` and marks the slot map stale: the next request re-reads it first,
  so once the cluster has promoted a replica the requests succeed again. Nothing is retried on another node
  (the caller answers 503, or the stream worker retries its batch).
* ``CLUSTERDOWN`` / ``TRYAGAIN`` and every other error reply are returned as the redis-py exception
  (:func:`error_of`), in place of that command's reply.

Replies come back with errors in place (:meth:`ClusterPool.execute`); :func:`fstore.redis.resp.raise_errors`
raises the first. Only database 0 exists on a cluster.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import redis
import redis.exceptions as rex
from redis._parsers.base import BaseParser
from redis.backoff import NoBackoff
from redis.connection import parse_url
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.retry import Retry

from fstore.redis.resp import Arg, RespPool, command, raise_errors, round_trip_sync

MAX_REDIRECTS = 5
Addr = tuple[str, int]
_ASKING = command("ASKING")
_CLUSTER_SLOTS = command("CLUSTER", "SLOTS")
_PING = command("PING")


def slot_of(key: str | bytes) -> int:
    """The hash slot of a key (CRC16 of its hash tag, or of the whole key without one)."""
    return int(key_slot(key.encode() if isinstance(key, str) else key))


def error_of(reply: Any) -> Any:
    """``reply``, or for an error reply the specific redis-py exception (``MovedError``, ``AskError``,
    ``NoScriptError``, ``ClusterDownError``, ``TryAgainError``, ...) with the same message."""
    if isinstance(reply, rex.ResponseError) and type(reply) is rex.ResponseError:
        return BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
    return reply


def parse_slots(reply: Sequence[Any], asked: Addr) -> list[Addr]:
    """The owner of every slot from a ``CLUSTER SLOTS`` reply (an empty host means the node asked).

    Raises:
        redis.exceptions.ClusterDownError: some slot has no owner (the cluster is not fully set up).
    """
    owners: list[Addr | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
    for entry in reply:
        lo, hi, primary = int(entry[0]), int(entry[1]), entry[2]
        host = primary[0].decode() if isinstance(primary[0], bytes) else str(primary[0])
        addr = (host or asked[0], int(primary[1]))
        owners[lo : hi + 1] = [addr] * (hi - lo + 1)
    missing = owners.count(None)
    if missing:
        raise rex.ClusterDownError(f"{missing} hash slots have no primary (asked {asked[0]}:{asked[1]})")
    return owners  # type: ignore[return-value]


def seeds_of(url: str) -> tuple[list[Addr], dict[str, str]]:
    """The seed nodes and the credentials of a cluster URL.

    One node is enough while it is up (the others are discovered from its slot map), but a process that
    starts while that node is down could not read the map: several may be given, comma-separated —
    ``redis://:pw@h1:7000,h2:7001,h3:7002`` or full URLs ``redis://h1:7000,redis://h2:7001`` — and the first
    that answers is used. Credentials come from the first seed named (empty parts are skipped).
    """
    seeds: list[Addr] = []
    auth: dict[str, str] = {}
    for part in (p.strip() for p in url.split(",")):
        if not part:
            continue
        kw = parse_url(part if "://" in part else f"redis://{part}")  # type: ignore[no-untyped-call]
        seeds.append((str(kw.get("host", "127.0.0.1")), int(kw.get("port", 6379))))
        if len(seeds) == 1:
            auth = {k: str(kw[k]) for k in ("username", "password") if kw.get(k)}
    return seeds, auth


class _Router:
    """The slot map and the grouping / redirection rules shared by both pools (no I/O)."""

    def __init__(self, seeds: Sequence[Addr]) -> None:
        self.known: list[Addr] = list(dict.fromkeys(seeds))
        self.owners: list[Addr] | None = None  # None: read the map before the next request

    def learn(self, owners: list[Addr]) -> list[Addr]:
        self.owners = owners
        self.known = list(dict.fromkeys([*dict.fromkeys(owners), *self.known]))
        return owners

    def group(
        self, owners: list[Addr], todo: Sequence[int], slots: Sequence[int], asking: dict[int, Addr]
    ) -> dict[Addr, list[int]]:
        """The commands ``todo`` by the node to send them to, on the slot map ``owners``.

        The map is the caller's (the one it read or refreshed), not ``self.owners``: a concurrent request whose
        node failed may reset ``self.owners`` to None while the caller waits for a shared refresh (probe-scale2:
        an AssertionError, a 500, during a failover under concurrent reads).
        """
        groups: dict[Addr, list[int]] = {}
        for i in todo:
            addr = asking.get(i) or owners[slots[i]]
            group = groups.get(addr)
            if group is None:
                groups[addr] = [i]
            else:
                group.append(i)
        return groups

    def absorb(
        self, addr: Addr, idxs: list[int], replies: list[Any] | BaseException, out: list[Any], asking: dict[int, Addr]
    ) -> list[int]:
        """Store one node's replies in ``out``; return the indexes to send again (redirected)."""
        if isinstance(replies, BaseException):
            if not isinstance(replies, rex.RedisError):
                raise replies
            self.owners = None  # the node may be down or demoted: re-read the map next time
            for i in idxs:
                out[i] = replies
            return []
        redo = []
        for i, reply in zip(idxs, replies, strict=True):
            if isinstance(reply, rex.ResponseError):
                reply = error_of(reply)
                if isinstance(reply, rex.MovedError):  # first: redis-py's MovedError subclasses AskError
                    self.owners = None
                    asking.pop(i, None)
                    redo.append(i)
                    continue
                if isinstance(reply, rex.AskError):
                    asking[i] = (reply.host, int(reply.port))
                    redo.append(i)
                    continue
            out[i] = reply
        return redo


def _payload(commands: Sequence[bytes], idxs: list[int], asking: dict[int, Addr]) -> tuple[bytes, int]:
    """The pipeline of one node: its commands (each after ``ASKING`` when redirected by ``ASK``)."""
    if not asking:
        return b"".join([commands[i] for i in idxs]), len(idxs)
    parts = []
    for i in idxs:
        if i in asking:
            parts.append(_ASKING)
        parts.append(commands[i])
    return b"".join(parts), len(parts)


def _unask(replies: list[Any], idxs: list[int], asking: dict[int, Addr]) -> list[Any]:
    """Drop the ``ASKING`` replies from a node's replies."""
    if not asking:
        return replies
    out, pos = [], 0
    for i in idxs:
        pos += i in asking
        out.append(replies[pos])
        pos += 1
    return out


class ClusterPool:
    """Async connections to every primary of a Redis Cluster (bound to the event loop that uses it).

    Args:
        seeds: nodes to read the slot map from at first (any node of the cluster; the rest is discovered).
        username, password: ``AUTH`` of every node, if any.
        timeout: seconds a round trip may go without receiving a byte.
        connect_timeout: seconds a connect may take.
    """

    def __init__(
        self,
        seeds: Sequence[Addr],
        *,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self._router = _Router(seeds)
        self._username, self._password = username, password
        self.timeout, self.connect_timeout = timeout, connect_timeout
        self._pools: dict[Addr, RespPool] = {}
        self._refreshing: asyncio.Future[list[Addr]] | None = None

    @classmethod
    def from_url(cls, url: str, *, timeout: float | None = None, connect_timeout: float | None = None) -> ClusterPool:
        """A pool seeded with the node(s) of a ``redis://[user:password@]host:port`` URL (:func:`seeds_of`)."""
        seeds, auth = seeds_of(url)
        return cls(
            seeds,
            username=auth.get("username"),
            password=auth.get("password"),
            timeout=timeout,
            connect_timeout=connect_timeout,
        )

    def _pool(self, addr: Addr) -> RespPool:
        pool = self._pools.get(addr)
        if pool is None:
            pool = self._pools[addr] = RespPool(
                addr[0],
                addr[1],
                username=self._username,
                password=self._password,
                timeout=self.timeout,
                connect_timeout=self.connect_timeout,
            )
        return pool

    async def refresh(self) -> list[Addr]:
        """Re-read the slot map from the first known node that answers (concurrent callers share one read).

        Returns:
            The map read (the owner of every slot), to route with even if a concurrent failure has already
            marked it stale again.

        Raises:
            redis.exceptions.ConnectionError: no known node answered.
        """
        if self._refreshing is not None:
            return await asyncio.shield(self._refreshing)
        self._refreshing = asyncio.get_running_loop().create_future()
        errors = []
        try:
            for addr in list(self._router.known):
                try:
                    reply = (await self._pool(addr).execute(_CLUSTER_SLOTS, 1))[0]
                    owners = self._router.learn(parse_slots(reply, addr))
                    self._refreshing.set_result(owners)
                    return owners
                except rex.RedisError as exc:
                    errors.append(f"{addr[0]}:{addr[1]}: {exc}")
            failure = rex.ConnectionError("no Redis Cluster node answered CLUSTER SLOTS (" + "; ".join(errors) + ")")
            self._refreshing.set_exception(failure)
            self._refreshing.exception()  # retrieved: concurrent callers get it through their shield
            raise failure
        finally:
            self._refreshing = None

    async def execute(self, commands: Sequence[bytes], slots: Sequence[int]) -> list[Any]:
        """Send each command to the primary of its slot (one pipeline per node, all nodes at once) and return
        the replies in order, errors in place (see the module docstring).

        Raises:
            redis.exceptions.ConnectionError: the slot map cannot be read from any node.
        """
        out: list[Any] = [None] * len(commands)
        todo: Sequence[int] = range(len(commands))
        asking: dict[int, Addr] = {}
        router = self._router
        for _ in range(MAX_REDIRECTS):
            owners = router.owners or await self.refresh()
            groups = router.group(owners, todo, slots, asking)
            items = list(groups.items())
            results = await asyncio.gather(
                *(self._node(addr, commands, idxs, asking) for addr, idxs in items), return_exceptions=True
            )
            redo: list[int] = []
            for (addr, idxs), replies in zip(items, results, strict=True):
                redo += router.absorb(addr, idxs, replies, out, asking)
            if not redo:
                return out
            todo = redo
        raise rex.ClusterError(f"Redis Cluster: still redirected after {MAX_REDIRECTS} rounds")

    async def _node(self, addr: Addr, commands: Sequence[bytes], idxs: list[int], asking: dict[int, Addr]) -> list[Any]:
        ask = {i: a for i, a in asking.items() if a == addr} if asking else asking
        payload, n = _payload(commands, idxs, ask)
        return _unask(await self._pool(addr).execute_all(payload, n), idxs, ask)

    async def call(self, key: str, *args: Arg) -> Any:
        """One command on one key (``call(key, "GET", key)``); raises its error reply."""
        return raise_errors(await self.execute([command(*args)], [slot_of(key)]))[0]

    async def get(self, key: str) -> Any:
        """``GET key``."""
        return await self.call(key, "GET", key)

    async def set(self, key: str, value: Arg, ex: int | None = None) -> Any:
        """``SET key value [EX ex]``."""
        return await self.call(key, "SET", key, value, *(("EX", ex) if ex is not None else ()))

    async def ping(self) -> bool:
        """``PING`` every primary; raises when one does not answer."""
        owners = self._router.owners or await self.refresh()
        for addr in dict.fromkeys(owners):
            raise_errors(await self._pool(addr).execute_all(_PING, 1))
        return True

    async def script_load(self, script: str) -> str:
        """``SCRIPT LOAD`` on every primary (a promoted replica does not have the scripts of its old primary)."""
        owners = self._router.owners or await self.refresh()
        sha = ""
        for addr in dict.fromkeys(owners):
            reply = raise_errors(await self._pool(addr).execute_all(command("SCRIPT", "LOAD", script), 1))[0]
            sha = reply.decode() if isinstance(reply, bytes) else str(reply)
        return sha

    def close(self) -> None:
        """Close every idle connection."""
        for pool in self._pools.values():
            pool.close()

    async def aclose(self) -> None:
        """:meth:`close` (for callers that close redis-py clients with ``await client.aclose()``)."""
        self.close()


class SyncClusterPool:
    """:class:`ClusterPool` over blocking redis-py connections (one client per node; nodes in turn).

    Args:
        seeds: nodes to read the slot map from at first.
        **kwargs: redis-py connection arguments of every node (timeouts, username, password).
    """

    def __init__(self, seeds: Sequence[Addr], **kwargs: Any) -> None:
        self._router = _Router(seeds)
        self._kwargs = kwargs
        self._clients: dict[Addr, redis.Redis] = {}

    @classmethod
    def from_url(cls, url: str, **kwargs: Any) -> SyncClusterPool:
        """A pool seeded with the node(s) of a ``redis://[user:password@]host:port`` URL (:func:`seeds_of`)."""
        seeds, auth = seeds_of(url)
        return cls(seeds, **auth, **kwargs)

    def _client(self, addr: Addr) -> redis.Redis:
        client = self._clients.get(addr)
        if client is None:
            # no retries: redis-py's default (10, with backoff) took ≈ 4 s to report a dead node, so a dead primary
            # now fails the read within the configured timeout, as the async pool does (round_trip_sync still
            # re-sends once on a broken pooled connection)
            client = self._clients[addr] = redis.Redis(
                host=addr[0], port=addr[1], retry=Retry(NoBackoff(), 0), **self._kwargs
            )
        return client

    def refresh(self) -> list[Addr]:
        """Re-read the slot map from the first known node that answers; returns it.

        Raises:
            redis.exceptions.ConnectionError: no known node answered.
        """
        errors = []
        for addr in list(self._router.known):
            try:
                reply = round_trip_sync(self._client(addr), _CLUSTER_SLOTS, 1)[0]
                return self._router.learn(parse_slots(reply, addr))
            except rex.RedisError as exc:
                errors.append(f"{addr[0]}:{addr[1]}: {exc}")
        raise rex.ConnectionError("no Redis Cluster node answered CLUSTER SLOTS (" + "; ".join(errors) + ")")

    def execute(self, commands: Sequence[bytes], slots: Sequence[int]) -> list[Any]:
        """As :meth:`ClusterPool.execute`, one node after the other."""
        out: list[Any] = [None] * len(commands)
        todo: Sequence[int] = range(len(commands))
        asking: dict[int, Addr] = {}
        router = self._router
        for _ in range(MAX_REDIRECTS):
            owners = router.owners or self.refresh()
            redo: list[int] = []
            for addr, idxs in router.group(owners, todo, slots, asking).items():
                ask = {i: a for i, a in asking.items() if a == addr} if asking else asking
                payload, n = _payload(commands, idxs, ask)
                replies: list[Any] | BaseException
                try:
                    replies = _unask(round_trip_sync(self._client(addr), payload, n, errors_in_place=True), idxs, ask)
                except rex.RedisError as exc:
                    replies = exc
                redo += router.absorb(addr, idxs, replies, out, asking)
            if not redo:
                return out
            todo = redo
        raise rex.ClusterError(f"Redis Cluster: still redirected after {MAX_REDIRECTS} rounds")

    def get(self, key: str) -> Any:
        """``GET key``."""
        return raise_errors(self.execute([command("GET", key)], [slot_of(key)]))[0]

    def close(self) -> None:
        """Close every node's connections."""
        for client in self._clients.values():
            client.close()
