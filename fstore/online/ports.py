"""What the serving layer needs from an online store: :class:`FeatureReader`.

Production: :class:`fstore.online.reader.OnlineReader` (Redis, one pipelined round trip per request);
in-memory fake: :class:`fstore.online.fakes.MemoryReader`, so request handling is testable in-process.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from fstore.online.merge import EntityRead
from fstore.online.reader import Snapshot


class FeatureReader(Protocol):
    """Reads merged (batch before C + speed from C) feature values of many entities at one instant."""

    async def read(self, reads: Sequence[EntityRead], as_of: int | None = None) -> Snapshot:
        """Values of every read at ``as_of`` (default: the reader's clock), against one batch pointer."""
        ...
