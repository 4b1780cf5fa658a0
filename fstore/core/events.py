"""The generic part of the event contract of docs/design.md §2: decoding, the closed reason list, hashing,
timestamps and masking of dead letters.

:func:`parse_row` turns the original message bytes into either a normalised row of the declared schema
(checked by :class:`fstore.core.event_check.EventCheck`) or a :class:`Rejection` carrying exactly one reason
from the closed list :data:`REASONS`. Nothing raises on bad input: every message ends up as one or the
other, so adapters can count and dead-letter it. The fields themselves come from the user's repository.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from fstore.core.timeutil import MAX_MICROS, MINUTE, parse_timestamp

MAX_MESSAGE_BYTES = 64 * 1024
FUTURE_TOLERANCE = 5 * MINUTE

#: The reason of a message that passed validation but that a sink still refused (never given by :func:`parse_row`).
UNPROCESSABLE = "unprocessable"

#: The rejection reasons :func:`parse_row` gives, docs/design.md §2's closed list; ``<f>`` stands for a field
#: name. (A value outside a STRING field's declared values is ``unknown_<f>``, as the example schema's
#: ``unknown_event_type``; a number its type cannot hold is ``invalid_type:<f>``.)
REASONS = (
    "malformed_json",
    "oversized",
    "missing_field:<f>",
    "invalid_type:<f>",
    "invalid_id:<f>",
    "unknown_event_type",
    "negative_amount",
    "future_timestamp",
)
#: The closed list of dead-letter reasons: the rejection reasons of :func:`parse_row`, and :data:`UNPROCESSABLE`,
#: which the stream worker and ``fstore ingest`` give a valid message that a sink refused (they isolate it).
DEAD_LETTER_REASONS = (*REASONS, UNPROCESSABLE)

#: Epoch numbers are milliseconds (docs/design.md §2). A number below this (1973-03-03T09:46:40Z in ms) is far
#: more likely epoch *seconds* of today than a millisecond stamp of 1970–73: it is rejected as
#: ``invalid_type:event_time`` instead of being read as a date in 1970, as is one past 9999-12-31
#: (epoch microseconds or nanoseconds sent as milliseconds).
MIN_EPOCH_MS = 100_000_000_000


class Rejection(NamedTuple):
    """Why a message is not a valid event (one reason from :data:`REASONS`)."""

    reason: str


Loads = Callable[[bytes], Any]
#: A normalised event of a declared schema: field name → value, the timestamp field in UTC epoch µs.
Row = dict[str, Any]
#: A schema's check of one decoded object (:meth:`fstore.core.event_check.EventCheck.check`).
Check = Callable[[Mapping[str, Any], int], Row | Rejection]


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON constant {name}")


def _parse_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:20]} is infinite as a double")
    return value


def _parse_int(text: str) -> int | float:
    value = int(text)
    if -(2**63) <= value < 2**64:
        return value
    try:
        return float(value)  # beyond 64 bits: a double, as orjson does
    except OverflowError:
        raise ValueError(f"integer {text[:20]}... is infinite as a double") from None


def _lone_surrogate(obj: Any) -> bool:
    """Whether a decoded value holds a lone UTF-16 surrogate (``"\\ud800"`` escaped alone): text that is
    not Unicode, which orjson refuses. A valid escaped pair is one character once decoded."""
    stack = [obj]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            if not v.isascii() and any("\ud800" <= c <= "\udfff" for c in v):
                return True
        elif isinstance(v, dict):
            stack.extend(v)
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


def json_loads(raw: bytes) -> Any:
    """Strict JSON decoding with the standard library that agrees with ``orjson.loads``.

    The bytes must be UTF-8 without a byte-order mark, and text escapes must make Unicode (no lone
    surrogate); NaN/Infinity and numbers that overflow a double are malformed; integers beyond 64 bits
    become doubles. Adapters use orjson for speed; both decoders give every message the same verdict,
    but for arrays or objects nested about 1,000 deep (up to 1,023 for orjson, up to the interpreter's
    recursion limit here).
    """
    text = bytes(raw).decode("utf-8") if isinstance(raw, bytes | bytearray | memoryview) else raw
    obj = json.loads(text, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int)
    if _lone_surrogate(obj):
        raise ValueError("a lone UTF-16 surrogate escape is not Unicode text")
    return obj


def hashed(text: str) -> str:
    """A free-text value replaced by its hash (``h:`` + 32 hex digits, inside the id charset): the same
    text always gives the same id, and the text itself is never stored."""
    return "h:" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def payload_hash(raw: bytes) -> str:
    """Hash of the original message bytes; breaks ties between duplicates ingested at the same instant."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def payload_hashes(raws: Iterable[bytes]) -> list[str]:
    """:func:`payload_hash` of each message: copies of one empty 16-byte BLAKE2b state, each updated with its
    message (the same digest as a new ``blake2b(raw, digest_size=16)``, without parsing the keyword
    arguments once per message: ~20 % cheaper)."""
    empty = hashlib.blake2b(digest_size=16)
    out = []
    for raw in raws:
        h = empty.copy()
        h.update(raw)
        out.append(h.hexdigest())
    return out


def parse_row(raw: bytes, now: int, check: Check, loads: Loads = json_loads) -> Row | Rejection:
    """Decode one message and check it against a declared schema (docs/design.md §2).

    ``oversized`` and ``malformed_json`` are decided on the bytes (past :data:`MAX_MESSAGE_BYTES`; not a
    JSON object); every other reason comes from ``check``, built once from the plan's event schema
    (:class:`fstore.core.event_check.EventCheck`).

    Args:
        raw: the original message bytes (a Kafka value or a JSONL line without its newline).
        now: the processing clock, UTC epoch microseconds (for ``future_timestamp``).
        check: the schema's check of a decoded object.
        loads: a JSON decoder that raises ``ValueError`` on bad input (``orjson.loads`` in adapters).

    Returns:
        The normalised row, or a rejection with one reason.
    """
    if len(raw) > MAX_MESSAGE_BYTES:
        return Rejection("oversized")
    try:
        obj = loads(raw)
    except (ValueError, TypeError, RecursionError):
        return Rejection("malformed_json")
    if not isinstance(obj, dict):
        return Rejection("malformed_json")
    return check(obj, now)


_ID_CLASS = r"[A-Za-z0-9_.:-]{1,128}"
_match_id = re.compile(_ID_CLASS).fullmatch


def is_id(v: object) -> bool:
    """Whether ``v`` is an id: a string of 1–128 characters of ``[A-Za-z0-9_.:-]`` (event ids, entity keys)."""
    return isinstance(v, str) and _match_id(v) is not None


#: Ids already seen to match the id charset (entity keys repeat from event to event, so the
#: fast path checks each once): a memo of a pure predicate, emptied when it grows past _KNOWN_MAX.
_known_ids: set[str] = set()
_KNOWN_MAX = 100_000


def _good_id(v: str) -> bool:
    """``_ID.fullmatch(v)``, memoised for ids that match."""
    if v in _known_ids:
        return True
    if not _match_id(v):
        return False
    if len(_known_ids) >= _KNOWN_MAX:
        _known_ids.clear()
    _known_ids.add(v)
    return True


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _finite(v: Any) -> bool:
    """A JSON number that fits a float (huge integers overflow and are not finite amounts)."""
    try:
        return _number(v) and math.isfinite(v)
    except OverflowError:
        return False


def event_time_of(v: Any, name: str = "event_time") -> int | Rejection:
    """A timestamp field's value in UTC epoch µs: ISO-8601 with an offset, or epoch milliseconds (see
    :data:`MIN_EPOCH_MS`); ``name`` is the field named in the reason."""
    try:
        if isinstance(v, str):
            us = parse_timestamp(v)
        elif _finite(v):
            if not MIN_EPOCH_MS <= v <= MAX_MICROS // 1000:
                return Rejection(f"invalid_type:{name}")
            us = v * 1000 if isinstance(v, int) else round(v * 1000)
        else:
            return Rejection(f"invalid_type:{name}")
    except (ValueError, OverflowError):
        return Rejection(f"invalid_type:{name}")
    if not 0 <= us <= MAX_MICROS:
        return Rejection(f"invalid_type:{name}")
    return int(us)


def reason_family(reason: str) -> str:
    """The closed-list entry a reason belongs to (``missing_field:amount`` → ``missing_field:<f>``)."""
    head, sep, _ = reason.partition(":")
    return f"{head}:<f>" if sep else reason


_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.:+-]{0,128}")  # ids, event types, ISO-8601 times


def _nested_text(v: Any, raw: bytes, key: str) -> str:
    """The text a nested value is hashed from: its canonical JSON; for a value nested deeper than ``json.dumps``
    recurses (orjson decodes up to 1,024 levels, ``json.dumps`` stops near the interpreter's recursion limit),
    the message's hash and the field name instead — still nothing of the value, and the same for the same bytes."""
    try:
        return json.dumps(v, sort_keys=True, default=str)
    except RecursionError:
        return f"nested:{payload_hash(raw)}:{key}"


def mask_dead_letter(
    raw: bytes, fields: Iterable[str], loads: Loads = json_loads, keep_unparseable: bool = False
) -> bytes:
    """What the ``dead_letters`` table keeps of a rejected message: personal data never, by schema.

    A JSON object keeps only the declared ``fields`` (the plan's :attr:`EventSchema.names
    <fstore.core.event_schema.EventSchema.names>`); every other key is dropped, nested or
    not. Their values are kept when they are numbers, booleans, null or short id-like text; other text
    and nested values become :func:`hashed`. Anything else (not JSON, not an object) is kept only as
    ``{"unparseable": true, "size": N, "blake2b": H}`` unless ``keep_unparseable`` (an operator's
    choice, ``FSTORE_DEAD_LETTER_KEEP_UNPARSEABLE``).
    """
    try:
        obj = loads(raw)
    except (ValueError, TypeError, RecursionError):
        obj = None
    if not isinstance(obj, dict):
        if keep_unparseable:
            return raw
        return json.dumps({"unparseable": True, "size": len(raw), "blake2b": payload_hash(raw)}).encode()
    kept: dict[str, Any] = {}
    for key in fields:
        if key not in obj:
            continue
        v = obj[key]
        if v is None or isinstance(v, bool | int | float) or (isinstance(v, str) and _SAFE_TEXT.fullmatch(v)):
            kept[key] = v
        elif isinstance(v, str):
            kept[key] = hashed(v)
        else:
            kept[key] = hashed(_nested_text(v, raw, key))
    dropped = len(obj) - len(kept)
    if dropped:
        kept["dropped_fields"] = dropped
    return json.dumps(kept, separators=(",", ":")).encode()
