"""What docs/design.md §7 promises of Redis: it holds only rebuildable state, every key with a TTL."""

from __future__ import annotations

import redis


def keys_without_ttl(client: redis.Redis) -> list[str]:
    """Every key of ``client``'s database that has no TTL (``TTL`` = -1), sorted."""
    out = []
    for k in client.scan_iter(count=10_000):
        if client.ttl(k) == -1:
            out.append(k.decode() if isinstance(k, bytes) else str(k))
    return sorted(out)
