"""services.online_api.http: a response head leaves with its body in one write, and nothing is lost."""

from __future__ import annotations

import asyncio

import pytest

from services.online_api.http import HeadBodyTransport

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
