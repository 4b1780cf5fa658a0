"""Samples of served ``/features`` answers: what the API returned, kept so a job can replay it offline.

The online API keeps about one answer in ``1 / rate`` (:class:`ResponseSampler`) and appends its rows as
JSON lines — ``{"as_of_us", "batch_version", "entity", "values"}`` — to one file per process and UTC day,
``<dir>/<YYYY-MM-DD>/<host>-<pid>.jsonl``. :func:`read_samples` reads them back for a time window;
``fstore check-consistency --from-samples`` recomputes each row with the point-in-time engine at its
``as_of`` (:func:`fstore.consistency.replay`), which is the consistency promise of docs/design.md §5 measured
on production traffic.

Cost on the request path: :meth:`ResponseSampler.tick` is one decrement and one comparison; a sampled
answer costs a list append. The gaps between samples are random (geometric), so periodic traffic cannot
alias with the sampling. Writing happens off the event loop (:meth:`ResponseSampler.flush` in a thread,
about once a second), each write ends with ``fsync``: a crash loses at most the last second's samples.
"""

from __future__ import annotations

import math
import os
import random
import socket
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from fstore.core.timeutil import DAY, SECOND


@dataclass(frozen=True)
class Sample:
    """One served entity row: the values the API returned for ``entity`` at ``as_of_us``."""

    as_of_us: int
    batch_version: str | None
    entity: dict[str, str]
    values: dict[str, int | float | None]


def day_dir(directory: Path, us: int) -> Path:
    """The folder of the UTC day of ``us`` (epoch microseconds)."""
    return directory / time.strftime("%Y-%m-%d", time.gmtime(us // SECOND))


class ResponseSampler:
    """Keeps a random share of served answers and appends their rows to JSON-lines files.

    Args:
        directory: root of the sample files (created on first flush).
        rate: share of answers kept, in ``(0, 1]``.
        max_rows: rows kept from one sampled answer (a POST may carry up to 1,000 entities).
        seed: random seed of the gaps (tests); default: from the OS.
    """

    def __init__(self, directory: Path, rate: float, max_rows: int = 5, seed: int | None = None) -> None:
        if not 0 < rate <= 1:
            raise ValueError(f"sample rate must be in (0, 1], got {rate}")
        self.directory = directory
        self.rate = rate
        self.max_rows = max_rows
        self._rng = random.Random(seed)
        self._log1p = math.log1p(-rate) if rate < 1 else 0.0
        self._left = self._gap()
        self._buffer: list[tuple[int, bytes]] = []  # (as_of_us, JSON line)
        self._lock = threading.Lock()  # flush (a thread) vs. another flush
        self._name = f"{socket.gethostname()}-{os.getpid()}.jsonl"
        self.kept = 0
        self.written = 0

    def _gap(self) -> int:
        """Answers until the next kept one: geometric with mean ``1 / rate`` (1 when every answer is kept)."""
        if not self._log1p:
            return 1
        return int(math.log(1.0 - self._rng.random()) / self._log1p) + 1

    def tick(self) -> bool:
        """Count one answer; True when this one is to be kept (hot path: no allocation)."""
        self._left -= 1
        if self._left:
            return False
        self._left = self._gap()
        return True

    def add(self, body: Mapping[str, Any]) -> None:
        """Keep the rows of one ``/features`` answer (a ``FeaturesResponse`` dict)."""
        as_of = body["as_of_us"]
        head = {"as_of_us": as_of, "batch_version": body["batch_version"]}
        for row in body["rows"][: self.max_rows]:
            self._buffer.append((as_of, orjson.dumps({**head, "entity": row["entity"], "values": row["values"]})))
            self.kept += 1

    def take(self) -> list[tuple[int, bytes]]:
        """Remove and return the buffered lines (call on the thread that calls :meth:`add`)."""
        lines, self._buffer = self._buffer, []
        return lines

    def write(self, lines: list[tuple[int, bytes]]) -> int:
        """Append ``lines`` (from :meth:`take`) to their day files and fsync; returns the number written
        (safe in a thread)."""
        if not lines:
            return 0
        by_day: dict[Path, list[bytes]] = {}
        for as_of, line in lines:
            by_day.setdefault(day_dir(self.directory, as_of), []).append(line)
        with self._lock:
            for folder, chunk in by_day.items():
                folder.mkdir(parents=True, exist_ok=True)
                with open(folder / self._name, "ab") as f:
                    f.write(b"\n".join(chunk) + b"\n")
                    f.flush()
                    os.fsync(f.fileno())
            self.written += len(lines)
        return len(lines)

    def flush(self) -> int:
        """:meth:`take` and :meth:`write` in one call (same thread)."""
        return self.write(self.take())


def read_samples(directory: Path, since_us: int, until_us: int) -> Iterator[Sample]:
    """Samples with ``since_us <= as_of_us < until_us`` from every process's files of those days.

    A line that does not parse (a torn last line after a crash) is skipped, not fatal.
    """
    day = since_us - since_us % DAY
    while day < until_us:
        folder = day_dir(directory, day)
        for path in sorted(folder.glob("*.jsonl")) if folder.is_dir() else []:
            with open(path, "rb") as f:
                for line in f:
                    try:
                        rec = orjson.loads(line)
                        as_of = int(rec["as_of_us"])
                    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                        continue
                    if since_us <= as_of < until_us:
                        yield Sample(as_of, rec.get("batch_version"), dict(rec["entity"]), dict(rec["values"]))
        day += DAY


def prune(directory: Path, keep_days: int, now_us: int) -> int:
    """Delete the day folders older than ``keep_days`` days; returns how many went."""
    oldest = day_dir(directory, now_us - keep_days * DAY).name
    gone = 0
    for folder in directory.glob("????-??-??") if directory.is_dir() else []:
        if folder.is_dir() and folder.name < oldest:
            for f in folder.iterdir():
                f.unlink()
            folder.rmdir()
            gone += 1
    return gone
