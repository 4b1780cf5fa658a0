"""Pipelined Redis round trips for the online read path: pre-encoded commands in, raw replies out.

:class:`fstore.online.reader.OnlineReader` sends one request's commands (the batch pointer ``GET`` and a hundred or
more ``HGETALL``) in one write and needs every reply back. redis-py's connections read each reply under
its own ``asyncio`` timeout (about 5 µs of bookkeeping per reply, a third of a 100-entity read), so
:class:`RespPool` keeps its own connections: an :class:`asyncio.Protocol` that feeds the bytes it receives
to a ``hiredis.Reader`` and wakes the request once all its replies are parsed, with one timer per round
trip. Replies are returned as hiredis gives them (RESP2: ``bytes``, ``None``, flat ``[field, value, ...]``
lists for ``HGETALL``).

Connection settings (host, port or Unix socket path, database, username, password, timeouts) come from
the redis-py client the reader is given (:meth:`RespPool.from_client`); a client this module cannot mirror
(TLS, a credential provider) makes :func:`from_client` return ``None`` and the reader uses
:func:`round_trip`, the same round trip on redis-py's own connections.

Failure behaviour (docs/design.md §5, "never a hang"): a connect that exceeds its timeout, or a round trip that
receives nothing for the socket timeout (as redis-py's per-read timeout), raises
:class:`redis.exceptions.TimeoutError` and is not retried; a refused or dropped connection raises
:class:`redis.exceptions.ConnectionError`. A connection is reused only after a complete round trip; on any
error or cancellation it is closed, never returned half-read. A pooled connection found broken when used
(e.g. after a Redis restart) is retried once on a fresh one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

import hiredis
import redis
import redis.asyncio as aioredis
import redis.exceptions as rex
from redis.asyncio.connection import Connection, UnixDomainSocketConnection

MAX_IDLE = 64  # connections kept open between requests (one per concurrently served request)


Arg = str | int | float | bytes


def bulk(arg: Arg) -> bytes:
    """One RESP bulk string, encoded as redis-py encodes arguments (ints and floats as ``repr``)."""
    if isinstance(arg, bytes):
        b = arg
    elif isinstance(arg, str):
        b = arg.encode()
    elif isinstance(arg, int | float) and not isinstance(arg, bool):
        b = repr(arg).encode()
    else:
        raise TypeError(f"cannot send {type(arg).__name__} to Redis")
    return b"$%d\r\n%s\r\n" % (len(b), b)


def command(*args: Arg) -> bytes:
    """One Redis command in RESP (what redis-py's ``pack_command`` sends): an array of bulk strings."""
    return b"*%d\r\n" % len(args) + b"".join([bulk(a) for a in args])


_HGETALL = b"*2\r\n$7\r\nHGETALL\r\n"


def hgetall(key: str) -> bytes:
    """``HGETALL key`` in RESP."""
    b = key.encode()
    return b"%s$%d\r\n%s\r\n" % (_HGETALL, len(b), b)


class _Conn(asyncio.Protocol):
    """One Redis connection: parses replies as bytes arrive and completes the waiting round trip."""

    def __init__(self, loop: asyncio.AbstractEventLoop, where: str) -> None:
        self._loop = loop
        self._where = where
        self._parser = hiredis.Reader(replyError=rex.ResponseError)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[list[Any]] | None = None
        self._replies: list[Any] = []
        self._pending = 0
        self._progress = False  # bytes arrived since the timer was last armed
        self._timeout: float | None = None
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's transports do not subclass it

    def data_received(self, data: bytes) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():  # nothing asked: the connection is out of step, drop it
            self.close()
            return
        self._progress = True
        parser = self._parser
        parser.feed(data)
        replies = self._replies
        try:
            while self._pending:
                reply = parser.gets()
                if reply is False:
                    return
                replies.append(reply)
                self._pending -= 1
        except Exception as exc:  # a protocol error: nothing more on this connection can be trusted
            self._fail(rex.ConnectionError(f"bad reply from Redis at {self._where}: {exc}"))
            return
        waiter.set_result(replies)
        if parser.has_data():  # more than was asked for: out of step, never reuse this connection
            self.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail(rex.ConnectionError(f"connection to Redis at {self._where} lost" + (f": {exc}" if exc else "")))

    def _fail(self, exc: Exception) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        self.close()

    def _expire(self) -> None:
        if self._progress and self._timeout is not None:  # a large reply still arriving: wait on
            self._progress = False
            self._timer = self._loop.call_later(self._timeout, self._expire)
            return
        self._fail(rex.TimeoutError(f"timeout reading from Redis at {self._where}"))

    def close(self) -> None:
        """Drop the connection (idempotent)."""
        self.closed = True
        if self._transport is not None:
            self._transport.abort()

    async def round_trip(self, payload: bytes, replies: int, timeout: float | None) -> list[Any]:
        """Send ``payload`` (``replies`` commands) and return their replies. Fails when no byte arrives for
        ``timeout`` seconds (a socket timeout, so a large reply that keeps arriving is not cut off)."""
        if self.closed or self._transport is None:
            raise rex.ConnectionError(f"connection to Redis at {self._where} is closed")
        self._replies = []
        self._pending = replies
        self._progress = False
        self._timeout = timeout
        waiter = self._waiter = self._loop.create_future()
        if timeout is not None:
            self._timer = self._loop.call_later(timeout, self._expire)
        self._transport.write(payload)
        try:
            out: list[Any] = await waiter
        except BaseException:
            self.close()
            raise
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._waiter = None
            self._replies = []  # an idle connection holds no reference to the (possibly large) replies
        return out


def raise_errors(replies: list[Any]) -> list[Any]:
    """``replies``, unless one is an error: then raise the first. A command's error reply leaves the connection
    usable; a Redis Cluster pool also puts a node's connection error in place of that node's replies."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


class RespPool:
    """Connections to one Redis server for :meth:`execute` (bound to the event loop that uses it).

    Args:
        host: server host (ignored when ``path`` is given).
        port: server port.
        path: Unix socket path, if the server is reached that way.
        db: database number (``SELECT``\\ ed on connect when not 0).
        username: ACL user name for ``AUTH``, if any.
        password: password for ``AUTH``, if any.
        timeout: seconds a round trip may go without receiving a byte (``None``: no limit).
        connect_timeout: seconds a connect (and its ``AUTH``/``SELECT``) may take.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 6379,
        *,
        path: str | None = None,
        db: int = 0,
        username: str | None = None,
        password: str | None = None,
        timeout: float | None = None,
        connect_timeout: float | None = None,
    ) -> None:
        self.host, self.port, self.path = host, port, path
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self._where = path or f"{host}:{port}"
        hello: list[bytes] = []
        if password is not None:
            hello.append(command("AUTH", username, password) if username else command("AUTH", password))
        if db:
            hello.append(command("SELECT", str(db)))
        self._hello = b"".join(hello)
        self._hello_replies = len(hello)
        self._idle: list[_Conn] = []

    @classmethod
    def from_client(cls, client: aioredis.Redis) -> RespPool | None:
        """A pool with the connection settings of ``client``; ``None`` when they cannot be mirrored (TLS, a
        credential provider, a custom connection class)."""
        pool = client.connection_pool
        kw = pool.connection_kwargs
        if pool.connection_class not in (Connection, UnixDomainSocketConnection) or kw.get("credential_provider"):
            return None
        return cls(
            str(kw.get("host", "localhost")),
            int(kw.get("port", 6379)),
            path=kw.get("path"),
            db=int(kw.get("db") or 0),
            username=kw.get("username"),
            password=kw.get("password"),
            timeout=kw.get("socket_timeout"),
            connect_timeout=kw.get("socket_connect_timeout"),
        )

    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()

        def factory() -> _Conn:
            return _Conn(loop, self._where)

        try:
            async with asyncio.timeout(self.connect_timeout):
                if self.path:
                    _, conn = await loop.create_unix_connection(factory, self.path)
                else:
                    _, conn = await loop.create_connection(factory, self.host, self.port)
                if self._hello_replies:
                    try:
                        raise_errors(await conn.round_trip(self._hello, self._hello_replies, None))
                    except BaseException:
                        conn.close()
                        raise
        except TimeoutError:
            raise rex.TimeoutError(f"timeout connecting to Redis at {self._where}") from None
        except OSError as exc:
            raise rex.ConnectionError(f"error connecting to Redis at {self._where}: {exc}") from None
        return conn

    async def execute(self, payload: bytes, replies: int) -> list[Any]:
        """Send pre-encoded commands in one write and return their ``replies`` replies, in order.

        Raises:
            redis.exceptions.TimeoutError: the round trip (or a needed connect) timed out.
            redis.exceptions.ConnectionError: Redis refused or dropped the connection.
            redis.exceptions.ResponseError: a command failed (the first such reply).
        """
        return raise_errors(await self.execute_all(payload, replies))

    async def execute_all(self, payload: bytes, replies: int) -> list[Any]:
        """:meth:`execute` with error replies returned in place (``ResponseError`` instances), not raised."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            if conn.closed:
                continue
            try:
                out = await conn.round_trip(payload, replies, self.timeout)
            except rex.ConnectionError:
                break  # e.g. Redis restarted since this connection was last used: once more, on a fresh one
            self._release(conn)
            return out
        conn = await self._connect()
        out = await conn.round_trip(payload, replies, self.timeout)
        self._release(conn)
        return out

    def _release(self, conn: _Conn) -> None:
        if len(self._idle) < MAX_IDLE and not conn.closed:
            self._idle.append(conn)
        else:
            conn.close()

    def close(self) -> None:
        """Close every idle connection (connections in use close when their round trip ends)."""
        while self._idle:
            self._idle.pop().close()


async def round_trip(
    client: aioredis.Redis,
    payload: bytes,
    replies: int,
    *,
    retry_broken: bool = True,
    on_sent: Callable[[], None] | None = None,
) -> list[Any]:
    """Send pre-encoded commands in one write on one of ``client``'s pooled connections and read ``replies``
    replies (any connection class redis-py supports; :class:`RespPool` is the faster path for plain TCP).

    Error replies do not break the connection: every reply is read, then the first error is raised. Any
    other failure or a cancellation drops the connection (never returned half-read). A broken pooled
    connection (``ConnectionError``) is retried once on a fresh one when ``retry_broken``; timeouts are not.

    Args:
        client: the redis-py asyncio client whose pool lends the connection.
        payload: the commands, RESP-encoded and concatenated.
        replies: how many replies they produce.
        retry_broken: retry once after a ``ConnectionError`` (only for commands safe to send twice).
        on_sent: called once the payload is written, before the replies are read.
    """
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = await pool.get_connection()  # type: ignore[no-untyped-call]
        try:
            await conn.send_packed_command(payload, check_health=False)
            if on_sent is not None:
                on_sent()
            out: list[Any] = []
            for _ in range(replies):
                try:
                    out.append(await conn.read_response())
                except rex.ResponseError as exc:
                    out.append(exc)
            return raise_errors(out)
        except rex.ConnectionError:
            await conn.disconnect(nowait=True)
            if attempt or not retry_broken:
                raise
        except BaseException as exc:
            if not isinstance(exc, rex.ResponseError):
                await conn.disconnect(nowait=True)
            raise
        finally:
            await pool.release(conn)
    raise AssertionError("unreachable")


def round_trip_sync(
    client: redis.Redis, payload: bytes, replies: int, *, retry_broken: bool = True, errors_in_place: bool = False
) -> list[Any]:
    """:func:`round_trip` for a synchronous redis-py client (same failure rules); ``errors_in_place``: return
    error replies as exceptions among the replies instead of raising the first."""
    pool = client.connection_pool
    for attempt in (0, 1):
        conn = pool.get_connection()
        try:
            conn.send_packed_command([payload], check_health=False)  # type: ignore[no-untyped-call]
            out: list[Any] = []
            for _ in range(replies):
                try:
                    out.append(conn.read_response())
                except rex.ResponseError as exc:
                    out.append(exc)
            return out if errors_in_place else raise_errors(out)
        except rex.ConnectionError:
            conn.disconnect()  # type: ignore[no-untyped-call]
            if attempt or not retry_broken:
                raise
        except BaseException as exc:
            if not isinstance(exc, rex.ResponseError):
                conn.disconnect()  # type: ignore[no-untyped-call]
            raise
        finally:
            pool.release(conn)
    raise AssertionError("unreachable")
