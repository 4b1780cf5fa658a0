"""The event contract of docs/design.md §2: decoding, validation, normalisation, and masking of dead letters.

:func:`parse` turns the original message bytes into either a normalised :class:`Event` or a
:class:`Rejection` carrying exactly one reason from the closed list :data:`REASONS`. Nothing raises on
bad input: every message ends up as one or the other, so adapters can count and dead-letter it.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from fstore.core.timeutil import EPOCH, MAX_MICROS, MINUTE, parse_timestamp

MAX_MESSAGE_BYTES = 64 * 1024
FUTURE_TOLERANCE = 5 * MINUTE

EVENT_TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")
_EVENT_TYPES = frozenset(EVENT_TYPES)
ID_FIELDS = ("event_id", "user_id", "product_id")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: The reason of a message that passed validation but that a sink still refused (never given by :func:`parse`).
UNPROCESSABLE = "unprocessable"

#: The rejection reasons :func:`parse` gives; ``<f>`` stands for a field name (the generator of
#: :mod:`fstore.synth.malformed` cycles through them in this order).
REASONS = (
    "malformed_json",
    "oversized",
    "missing_field:<f>",
    "invalid_type:<f>",
    "invalid_id:<f>",
    "unknown_event_type",
    "negative_amount",
    "out_of_range:<f>",
    "future_timestamp",
)
#: The closed list of dead-letter reasons: the rejection reasons of :func:`parse`, and :data:`UNPROCESSABLE`,
#: which the stream worker and ``fstore ingest`` give a valid message that a sink refused (they isolate it).
DEAD_LETTER_REASONS = (*REASONS, UNPROCESSABLE)

#: Bounds that keep every accepted value representable in every sink: ``quantity`` is an Arrow int32
#: in ``raw_events``; ``price`` up to 1e15 keeps ``price × quantity`` (≤ 2.2e24) and any sum of such
#: amounts finite in Redis (``HINCRBYFLOAT``), Arrow, Delta and Spark.
MAX_QUANTITY = 2**31 - 1
MAX_PRICE = 1e15
#: Epoch numbers are milliseconds (docs/design.md §2). A number below this (1973-03-03T09:46:40Z in ms) is far
#: more likely epoch *seconds* of today than a millisecond stamp of 1970–73: it is rejected as
#: ``out_of_range:event_time`` instead of being read as a date in 1970, as is one past 9999-12-31
#: (epoch microseconds or nanoseconds sent as milliseconds).
MIN_EPOCH_MS = 100_000_000_000


class Event(NamedTuple):
    """A valid, normalised event. Times are UTC epoch microseconds; unknown fields are gone."""

    event_id: str
    event_type: str
    user_id: str
    product_id: str | None
    event_time: int
    price: float | None
    quantity: int
    session_id: str | None


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


def json_loads(raw: bytes) -> Any:
    """Strict JSON decoding with the standard library that agrees with ``orjson.loads``.

    NaN/Infinity and numbers that overflow a double are malformed; integers beyond 64 bits become
    doubles. Adapters use orjson for speed; both decoders give every message the same verdict.
    """
    return json.loads(raw, parse_constant=_reject_constant, parse_float=_parse_float, parse_int=_parse_int)


def hashed(text: str) -> str:
    """A free-text value replaced by its hash (``h:`` + 32 hex digits, inside the id charset): the same
    text always gives the same id, and the text itself is never stored."""
    return "h:" + hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def payload_hash(raw: bytes) -> str:
    """Hash of the original message bytes; breaks ties between duplicates ingested at the same instant."""
    return hashlib.blake2b(raw, digest_size=16).hexdigest()


def parse(raw: bytes, now: int, loads: Loads = json_loads) -> Event | Rejection:
    """Decode and validate one message.

    Args:
        raw: the original message bytes (a Kafka value or a JSONL line without its newline).
        now: the processing clock, UTC epoch microseconds (for ``future_timestamp``).
        loads: a JSON decoder that raises ``ValueError`` on bad input (``orjson.loads`` in adapters).

    Returns:
        The normalised event, or a rejection with one reason.
    """
    return parse_row(raw, now, _check_example, loads)  # type: ignore[arg-type,return-value]


def _check_example(obj: Mapping[str, Any], now: int) -> Event | Rejection:
    return _accept(obj, now) or validate(obj, now)  # type: ignore[arg-type]


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
_fromisoformat = datetime.fromisoformat
_ONE_US = timedelta(microseconds=1)
_match_id = re.compile(_ID_CLASS).fullmatch
_new_event = tuple.__new__
#: Ids already seen to match the id charset (users, products and sessions repeat from event to event, so the
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


def _accept(obj: dict[str, Any], now: int) -> Event | None:
    """Fast path of :func:`validate` for the common, well-formed event; ``None`` when unsure."""
    get = obj.get
    return accept(
        get("event_id"),
        get("event_type"),
        get("user_id"),
        get("product_id"),
        get("event_time"),
        get("price"),
        get("quantity"),
        get("session_id"),
        now,
    )


def accept(
    event_id: Any,
    event_type: Any,
    user_id: Any,
    product_id: Any,
    t: Any,
    price: Any,
    quantity: Any,
    session_id: Any,
    now: int,
) -> Event | None:
    """Fast path of :func:`validate` given the decoded fields (``None`` for an absent one); ``None`` when unsure.

    It only ever returns the event :func:`validate` would return for an object with these fields (the
    same checks on exact types; float event times are left to :func:`validate`); anything else — every
    invalid event included — returns ``None`` and goes through :func:`validate`, which gives the reason.
    The stream worker spends much of its CPU here, hence the inlined checks; it also calls this with
    fields decoded straight from the bytes by a typed decoder (:mod:`jobs.stream.pipeline`).
    """
    if (
        type(event_id) is not str
        or type(event_type) is not str
        or type(user_id) is not str
        or event_type not in _EVENT_TYPES
    ):
        return None
    known = _known_ids
    if not _match_id(event_id) or (user_id not in known and not _good_id(user_id)):
        return None
    if product_id is None:
        if event_type != "page_view":
            return None
    elif type(product_id) is not str or (product_id not in known and not _good_id(product_id)):
        return None
    if type(t) is str:
        # Only the common ``YYYY-MM-DDThh:mm[:ss[.f]]Z`` shape here: fromisoformat also takes text that is not
        # ISO-8601 (``…T12:00:00.Z``, any separator character, offsets with seconds), which the full
        # validator refuses (timeutil.ISO_8601); other offsets take that path too.
        if t[10:11] != "T" or t[-1:] != "Z" or not "0" <= t[-2:-1] <= "9" or t[4:5] != "-":
            return None
        try:
            dt = _fromisoformat(t)
            if dt.tzinfo is None:  # fromisoformat's tzinfo is a fixed offset: never a None utcoffset()
                return None
            us = (dt - EPOCH) // _ONE_US
        except (ValueError, OverflowError):
            return None
    elif type(t) is int:
        if t < MIN_EPOCH_MS:
            return None
        us = t * 1000
    else:
        return None
    if not 0 <= us <= MAX_MICROS or us > now + FUTURE_TOLERANCE:
        return None
    if price is None:
        if event_type == "purchase":
            return None
    elif type(price) is float:
        if not 0.0 <= price <= MAX_PRICE:
            return None
    elif type(price) is int:
        if not 0 <= price <= MAX_PRICE:
            return None
        price = float(price)
    else:
        return None
    if quantity is None:
        quantity = 1
    elif type(quantity) is not int or not 1 <= quantity <= MAX_QUANTITY:
        return None
    if session_id is not None and (
        type(session_id) is not str or (session_id not in known and not _good_id(session_id))
    ):
        return None
    return _new_event(Event, (event_id, event_type, user_id, product_id, us, price, quantity, session_id))


def _id(obj: dict[str, Any], field: str, required: bool) -> str | Rejection | None:
    v = obj.get(field)
    if v is None:
        return Rejection(f"missing_field:{field}") if required else None
    if not isinstance(v, str):
        return Rejection(f"invalid_type:{field}")
    if not _ID.fullmatch(v):
        return Rejection(f"invalid_id:{field}")
    return v


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
                return Rejection(f"out_of_range:{name}")
            us = v * 1000 if isinstance(v, int) else round(v * 1000)
        else:
            return Rejection(f"invalid_type:{name}")
    except (ValueError, OverflowError):
        return Rejection(f"invalid_type:{name}")
    if not 0 <= us <= MAX_MICROS:
        return Rejection(f"invalid_type:{name}")
    return int(us)


def validate(obj: dict[str, Any], now: int) -> Event | Rejection:
    """Validate a decoded JSON object against the event contract (fields checked in a fixed order).

    The order is event_id, event_type, user_id, product_id, event_time, price, quantity, session_id; the
    first failing check gives the reason. ``quantity < 1`` is reported as ``negative_amount`` like a
    negative price: both are impossible amounts.
    """
    event_id = _id(obj, "event_id", True)
    if isinstance(event_id, Rejection):
        return event_id
    event_type = obj.get("event_type")
    if event_type is None:
        return Rejection("missing_field:event_type")
    if not isinstance(event_type, str):
        return Rejection("invalid_type:event_type")
    if event_type not in _EVENT_TYPES:
        return Rejection("unknown_event_type")
    user_id = _id(obj, "user_id", True)
    if isinstance(user_id, Rejection):
        return user_id
    product_id = _id(obj, "product_id", event_type != "page_view")
    if isinstance(product_id, Rejection):
        return product_id
    raw_time = obj.get("event_time")
    if raw_time is None:
        return Rejection("missing_field:event_time")
    event_time = event_time_of(raw_time)
    if isinstance(event_time, Rejection):
        return event_time
    price = obj.get("price")
    if price is None:
        if event_type == "purchase":
            return Rejection("missing_field:price")
    elif not _finite(price):
        return Rejection("invalid_type:price")
    elif price < 0:
        return Rejection("negative_amount")
    elif price > MAX_PRICE:
        return Rejection("out_of_range:price")
    quantity = obj.get("quantity")
    if quantity is None:
        quantity = 1
    elif not isinstance(quantity, int) or isinstance(quantity, bool):
        return Rejection("invalid_type:quantity")
    elif quantity < 1:
        return Rejection("negative_amount")
    elif quantity > MAX_QUANTITY:
        return Rejection("out_of_range:quantity")
    session_id = obj.get("session_id")
    if session_id is not None:
        if not isinstance(session_id, str):
            return Rejection("invalid_type:session_id")
        if not _ID.fullmatch(session_id):
            session_id = hashed(session_id)  # free text may carry personal data: never stored as is
    if event_time > now + FUTURE_TOLERANCE:
        return Rejection("future_timestamp")
    assert event_id is not None and user_id is not None
    return Event(
        event_id,
        event_type,
        user_id,
        product_id,
        event_time,
        None if price is None else float(price),
        quantity,
        session_id,
    )


def reason_family(reason: str) -> str:
    """The closed-list entry a reason belongs to (``missing_field:price`` → ``missing_field:<f>``)."""
    head, sep, _ = reason.partition(":")
    return f"{head}:<f>" if sep else reason


#: The declared fields of the event schema (what a dead letter may keep, masked).
FIELDS = Event._fields
_SAFE_TEXT = re.compile(r"[A-Za-z0-9_.:+-]{0,128}")  # ids, event types, ISO-8601 times


def mask_dead_letter(
    raw: bytes, loads: Loads = json_loads, keep_unparseable: bool = False, fields: Iterable[str] = FIELDS
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
        else:
            kept[key] = hashed(v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str))
    dropped = len(obj) - len(kept)
    if dropped:
        kept["dropped_fields"] = dropped
    return json.dumps(kept, separators=(",", ":")).encode()
