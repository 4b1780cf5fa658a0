"""Slot routing of the Redis Cluster pools (fstore/redis/cluster.py) and the tile writer's partial failures,
without a server (the real cluster: tests/integration/test_redis_cluster.py)."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
import redis.exceptions as rex

from fstore.online.reader import GET_POINTER, POINTER_SLOT, wire_slots
from fstore.redis.cluster import ClusterPool, _payload, _Router, _unask, error_of, parse_slots, seeds_of, slot_of
from fstore.redis.layout import POINTER_KEY, batch_key, speed_key
from fstore.redis.resp import hgetall
from jobs.stream.sinks import TileWriter
from tests.support.legacy.events_example import Event
from tests.support.repos import compiled

pytestmark = pytest.mark.unit

A, B, C = ("10.0.0.1", 7000), ("10.0.0.2", 7001), ("10.0.0.3", 7002)


def slots_reply() -> list[Any]:
    return [
        [0, 5460, [b"10.0.0.1", 7000, b"id-a"], [b"10.0.0.9", 7009, b"id-r"]],
        [5461, 10922, [b"10.0.0.2", 7001, b"id-b"]],
        [10923, 16383, [b"", 7002, b"id-c"]],  # empty host: the node that was asked
    ]


def test_parse_slots_maps_every_slot_to_its_primary() -> None:
    owners = parse_slots(slots_reply(), ("10.0.0.3", 7002))
    assert owners[0] == owners[5460] == A and owners[5461] == owners[10922] == B and owners[16383] == C
    with pytest.raises(rex.ClusterDownError, match="1 hash slots"):
        parse_slots([[0, 16382, [b"h", 1, b"x"]]], A)


def test_seeds_of_reads_every_seed_and_the_first_seeds_credentials() -> None:
    assert seeds_of("redis://:pw@h1:7000,h2:7001, redis://h3:7002") == (
        [("h1", 7000), ("h2", 7001), ("h3", 7002)],
        {"password": "pw"},
    )
    # an empty part (a stray comma) is skipped, and the credentials still come from the first seed named
    assert seeds_of(",redis://u:pw@h1:7000,,h2") == ([("h1", 7000), ("h2", 6379)], {"username": "u", "password": "pw"})
    assert seeds_of("h1:7000") == ([("h1", 7000)], {})


def test_wire_slots_are_the_slots_of_the_keys() -> None:
    """The reader computes a command's slot on its bytes: equal to the key's slot for any entity string."""
    rng = random.Random(3)
    alphabet = "ab{}|:-_. 9é"
    for _ in range(2000):
        entity = "".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 8)))
        for key in (batch_key("user_activity", entity, "v1"), speed_key("product_engagement", entity, 0)):
            assert wire_slots([hgetall(key)]) == [slot_of(key)], key
    assert wire_slots([GET_POINTER]) == [POINTER_SLOT] == [slot_of(POINTER_KEY)]


def test_router_groups_by_node_and_follows_moved_and_ask() -> None:
    router = _Router([A])
    owners = router.learn(parse_slots(slots_reply(), C))
    slots = [0, 6000, 12000, 1, 6001]
    asking: dict[int, tuple[str, int]] = {}
    assert router.group(owners, range(5), slots, asking) == {A: [0, 3], B: [1, 4], C: [2]}
    out: list[Any] = [None] * 5
    moved = rex.ResponseError("MOVED 0 10.0.0.2:7001")
    ask = rex.ResponseError("ASK 3 10.0.0.3:7002")
    assert router.absorb(A, [0, 3], [moved, ask], out, asking) == [0, 3]
    assert router.owners is None  # MOVED: the map is read again before the next round
    assert asking == {3: C}
    assert router.absorb(B, [1, 4], [b"x", rex.ResponseError("NOSCRIPT No matching script")], out, asking) == []
    assert out[1] == b"x" and isinstance(out[4], rex.NoScriptError)
    owners = router.learn(parse_slots(slots_reply(), C))
    assert router.group(owners, [0, 3], slots, asking) == {A: [0], C: [3]}
    down = rex.ConnectionError("refused")
    assert router.absorb(C, [2], down, out, asking) == [] and out[2] is down and router.owners is None


def test_asking_prefix_and_its_replies_are_dropped() -> None:
    cmds = [b"c0", b"c1", b"c2"]
    payload, n = _payload(cmds, [0, 1, 2], {1: A})
    assert payload == b"c0*1\r\n$6\r\nASKING\r\nc1c2" and n == 4
    assert _unask([b"r0", b"OK", b"r1", b"r2"], [0, 1, 2], {1: A}) == [b"r0", b"r1", b"r2"]


def test_error_of_names_cluster_errors() -> None:
    assert isinstance(error_of(rex.ResponseError("CLUSTERDOWN The cluster is down")), rex.ClusterDownError)
    assert isinstance(error_of(rex.ResponseError("TRYAGAIN multi-key")), rex.TryAgainError)
    assert error_of(b"ok") == b"ok"


class FlakyCluster(ClusterPool):
    """Answers the first call of each round with "no duplicates" and fails every other call once."""

    def __init__(self, error: Exception) -> None:
        super().__init__([A])
        self.error, self.loaded = error, 0
        self.rounds: list[list[int]] = []

    async def execute(self, commands: Any, slots: Any) -> list[Any]:
        self.rounds.append(list(slots))
        first = len(self.rounds) == 1
        return [[] if i == 0 or not first else self.error for i in range(len(commands))]

    async def script_load(self, script: str) -> str:
        self.loaded += 1
        from jobs.stream.speed_lua import APPLY_TILES_SHA

        return APPLY_TILES_SHA


def events() -> list[dict[str, object]]:
    return [
        Event(f"e{i}", "click", f"u{i}", f"p{i}", 1_700_000_000_000_000, None, 1, None)._asdict() for i in range(40)
    ]


@pytest.mark.parametrize("error", [rex.ConnectionError("node down"), rex.NoScriptError("NOSCRIPT x")])
def test_tile_writer_resends_only_the_calls_that_failed(error: Exception) -> None:
    pool = FlakyCluster(error)
    writer = TileWriter(pool, compiled("ecommerce"), 60, 60, views=["user_activity"])
    plan = writer.plan(events())
    n_calls = len(plan.calls)
    assert n_calls > 1 and len({s for s in (c.subs[0][1].slot for c in plan.calls)}) == n_calls  # one per slot
    if isinstance(error, rex.NoScriptError):
        assert asyncio.run(writer.send(plan)) == set()
        assert pool.loaded == 1  # loaded on every primary, then the failed calls only were sent again
    else:
        with pytest.raises(rex.ConnectionError):
            asyncio.run(writer.send(plan))
        assert asyncio.run(writer.send(plan)) == set()  # the worker's retry
    assert len(pool.rounds[1]) == n_calls - 1 and pool.rounds[1] == pool.rounds[0][1:]
