"""How the stream worker tells an outage from a poison message, and how it stops when it must.

Two kinds of failure reach the worker's batch loop (docs/stream.md, *Failures*):

* an **outage** — Redis, the Kafka broker or the storage of ``raw_events`` unreachable or refusing work for
  a while (connection and timeout errors, Redis loading / read-only / out of memory, retriable Kafka
  errors, ``OSError`` and a ``DeltaError`` quoting one, e.g. a full disk). Retrying is right; if it lasts
  longer than ``FSTORE_STREAM_OUTAGE_EXIT_S`` the worker stops with :data:`EXIT_OUTAGE` so that a
  supervisor notices, and resumes from its committed offsets when restarted (a failed raw-sink flush stops
  it at once, nothing committed);
* anything else is **unprocessable**: a message the sinks cannot take (a Lua error on a value, an Arrow
  conversion error). The worker isolates the message(s) that cause it by bisecting the batch, dead-letters
  each with the closed reason :data:`UNPROCESSABLE` and goes on. If messages keep failing on their own
  with no success in between (:data:`MAX_UNPROCESSABLE_STREAK`), the fault is the worker's, not the
  messages': it stops with :data:`EXIT_FAILURE` instead of dead-lettering the whole topic.

The worker never exits 0 after a failure (Faust's own exit code after a SIGTERM is 0; :func:`exit_code`
is what ``fstore stream`` exits with instead).
"""

from __future__ import annotations

import time

from aiokafka.errors import KafkaTimeoutError
from deltalake.exceptions import DeltaError
from redis import exceptions as redis_errors

from fstore.core.events import UNPROCESSABLE

__all__ = ["EXIT_FAILURE", "EXIT_OUTAGE", "UNPROCESSABLE", "OutageClock", "exit_code", "is_outage"]
#: Exit code of a worker stopped by an outage that outlasted ``FSTORE_STREAM_OUTAGE_EXIT_S`` (EX_UNAVAILABLE).
EXIT_OUTAGE = 69
#: Exit code of a worker stopped by an error that is neither an outage nor one message's fault (EX_SOFTWARE).
EXIT_FAILURE = 70
#: Consecutive messages that fail on their own, with no message succeeding in between, before the worker
#: concludes that the fault is its own (or a sink's) and stops rather than dead-letter everything.
MAX_UNPROCESSABLE_STREAK = 10

_REDIS_OUTAGE = (
    redis_errors.ConnectionError,  # BusyLoadingError too
    redis_errors.TimeoutError,
    redis_errors.ReadOnlyError,
    redis_errors.OutOfMemoryError,
    redis_errors.ClusterDownError,
    redis_errors.TryAgainError,
    redis_errors.MasterDownError,
)


#: How delta-rs quotes an error of the operating system (Rust's ``std::io::Error``) in a ``DeltaError``.
_OS_ERROR = "(os error "


class OutageTimeout(Exception):
    """An outage lasted longer than the worker waits for one (the worker stops with :data:`EXIT_OUTAGE`)."""


class SystemicFailure(Exception):
    """Messages keep failing on their own: the worker stops with :data:`EXIT_FAILURE`."""


def is_outage(exc: BaseException) -> bool:
    """Whether ``exc`` means a dependency is away (retry, then stop) rather than a message it cannot take."""
    if isinstance(exc, (OutageTimeout, OSError, KafkaTimeoutError, *_REDIS_OUTAGE)):
        return True
    if isinstance(exc, redis_errors.RedisClusterException) and exc.__cause__ is not None:
        return is_outage(exc.__cause__)  # redis-py's "Redis Cluster cannot be connected", from a ConnectionError
    if isinstance(exc, DeltaError) and _OS_ERROR in str(exc):  # the file system's error, wrapped by delta-rs
        return True  # (a full disk: "... No space left on device (os error 28)")
    return bool(getattr(exc, "retriable", False))  # aiokafka's KafkaError subclasses say it themselves


def exit_code(exc: BaseException) -> int:
    """The worker's exit code after ``exc`` stopped it."""
    return EXIT_OUTAGE if is_outage(exc) else EXIT_FAILURE


class OutageClock:
    """Time since an outage began; raises :class:`OutageTimeout` once it exceeds ``limit_s``.

    One per retry loop: :meth:`failed` after each failed attempt (returns the next backoff delay),
    the loop ends when an attempt succeeds.
    """

    def __init__(self, what: str, limit_s: float, clock: object = time.monotonic) -> None:
        self.what, self.limit_s = what, limit_s
        self._clock = clock if callable(clock) else time.monotonic
        self._since: float | None = None
        self._delay = 0.1

    def failed(self, exc: BaseException) -> float:
        """Record a failed attempt; the seconds to wait before the next one."""
        now = float(self._clock())
        if self._since is None:
            self._since = now
        if now - self._since > self.limit_s:
            raise OutageTimeout(f"{self.what} unavailable for {now - self._since:.0f} s: {exc}") from exc
        delay, self._delay = self._delay, min(self._delay * 2, 5.0)
        return delay
