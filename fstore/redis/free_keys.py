"""Free the Redis state of features nobody reads any more (docs/design.md §3 "Evolution").

When an applied change removes a view, every key of the view goes (tiles of both layers, markers); when
it removes a tile series — one measure's tiles of one size — its fields go from every tile hash of the
view (statistics, distinct members). Keys are found with ``SCAN`` (every primary on a Redis Cluster) by
the view's hash-tag prefix (:func:`fstore.redis.layout.entity_tag`), never with ``KEYS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fstore.core.timeutil import SECOND
from fstore.redis.connect import AdminClient
from fstore.redis.layout import FUTURE_PREFIX, PREFIX

BATCH = 500


@dataclass
class Freed:
    """What one call freed."""

    keys: int = 0
    fields: int = 0


def view_keys(client: AdminClient, view: str) -> Iterable[str]:
    """Every key of ``view`` (all entities, both layers, markers)."""
    pattern = f"{PREFIX}:{{{_glob_escape(view)}|*"
    for key in client.scan_iter(match=pattern, count=1000):
        yield key.decode() if isinstance(key, bytes) else key


def _glob_escape(text: str) -> str:
    return "".join(f"\\{c}" if c in "*?[]\\" else c for c in text)


def free_views(client: AdminClient, views: Iterable[str]) -> Freed:
    """Delete every key of ``views``."""
    out = Freed()
    for view in views:
        batch: list[str] = []
        for key in view_keys(client, view):
            batch.append(key)
            if len(batch) >= BATCH:
                out.keys += _delete(client, batch)
                batch = []
        if batch:
            out.keys += _delete(client, batch)
    return out


def _delete(client: AdminClient, keys: list[str]) -> int:
    pipe = client.pipeline(transaction=False)
    for k in keys:  # one key per command: on a cluster, keys of one call must share a slot
        pipe.unlink(k)
    return sum(int(n) for n in pipe.execute())


def free_series(client: AdminClient, view: str, series: Iterable[tuple[int, str]]) -> Freed:
    """Remove the fields of the tile series ``(hop µs, measure)`` of ``view`` from every tile hash."""
    wanted = {(hop // SECOND, measure) for hop, measure in series}
    out = Freed()
    if not wanted:
        return out
    for key in view_keys(client, view):
        kind = key.rsplit(":", 2)[-2]
        if kind not in ("s", "b"):
            continue  # marker hashes hold event ids, not tiles
        doomed: list[str] = []
        for name, _ in client.hscan_iter(key, count=1000):
            text = name.decode() if isinstance(name, bytes) else name
            if text.startswith(FUTURE_PREFIX):
                continue  # a future event's field: other series read it too, and it expires with its hash
            parts = text.split(":", 3)
            if len(parts) >= 3 and parts[0].isdigit() and (int(parts[0]), parts[2]) in wanted:
                doomed.append(text)
        for i in range(0, len(doomed), BATCH):
            out.fields += int(client.hdel(key, *doomed[i : i + BATCH]))
    return out
