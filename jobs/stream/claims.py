"""Event_id claims: the first copy of an event_id is the only one any worker counts (docs/design.md §2).

The speed tiles' markers (:mod:`jobs.stream.speed_lua`) live with the tiles of one ``(view, entity)``, so
that a subgroup is checked and applied in one atomic step on one Redis Cluster slot. They cannot see a copy
of the same event_id sent with *another* entity (a re-sent event whose user or product changed), nor a
first copy too old for the tiles, which sets no marker at all. Both would let a later copy count online
while the batch layer and point-in-time reads count the first copy only.

So before its tiles, a batch *claims* the event_id of each of its first copies (those inside the horizon
and those beyond it): field event_id of the claims hash of the id's bucket and marker generation
(:func:`fstore.redis.layout.claim_key`), value the copy's payload hash. The first claim of an id stands;
a copy whose claim finds another payload hash is a later copy and is dropped from the tiles. A copy that
finds its own hash is the same copy again (a redelivery after a crash between claim and tiles): it goes on
to the tiles, whose markers make that idempotent. Nothing is lost whatever fails in between: a claim never
counts anything, it only decides which copy may.

Claims live like markers (generation ``g`` of the processing clock, checked in g − 1, g, g + 1, set in g,
expiring at ``(g + 2)·T``): a copy arriving after that is the documented limit of the speed layer's
de-duplication (docs/stream.md).

Script arguments: ``KEYS`` = the bucket's claims hashes of generations g − 1, g, g + 1; ``ARGV`` = the
seconds generation g has left, then a JSON array ``[id, hash, id, hash, ...]``. The reply is the 1-based
positions of the ids claimed by another copy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import orjson
from redis.crc import key_slot

from fstore.redis.layout import CLAIM_BUCKETS, claim_bucket, claim_key
from fstore.redis.resp import command

CLAIM = r"""
local a = cjson.decode(ARGV[2])
local n = #a / 2
local ids = {}
for i = 1, n do ids[i] = a[2 * i - 1] end
local cur = redis.call('HMGET', KEYS[2], unpack(ids))
local prev, nxt
if redis.call('EXISTS', KEYS[1]) == 1 then prev = redis.call('HMGET', KEYS[1], unpack(ids)) end
if redis.call('EXISTS', KEYS[3]) == 1 then nxt = redis.call('HMGET', KEYS[3], unpack(ids)) end
local lost, set = {}, {}
for i = 1, n do
  local v = cur[i]
  if not v and prev then v = prev[i] end
  if not v and nxt then v = nxt[i] end
  if v then
    if v ~= a[2 * i] then lost[#lost + 1] = i end
  else
    set[#set + 1] = ids[i]
    set[#set + 1] = a[2 * i]
  end
end
if #set > 0 then
  redis.call('HSET', KEYS[2], unpack(set))
  redis.call('EXPIRE', KEYS[2], ARGV[1])
end
return lost
"""
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest()

#: Most ids in one script call (Lua's ``unpack`` takes a few thousand values).
CHUNK = 2_000
#: Characters of the payload hash kept as a claim's value (64 bits).
HASH_CHARS = 16


@dataclass
class ClaimCalls:
    """A batch's claims packed as script calls: the request bytes, the hash slot and the ids of each call."""

    packed: list[bytes] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    ids: list[list[str]] = field(default_factory=list)

    def lost(self, replies: Sequence[Sequence[int]]) -> set[str]:
        """The ids claimed by another copy, from the calls' replies (in order)."""
        return {ids[int(i) - 1] for ids, reply in zip(self.ids, replies, strict=True) for i in reply}


def pack_claims(claims: Sequence[tuple[str, str]], generation: int, ttl: int, chunk: int = CHUNK) -> ClaimCalls:
    """Script calls claiming ``(event_id, payload hash)`` pairs (ids unique) in marker generation
    ``generation``, whose hashes have ``ttl`` seconds left (:func:`jobs.stream.speed_lua.marker_generation`)."""
    by_bucket: list[list[str]] = [[] for _ in range(CLAIM_BUCKETS)]
    for event_id, digest in claims:
        by_bucket[claim_bucket(event_id)] += (event_id, digest[:HASH_CHARS])
    out = ClaimCalls()
    for bucket, flat in enumerate(by_bucket):
        if not flat:
            continue
        keys = [claim_key(bucket, generation + d) for d in (-1, 0, 1)]
        slot = int(key_slot(keys[0].encode()))
        for lo in range(0, len(flat), 2 * chunk):
            part = flat[lo : lo + 2 * chunk]
            out.packed.append(command("EVALSHA", CLAIM_SHA, 3, *keys, ttl, orjson.dumps(part)))
            out.slots.append(slot)
            out.ids.append(part[::2])
    return out
