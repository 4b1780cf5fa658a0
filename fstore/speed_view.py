"""Read the speed view: an entity's speed tiles from Redis in the core tile form (DESIGN.md §4, §5).

The stream worker writes speed tiles as per-UTC-day hashes (:func:`fstore.redis_layout.speed_key`); the
serving layer merges them with batch tiles. Both the synchronous and the asyncio Redis clients work:
:func:`speed_keys` gives the keys to ``HGETALL`` and :func:`decode_speed_tiles` turns the replies into
``{TileKey: {measure: Partial}}``, which :func:`fstore.core.tiles.lookup_in` / ``evaluate`` consume.

Example::

    tiles = read_speed_tiles(client, USER_ACTIVITY, "u000042", since=cutover, until=now)
    values = evaluate(USER_ACTIVITY, lookup_in(tiles, "u000042"), now)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fstore.core.features import FeatureView
from fstore.core.tiles import Tile, TileKey
from fstore.core.timeutil import DAY, floor_to
from fstore.redis_layout import parse_tiles, speed_key

RawHash = Mapping[bytes | str, bytes | str]


def speed_keys(view: FeatureView, entity: str, since: int, until: int) -> list[str]:
    """Keys of the day hashes that may hold tiles starting in ``[since, until]`` (epoch microseconds)."""
    if until < since:
        return []
    return [speed_key(view.name, entity, day) for day in range(floor_to(since, DAY), until + 1, DAY)]


def decode_speed_tiles(entity: str, replies: Sequence[RawHash], since: int | None = None,
                       until: int | None = None) -> dict[TileKey, Tile]:
    """``HGETALL`` replies of :func:`speed_keys` → tiles, keeping starts in ``[since, until]`` if given."""
    out: dict[TileKey, Tile] = {}
    for raw in replies:
        for (size, start), tile in parse_tiles(raw).items():
            if (since is None or start >= since) and (until is None or start <= until):
                out[TileKey(entity, size, start)] = tile
    return out


def read_speed_tiles(client: Any, view: FeatureView, entity: str, since: int, until: int) -> dict[TileKey, Tile]:
    """Speed tiles of one entity whose start lies in ``[since, until]``, in one pipelined round trip.

    Args:
        client: a synchronous ``redis.Redis`` (or cluster) client.
        view: the feature view.
        entity: the entity key (user_id or product_id).
        since: earliest tile start wanted, UTC epoch microseconds (normally the cutover C).
        until: latest tile start wanted (normally the request time t).
    """
    keys = speed_keys(view, entity, since, until)
    if not keys:
        return {}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return decode_speed_tiles(entity, pipe.execute(), since, until)


async def aread_speed_tiles(client: Any, view: FeatureView, entity: str, since: int,
                            until: int) -> dict[TileKey, Tile]:
    """:func:`read_speed_tiles` for a ``redis.asyncio`` client."""
    keys = speed_keys(view, entity, since, until)
    if not keys:
        return {}
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hgetall(key)
    return decode_speed_tiles(entity, await pipe.execute(), since, until)
