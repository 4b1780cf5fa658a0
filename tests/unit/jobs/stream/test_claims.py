"""The event_id claims' packing (:mod:`jobs.stream.claims`), against a brute force of the claim layout.

Each first copy must go to the script call of its bucket (``fstore.redis.layout.claim_bucket``: CRC-32 of the
id) with the value ``payload hash[:16]`` plus, for a copy going to the tiles, ``"|"`` and its entities'
``str`` (``""`` for none) joined by ``\\x1f``; a reply's 1-based positions must map back to those ids.
"""

from __future__ import annotations

import random
from typing import Any

import hiredis
import orjson
import pytest
from redis.crc import key_slot

from fstore.redis.layout import CLAIM_BUCKETS, claim_bucket, claim_key
from jobs.stream.claims import CLAIM_SHA, HASH_CHARS, SEP, claim_values, pack_claims
from jobs.stream.pipeline import Claims

pytestmark = pytest.mark.unit

KEYS = ("user_id", "product_id")


def brute_value(digest: str, row: dict[str, Any] | None, keys: tuple[str, ...]) -> str:
    """The claim value as docs/stream.md states it, one copy at a time."""
    if row is None:
        return digest[:HASH_CHARS]
    return digest[:HASH_CHARS] + "|" + SEP.join("" if row[k] is None else str(row[k]) for k in keys)


def sample(n: int, seed: int) -> Claims:
    """First copies with text, integer, float and missing entities; some too old for the tiles."""
    rng = random.Random(seed)
    out = Claims()
    for i in range(n):
        entity: Any = rng.choice([f"u{i % 97}", i % 13, 0, -5, 1.5, None, "", "p|x"])
        row = None if rng.random() < 0.2 else {"event_id": f"e{i}", "user_id": f"u{i % 7}", "product_id": entity}
        out.ids.append(f"e{i}-{rng.randrange(10**9)}")
        out.hashes.append(f"{rng.getrandbits(128):032x}")
        out.rows.append(row)
    return out


def calls(packed: list[bytes]) -> list[list[bytes]]:
    """The packed RESP commands, parsed (a command is an array of bulk strings, as a reply would be)."""
    reader = hiredis.Reader()
    out = []
    for one in packed:
        reader.feed(one)
        out.append(reader.gets())
    return out


@pytest.mark.parametrize("keys", [KEYS, ("product_id",), ("product_id", "user_id", "event_id")])
def test_claim_values_match_the_layout_copy_by_copy(keys: tuple[str, ...]) -> None:
    c = sample(500, 1)
    assert claim_values(keys)(c.hashes, c.rows) == [
        brute_value(h, r, keys) for h, r in zip(c.hashes, c.rows, strict=True)
    ]


@pytest.mark.parametrize("chunk", [2_000, 7])
def test_each_copy_goes_to_its_bucket_with_its_value(chunk: int) -> None:
    c = sample(400, 2)
    packed = pack_claims(c, KEYS, generation=1234, ttl=77, chunk=chunk)
    expected: dict[int, list[str]] = {}
    for eid, h, r in c:
        expected.setdefault(claim_bucket(eid), []).extend([eid, brute_value(h, r, KEYS)])
    got: dict[int, list[str]] = {}
    for cmd, slot_flat, slot in zip(calls(packed.packed), packed.claims, packed.slots, strict=True):
        assert cmd[:3] == [b"EVALSHA", CLAIM_SHA.encode(), b"3"] and cmd[6] == b"77"
        bucket = int(cmd[3].decode().split("{claim:")[1].split("}")[0])
        assert [k.decode() for k in cmd[3:6]] == [claim_key(bucket, g) for g in (1233, 1234, 1235)]
        flat = orjson.loads(cmd[7])
        assert flat == slot_flat and len(flat) <= 2 * chunk
        assert slot == key_slot(cmd[3])  # the three generations share the bucket's hash slot
        got.setdefault(bucket, []).extend(flat)
    assert got == expected and set(got) <= set(range(CLAIM_BUCKETS))


def test_a_reply_names_the_ids_to_drop_by_position() -> None:
    c = Claims(
        ["a", "b", "c"],
        ["1" * 32, "2" * 32, "3" * 32],
        [{"user_id": "u1", "product_id": "p1"}, None, {"user_id": "u1", "product_id": None}],
    )
    packed = pack_claims(c, KEYS, generation=5, ttl=10, chunk=1)  # one id per call
    by_id = {flat[0]: i for i, flat in enumerate(packed.claims)}
    replies: list[list[Any]] = [[] for _ in packed.claims]
    replies[by_id["a"]] = [1, b"9" * 16 + b"|u2" + SEP.encode() + b"p1"]  # first copy under another user: drop
    replies[by_id["b"]] = [1, b"9" * 16 + b"|u1" + SEP.encode() + b"p1"]  # too old for the tiles itself: nothing
    replies[by_id["c"]] = [1, b"9" * 16 + b"|u1" + SEP.encode()]  # first copy under the same entities: markers
    assert packed.to_drop(replies) == {"a"}
