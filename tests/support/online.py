"""Serving-layer test data: events around a cutover and a loader that writes both views as the layers do."""

from __future__ import annotations

import random
from typing import Any

import redis

from fstore.core.timeutil import DAY, HOUR, MINUTE, parse_timestamp
from fstore.redis.layout import POINTER_KEY, BatchPointer, batch_key, partial_fields, speed_key
from tests.support.legacy.events_example import Event
from tests.support.legacy.features import VIEWS
from tests.support.legacy.tiles import build_tiles

C = parse_timestamp("2026-11-21T00:00:00Z")  # the cutover
AS_OF = C + 13 * HOUR + 7 * MINUTE + 123_456


def make_events(seed: int, n: int = 3000) -> list[Event]:
    rng = random.Random(seed)
    types = ["page_view", "impression", "click", "add_to_cart", "purchase"]
    out = []
    for i in range(n):
        t = AS_OF - rng.randrange(1, 9 * DAY)  # before as_of, across the cutover
        if i % 10 == 0:
            t = C + rng.choice([-1, 0, 1]) * rng.randrange(0, 5)  # right at the cutover
        out.append(
            Event(
                f"e{seed}-{i}",
                rng.choice(types),
                f"u{rng.randrange(5)}",
                f"p{rng.randrange(5)}",
                t,
                round(rng.uniform(1, 90), 2),
                rng.randint(1, 3),
                None,
            )
        )
    return out


def make_rows(seed: int, n: int = 3000) -> list[dict[str, Any]]:
    """:func:`make_events` as rows of the example's event schema (the same events)."""
    return [dict(e._asdict()) for e in make_events(seed, n)]


def load_rows(
    client: redis.Redis | redis.RedisCluster, rows: list[dict[str, Any]], version: str | None, cutover: int
) -> None:
    """Write the example plan's views of ``rows`` as the layers do (batch packed with m2 before the
    cutover under ``version``, speed per statistic from it on): :func:`tests.support.plan_online.load_plan`."""
    from fstore.plan_source import current_plan
    from tests.support.plan_online import load_plan

    load_plan(client, current_plan(), rows, version, cutover)  # type: ignore[arg-type]


def load(client: redis.Redis | redis.RedisCluster, events: list[Event], version: str | None, cutover: int) -> None:
    """Write batch tiles (< cutover) under ``version`` and speed tiles (>= cutover), as the layers do."""
    pipe = client.pipeline(transaction=False)
    for view in VIEWS.values():
        for (entity, size, start), tile in build_tiles(view, events).items():
            for measure, p in tile.items():
                fields = partial_fields(size, start, measure, p)
                if start < cutover:
                    if version is not None:
                        pipe.hset(batch_key(view.name, entity, version), mapping=dict[Any, Any](fields))
                else:
                    pipe.hset(speed_key(view.name, entity, start), mapping=dict[Any, Any](fields))
    pipe.execute()
    if version is not None:
        client.set(POINTER_KEY, BatchPointer(version, cutover).dumps())
