"""uvicorn's httptools protocol, sending a response's head and body in one socket write.

uvicorn writes the status line and headers on ``http.response.start`` and the body on
``http.response.body``: two ``send`` system calls and, with ``TCP_NODELAY``, usually two packets for the
client to wake up for. For the small JSON answers of ``GET /features`` (≈ 0.35 ms in all at concurrency
1) that is measurable. :class:`HeadBodyProtocol` gives uvicorn a transport that holds a response head
(a write starting with ``HTTP/1.1 ``) until the next write, the body, and sends both together. Nothing
waits on it: the body follows the head in the same step, and if it does not (a streamed response, a
body that happens to start with those bytes) the held bytes go out at the end of the event-loop step.
Reads, flow control and closing are the real transport's; a close sends what is held first.

Used by ``fstore serve`` (``uvicorn.run(..., http=HeadBodyProtocol)``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

HEAD = b"HTTP/1.1 "


class HeadBodyTransport:
    """Delegates to an asyncio transport; a response head is held and sent with the write that follows."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + bytes(data))
        elif data[:9] == HEAD:
            self._held = bytes(data)
            self._loop.call_soon(self.flush)  # only sends if no write follows in this step
        else:
            self._transport.write(data)

    def flush(self) -> None:
        """Send a held head now (no-op when nothing is held or the transport is closing)."""
        held, self._held = self._held, None
        if held is not None and not self._transport.is_closing():
            self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, pause_reading, abort, ...
        return getattr(self._transport, name)


class HeadBodyProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` writing through a :class:`HeadBodyTransport`."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.transport = HeadBodyTransport(transport, self.loop)  # type: ignore[assignment]
