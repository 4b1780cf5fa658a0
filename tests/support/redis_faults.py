"""Network faults injected below redis-py, on a real Redis: the server runs every command, only what the
client sees is changed."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import redis


def lost_reply_connection(
    lose: str, meanwhile: Callable[[], object] = lambda: None
) -> tuple[type[redis.connection.Connection], list[int]]:
    """A ``connection_class`` for redis-py clients (``Redis.from_url``, ``RedisCluster.from_url``) that loses
    the reply of the first ``lose`` command (e.g. ``"EVAL"``) AFTER Redis ran it.

    The command reaches Redis and its reply is read off the socket; then ``meanwhile`` runs (another process
    acting before any retry), the connection is torn down and ``ConnectionError`` raised, as after a real
    network failure. Whatever retries the command (redis-py's ``Retry``, ``RedisCluster``, the caller) does
    so on a fresh connection. Returns the class and a list whose one item counts the ``lose`` commands sent.
    """
    sent = [0]

    class LostReply(redis.connection.Connection):
        lossy = False

        def send_command(self, *args: Any, **kwargs: Any) -> None:
            self.lossy = str(args[0]).upper() == lose
            sent[0] += self.lossy
            super().send_command(*args, **kwargs)  # type: ignore[no-untyped-call]

        def read_response(self, *args: Any, **kwargs: Any) -> Any:
            reply = super().read_response(*args, **kwargs)
            if self.lossy and sent[0] == 1:
                meanwhile()
                self.disconnect()  # type: ignore[no-untyped-call]
                raise redis.ConnectionError("connection reset (injected: the reply was lost)")
            return reply

    return LostReply, sent
