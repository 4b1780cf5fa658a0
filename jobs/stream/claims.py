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

import functools
import hashlib
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis.crc import key_slot

from fstore.core.events import Row
from fstore.redis.layout import CLAIM_BUCKETS, claim_key
from fstore.redis.resp import command
from jobs.stream.pipeline import Claims

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
    if string.sub(v, 1, HASH) ~= string.sub(a[2 * i], 1, HASH) then
      lost[#lost + 1] = i
      lost[#lost + 1] = v
    end
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
#: Characters of the payload hash that identify a copy in a claim's value (64 bits).
HASH_CHARS = 16
CLAIM = CLAIM.replace("HASH", str(HASH_CHARS))
CLAIM_SHA = hashlib.sha1(CLAIM.encode()).hexdigest()

#: Most ids in one script call (Lua's ``unpack`` takes a few thousand values).
CHUNK = 2_000
#: Separates the entities in a claim's value.
SEP = "\x1f"


@dataclass
class ClaimCalls:
    """A batch's claims packed as script calls: the request bytes, the hash slot and the claims of each call."""

    packed: list[bytes] = field(default_factory=list)
    slots: list[int] = field(default_factory=list)
    claims: list[list[str]] = field(default_factory=list)  # per call: [event_id, value sent, event_id, ...]

    def to_drop(self, replies: Sequence[Sequence[Any]]) -> set[str]:
        """The ids another copy claimed first whose rows must leave the tiles: every one but a copy whose
        first copy went to the tiles of the same entities (their markers skip it in the same step)."""
        out: set[str] = set()
        for flat, reply in zip(self.claims, replies, strict=True):
            for j in range(0, len(reply), 2):
                at = 2 * (int(reply[j]) - 1)
                event_id, sent = flat[at], flat[at + 1]
                first = reply[j + 1]
                first = first.decode() if isinstance(first, bytes) else str(first)
                mine = sent[HASH_CHARS:]
                if mine and first[HASH_CHARS:] != mine:  # in the tiles, and not under the first copy's markers
                    out.add(event_id)
        return out


#: ``(payload hashes, rows or None) -> claim values`` of one tuple of join keys (:func:`claim_values`).
Values = Callable[[Sequence[str], Sequence[Row | None]], list[str]]


@functools.cache
def claim_values(keys: tuple[str, ...]) -> Values:
    """What each copy claims with: its payload hash (first :data:`HASH_CHARS`), then, for a copy going to the
    tiles, ``"|"`` and its entities (``keys``' values, ``""`` for a missing one, :data:`SEP`-joined); the hash
    alone for a copy too old for the tiles (``row`` ``None``), which sets no markers.

    Compiled once per tuple of keys into one comprehension (as :mod:`fstore.core.event_accept` compiles its
    checks): this runs for every event, and a call, a join and a list per copy cost the worker more than
    the rest of its claims. A value is formatted with ``format(value, "")``, which is ``str(value)`` for
    every JSON type."""
    env: dict[str, Any] = {f"K{i}": k for i, k in enumerate(keys)}  # names, not literals: any field name
    sep = SEP.encode("unicode_escape").decode()
    fields = sep.join(f"{{'' if r[K{i}] is None else r[K{i}]}}" for i in range(len(keys)))
    source = (
        "def values(hashes, rows):\n"
        f'    return [h[:{HASH_CHARS}] if r is None else f"{{h[:{HASH_CHARS}]}}|{fields}"\n'
        "            for h, r in zip(hashes, rows, strict=True)]\n"
    )
    exec(compile(source, f"<claim values {keys!r}>", "exec"), env)
    fn: Values = env["values"]
    fn.__doc__ = source
    return fn


def pack_claims(claims: Claims, keys: Sequence[str], generation: int, ttl: int, chunk: int = CHUNK) -> ClaimCalls:
    """Script calls claiming a batch's first copies (ids unique) in marker generation ``generation``, whose
    hashes have ``ttl`` seconds left (:func:`jobs.stream.speed_lua.marker_generation`); ``keys``: the join
    keys of the views the tiles keep. Each id goes to its bucket's call (:func:`fstore.redis.layout.claim_bucket`,
    inlined: CRC-32 of the id)."""
    values = claim_values(tuple(keys))(claims.hashes, claims.rows)
    by_bucket: list[list[str]] = [[] for _ in range(CLAIM_BUCKETS)]  # per bucket: id, value, id, value, ...
    crc = zlib.crc32
    for event_id, value in zip(claims.ids, values, strict=True):
        flat = by_bucket[crc(event_id.encode()) % CLAIM_BUCKETS]
        flat.append(event_id)
        flat.append(value)
    out = ClaimCalls()
    for bucket, flat in enumerate(by_bucket):
        if not flat:
            continue
        keys3 = [claim_key(bucket, generation + d) for d in (-1, 0, 1)]
        slot = int(key_slot(keys3[0].encode()))
        for lo in range(0, len(flat), 2 * chunk):
            part = flat[lo : lo + 2 * chunk]
            out.packed.append(command("EVALSHA", CLAIM_SHA, 3, *keys3, ttl, orjson.dumps(part)))
            out.slots.append(slot)
            out.claims.append(part)
    return out
