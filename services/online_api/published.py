"""Whether Redis should hold a batch view: the Delta record of publications, cached.

Redis can lose the batch pointer (a restart without persistence). Served without it, every value
would silently lack the batch tiles — an undercount. When the pointer is missing the API asks this
object whether a batch view was ever published (Delta ``batch_views``, :mod:`fstore.delta.batch_views`);
if so it answers 503 naming ``fstore repair`` instead of a wrong number. The Delta read runs in a
thread and its answer is kept for ``ttl_s`` seconds, so an outage costs one small read per period.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from fstore.core.timeutil import iso
from fstore.delta import batch_views
from fstore.delta.batch_views import PublishedView
from services.online_api.logic import RequestError

log = logging.getLogger("fstore.api")


class PublishedBatch:
    """The latest publication recorded in ``batch_views`` (cached).

    Args:
        uri: the ``batch_views`` table.
        ttl_s: how long an answer is reused.
        clock: monotonic seconds (injectable).
    """

    def __init__(self, uri: str, ttl_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.uri, self.ttl_s, self.clock = uri, ttl_s, clock
        self._at = float("-inf")
        self._latest: PublishedView | None = None

    async def latest(self) -> PublishedView | None:
        """The latest publication, or ``None`` if none was ever recorded.

        Raises:
            RequestError: 503 when the record cannot be read (the answer would be a guess).
        """
        if self.clock() - self._at >= self.ttl_s:
            try:
                self._latest = await asyncio.to_thread(batch_views.latest, self.uri)
            except Exception as exc:
                log.warning("batch_views unreadable: %s", exc)
                raise RequestError(
                    503, f"the batch view pointer is missing from Redis and {self.uri} cannot be read: {exc}"
                ) from None
            self._at = self.clock()
        return self._latest

    async def check(self) -> None:
        """Raise unless serving without a batch view is right (nothing was ever published).

        Raises:
            RequestError: 503 naming the lost version and the command that restores it.
        """
        lost = await self.latest()
        if lost is not None:
            raise RequestError(503, missing_message(lost))


def missing_message(lost: PublishedView) -> str:
    """The 503 text for a batch view that Redis lost."""
    return (
        f"the batch view is missing from Redis (version {lost.version}, cutover {iso(lost.cutover)} was "
        "published): values would undercount; restore it with `fstore repair` (docs/runbook.md)"
    )
