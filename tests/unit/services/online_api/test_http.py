"""services.online_api.http: a response head leaves with its body in one write, and nothing is lost."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import uvicorn
import uvloop
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from services.online_api.http import HeadBodyProtocol, HeadBodyTransport

pytestmark = pytest.mark.unit


class Recorder:
    """A transport that records writes (the fake stands for the socket, not for anything under test)."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: bytes) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def test_head_and_body_go_out_in_one_write() -> None:
    async def run() -> list[bytes]:
        rec = Recorder()
        t = HeadBodyTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(HEAD)
        assert rec.writes == []  # held for the body
        t.write(b"{}")
        t.write(HEAD)
        t.write(b"[]")
        await asyncio.sleep(0)  # the fallback flush finds nothing held
        assert t.get_extra_info("peername") == "info:peername"  # everything else is the real transport's
        return rec.writes

    assert asyncio.run(run()) == [HEAD + b"{}", HEAD + b"[]"]


def test_streamed_bodies_and_a_lone_head_are_not_held_back() -> None:
    async def run() -> list[bytes]:
        rec = Recorder()
        t = HeadBodyTransport(rec, asyncio.get_running_loop())  # type: ignore[arg-type]
        t.write(HEAD)
        t.write(b"chunk1")
        t.write(b"chunk2")  # not a head: straight through
        t.write(b"HTTP/1.1 100 Continue\r\n\r\n")  # a head with no body after it in this step
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        t.write(HEAD)
        t.close()  # a close sends what is held first
        return rec.writes

    assert asyncio.run(run()) == [HEAD + b"chunk1", b"chunk2", b"HTTP/1.1 100 Continue\r\n\r\n", HEAD]


# --- contract with uvicorn -------------------------------------------------------------------------------------
# HeadBodyProtocol subclasses uvicorn's HttpToolsProtocol and swaps the transport it writes to. That relies on
# uvicorn internals: the protocol class is built by uvicorn from `http=`, `connection_made` sets
# `self.transport`, the request cycle writes the response through `protocol.transport.write`, a head (status line
# and headers) in one write and the body in the next. pyproject.toml pins uvicorn below the next minor release;
# the test below runs the real server (uvloop, httptools, as `fstore serve` does) and fails if any of that changes
# shape, so a bump of the pin is safe once it passes. ADR 0008 records the decision.


class WriteLog:
    """Wraps the socket's transport and records every write that reaches it."""

    def __init__(self, transport: asyncio.Transport, writes: list[bytes]) -> None:
        self._transport = transport
        self.writes = writes

    def write(self, data: bytes | bytearray | memoryview) -> None:
        self.writes.append(bytes(data))
        self._transport.write(data)

    def __getattr__(self, name: str) -> object:
        return getattr(self._transport, name)


async def small_app(scope: dict[str, object], receive: object, send: Any) -> None:
    """``/json``: a complete JSON answer; ``/stream``: a body sent in two chunks."""
    assert scope["type"] == "http"
    if scope["path"] == "/stream":
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
        await send({"type": "http.response.body", "body": b"part1-", "more_body": True})
        await asyncio.sleep(0.01)  # the next chunk comes in a later loop step
        await send({"type": "http.response.body", "body": b"part2"})
        return
    body = b'{"ok":true}'
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))],
        }
    )
    await send({"type": "http.response.body", "body": body})


def serve_and_fetch(protocol: type[HttpToolsProtocol], paths: list[str]) -> tuple[list[bytes], list[bytes]]:
    """Run uvicorn with ``protocol`` on a free loopback port, GET ``paths`` on one keep-alive connection;
    return the raw responses and the writes that reached the socket's transport."""
    writes: list[bytes] = []

    class Logged(protocol):  # type: ignore[valid-type, misc]
        def connection_made(self, transport: asyncio.Transport) -> None:
            super().connection_made(WriteLog(transport, writes))

    async def fetch(port: int, path: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bytes:
        writer.write(f"GET {path} HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n\r\n".encode())
        head = await reader.readuntil(b"\r\n\r\n")
        if b"content-length:" in head.lower():
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            return head + await reader.readexactly(length)
        body = b""
        while not body.endswith(b"0\r\n\r\n"):  # chunked
            body += await reader.read(65536)
        return head + body

    async def scenario() -> list[bytes]:
        config = uvicorn.Config(
            small_app,
            host="127.0.0.1",
            port=0,
            http=Logged,
            loop="none",
            lifespan="off",
            log_level="warning",
            access_log=False,
        )
        server = uvicorn.Server(config)
        task = asyncio.ensure_future(server.serve())
        for _ in range(500):
            if server.started:
                break
            await asyncio.sleep(0.01)
        assert server.started, "uvicorn did not start"
        port = server.servers[0].sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            return [await asyncio.wait_for(fetch(port, p, reader, writer), 5) for p in paths]
        finally:
            writer.close()
            server.should_exit = True
            await asyncio.wait_for(task, 10)

    return uvloop.run(scenario()), writes


def test_uvicorn_sends_head_and_body_in_one_write_with_head_body_protocol() -> None:
    responses, writes = serve_and_fetch(HeadBodyProtocol, ["/json", "/json", "/stream"])
    for r in responses[:2]:
        assert r.startswith(b"HTTP/1.1 200 OK\r\n") and r.endswith(b'\r\n\r\n{"ok":true}')
    assert responses[2].startswith(b"HTTP/1.1 200 OK\r\n") and b"part1-" in responses[2] and b"part2" in responses[2]
    # one write per complete response: the head never leaves alone
    assert writes[0] == responses[0] and writes[1] == responses[1], writes
    # a streamed body: the head goes with the first chunk, later chunks straight through, nothing lost
    assert writes[2].startswith(b"HTTP/1.1 200 OK\r\n") and writes[2].endswith(b"part1-\r\n")
    assert b"".join(writes[2:]) == responses[2]


def test_uvicorn_own_protocol_still_writes_head_and_body_separately() -> None:
    """The reference: what HeadBodyProtocol improves on. If uvicorn starts sending both in one write itself,
    this fails and the subclass can go (ADR 0008)."""
    responses, writes = serve_and_fetch(HttpToolsProtocol, ["/json"])
    assert responses[0].endswith(b'{"ok":true}')
    assert len(writes) == 2 and writes[0].startswith(b"HTTP/1.1 200 OK\r\n") and writes[1] == b'{"ok":true}'
