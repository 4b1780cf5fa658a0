"""Invalid messages for the generator: one per rejection reason family, cycling evenly.

Message ``j`` of a run belongs to family ``FAMILIES[j % len(FAMILIES)]`` and, inside the family, to variant
``(j // len(FAMILIES)) % len(variants)``, so every family and every variant occurs once enough messages are
made. The families are the closed list of reasons, plus ``out_of_range``: numbers of the right JSON type
that their type cannot hold, which are ``invalid_type:<f>`` too.
Each message is built from an otherwise valid event and carries the exact reason that the event contract of
the schema ``feature_repo/`` declares gives it (with ``now`` = the end of the generated range); the unit
tests check that. Every message is a single line (no newline inside).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime
from typing import Any, NamedTuple

import numpy as np

from fstore.core.events import MAX_MESSAGE_BYTES, REASONS
from fstore.core.timeutil import MILLISECOND, from_micros

#: The generator's families of invalid messages, in the order it cycles through them.
FAMILIES = (*REASONS[:-1], "out_of_range", REASONS[-1])

#: Serialises a JSON-compatible object to compact bytes (``orjson.dumps`` in the CLI).
Dumps = Callable[[Any], bytes]

#: Ten years (365-day years) in milliseconds: how far after the range a ``future_timestamp`` lies.
FUTURE_OFFSET_MS = 10 * 365 * 86_400_000


def compact_dumps(obj: Any) -> bytes:
    """Compact UTF-8 JSON with the standard library; same bytes as ``orjson.dumps`` for generator data."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def iso_ms(ms: int) -> str:
    """UTC epoch milliseconds as ISO-8601 with millisecond precision and a ``Z`` offset."""
    return from_micros(ms * MILLISECOND).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class Malformed(NamedTuple):
    """One invalid message: its Kafka key, its bytes and the reason it must be rejected with."""

    key: str | None
    value: bytes
    reason: str


def base_event(
    event_id: str, event_type: str, user_id: str, product_id: str, session_id: str, time_ms: int, price_cents: int
) -> dict[str, Any]:
    """A valid event as a dict (price and quantity only for add_to_cart and purchase)."""
    obj: dict[str, Any] = {
        "event_id": event_id,
        "event_type": event_type,
        "user_id": user_id,
        "product_id": product_id,
        "session_id": session_id,
        "event_time": iso_ms(time_ms),
    }
    if event_type in ("add_to_cart", "purchase"):
        obj["price"] = price_cents / 100
        obj["quantity"] = 1
    return obj


def _purchase(obj: dict[str, Any]) -> dict[str, Any]:
    obj["event_type"] = "purchase"
    obj.setdefault("price", 9.99)
    obj.setdefault("quantity", 1)
    return obj


def _malformed_json(obj: dict[str, Any], v: int, rng: np.random.Generator, dumps: Dumps) -> bytes:
    text = dumps(obj)
    if v == 0:  # truncated in transit: any strict prefix of an object is not JSON
        return text[: int(rng.integers(1, len(text)))]
    if v == 1:  # valid JSON, but not an object
        return dumps(list(obj.values()))
    return "&".join(f"{k}={val}" for k, val in obj.items()).encode()  # form-encoded, not JSON


def _oversized(obj: dict[str, Any], v: int, rng: np.random.Generator, dumps: Dumps) -> bytes:
    obj["padding"] = "x" * (MAX_MESSAGE_BYTES + int(rng.integers(0, 256)))
    return dumps(obj)


_MISSING = ("event_id", "event_type", "user_id", "product_id", "event_time", "price")
_BAD_TYPES: tuple[tuple[str, Any], ...] = (
    ("event_id", 12345),
    ("event_type", 3),
    ("user_id", ["u1"]),
    ("product_id", 42),
    ("event_time", "2024-01-01T00:00:00"),  # no offset: not a valid timestamp
    ("price", "19.99"),
    ("quantity", 2.5),
    ("session_id", 1234),
)
_BAD_IDS = ("event_id", "user_id", "product_id")
_UNKNOWN_TYPES = ("checkout", "PageView", "view_item")


def _missing(obj: dict[str, Any], v: int) -> str:
    field = _MISSING[v % len(_MISSING)]
    if field == "price":
        _purchase(obj)
    elif field == "product_id" and obj["event_type"] == "page_view":
        obj["event_type"] = "click"  # product_id is optional on page views
    del obj[field]
    return f"missing_field:{field}"


def _invalid_type(obj: dict[str, Any], v: int) -> str:
    field, value = _BAD_TYPES[v % len(_BAD_TYPES)]
    if field in ("price", "quantity"):
        _purchase(obj)
    obj[field] = value
    return f"invalid_type:{field}"


def _invalid_id(obj: dict[str, Any], v: int) -> str:
    field = _BAD_IDS[v % len(_BAD_IDS)]
    obj[field] = {
        "event_id": obj["event_id"] + " copy",
        "user_id": "user#" + obj["user_id"][1:],
        "product_id": obj["product_id"] + "0" * 128,
    }[field]  # a space, a '#', > 128 characters
    return f"invalid_id:{field}"


def _negative(obj: dict[str, Any], v: int) -> None:
    _purchase(obj)
    if v % 3 == 0:
        obj["price"] = -obj["price"]
    else:
        obj["quantity"] = -(v % 3 - 1)  # 0 or -1


def _out_of_range(obj: dict[str, Any], v: int) -> str:
    """A number of the right JSON type that no sink can hold (or epoch seconds sent as milliseconds)."""
    kind = v % 3
    if kind == 0:
        _purchase(obj)
        obj["quantity"] = 3_000_000_000  # beyond raw_events' int32
        return "invalid_type:quantity"
    if kind == 1:
        _purchase(obj)
        obj["price"] = 1e300  # price × quantity would overflow the sums
        return "invalid_type:price"
    t = obj["event_time"]
    ms = t if isinstance(t, int) else round(datetime.fromisoformat(t).timestamp() * 1000)
    obj["event_time"] = ms // 1000  # epoch seconds
    return "invalid_type:event_time"


def build(
    j: int, obj: dict[str, Any], end_ms: int, rng: np.random.Generator, dumps: Dumps = compact_dumps
) -> Malformed:
    """Make invalid message number ``j`` from the valid event ``obj`` (which it may modify).

    Args:
        j: the run-wide index of the malformed message; picks the reason family and variant.
        obj: a valid event from :func:`base_event`.
        end_ms: the end of the generated range; ``future_timestamp`` messages lie ten years after it.
        rng: randomness for truncation points and sizes.
        dumps: the JSON serialiser.

    Returns:
        The message; its key is the message's ``user_id`` when that is a string, else ``None``.
    """
    family, v = FAMILIES[j % len(FAMILIES)], j // len(FAMILIES)
    key = obj["user_id"]
    if family == "malformed_json":
        return Malformed(key, _malformed_json(obj, v % 3, rng, dumps), family)
    if family == "oversized":
        return Malformed(key, _oversized(obj, v, rng, dumps), family)
    if family == "missing_field:<f>":
        reason = _missing(obj, v)
    elif family == "invalid_type:<f>":
        reason = _invalid_type(obj, v)
    elif family == "invalid_id:<f>":
        reason = _invalid_id(obj, v)
    elif family == "unknown_event_type":
        obj["event_type"], reason = _UNKNOWN_TYPES[v % len(_UNKNOWN_TYPES)], family
    elif family == "negative_amount":
        _negative(obj, v)
        reason = family
    elif family == "out_of_range":
        reason = _out_of_range(obj, v)
    else:
        future = end_ms + FUTURE_OFFSET_MS + int(rng.integers(0, 86_400_000))
        obj["event_time"], reason = (iso_ms(future) if v % 2 == 0 else future), family
    user = obj.get("user_id")
    return Malformed(user if isinstance(user, str) else None, dumps(obj), reason)
