"""Free the Redis state of features nobody reads any more (docs/design.md §3 "Evolution").

When an applied change removes a view, every key of the view goes (tiles of both layers, markers); when
it removes a tile series — one measure's tiles of one size — its fields go from every tile hash of the
view (statistics, distinct members); when a kept series sheds a state (its last std/var, its last
count_distinct), that state's fields go (m2, distinct members). Keys are found with ``SCAN`` (every
primary on a Redis Cluster) by the view's hash-tag prefix (:func:`fstore.redis.layout.entity_tag`), never with ``KEYS``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from fstore.core.timeutil import SECOND
from fstore.redis.connect import AdminClient
from fstore.redis.layout import DISTINCT, FUTURE_PREFIX, M2_STAT, PREFIX

BATCH = 500
#: The field stat of each state kept apart (a sketch has no fields yet: nothing to free).
_STATS = {"m2": M2_STAT, "distinct": DISTINCT}


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


def free_series(client: AdminClient, view: str, series: Iterable[tuple[int, str, str]]) -> Freed:
    """Remove from every tile hash of ``view`` the fields of the tile series ``(hop µs, measure, "")``, and of
    the state ``(hop µs, measure, state)`` only."""
    wanted: dict[tuple[int, str], set[str]] = {}
    for hop, measure, state in series:
        if not state or state in _STATS:
            wanted.setdefault((hop // SECOND, measure), set()).add(_STATS.get(state, ""))
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
            parts = text.split(":", 4)  # size:start:measure[:stat[:member]]
            stats = wanted.get((int(parts[0]), parts[2])) if len(parts) >= 3 and parts[0].isdigit() else None
            if stats is not None and ("" in stats or (len(parts) > 3 and parts[3] in stats)):
                doomed.append(text)
        for i in range(0, len(doomed), BATCH):
            out.fields += int(client.hdel(key, *doomed[i : i + BATCH]))
    return out
