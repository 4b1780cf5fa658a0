"""The example's fixed event contract before issue 13 (a reference for the tests and benchmarks only).

fstore now checks events against the schema the user's repository declares (:mod:`fstore.core.event_check`,
:mod:`fstore.core.event_accept`); this module keeps the e-commerce example's hand-written validator — the
:class:`Event` tuple, :func:`parse`, :func:`validate` and its fast path :func:`accept` — as an independent
reference the plan-driven contract is compared with, and for the legacy tile engine of
:mod:`tests.support.legacy.tiles`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from fstore.core.events import (
    FUTURE_TOLERANCE,
    MIN_EPOCH_MS,
    Loads,
    Rejection,
    _finite,
    _good_id,
    _known_ids,
    _match_id,
    event_time_of,
    hashed,
    json_loads,
    parse_row,
)
from fstore.core.timeutil import EPOCH, MAX_MICROS

EVENT_TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")
_EVENT_TYPES = frozenset(EVENT_TYPES)
ID_FIELDS = ("event_id", "user_id", "product_id")
_ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")

#: Bounds that keep every accepted value representable in every sink: ``quantity`` is an Arrow int32
#: in ``raw_events``; ``price`` up to 1e15 keeps ``price × quantity`` (≤ 2.2e24) and any sum of such
#: amounts finite in Redis (``HINCRBYFLOAT``), Arrow, Delta and Spark.
MAX_QUANTITY = 2**31 - 1
MAX_PRICE = 1e15


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


#: The example's declared event fields (what a dead letter may keep, masked).
FIELDS = Event._fields


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


_fromisoformat = datetime.fromisoformat
_ONE_US = timedelta(microseconds=1)
_new_event = tuple.__new__


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
        return Rejection("invalid_type:price")
    quantity = obj.get("quantity")
    if quantity is None:
        quantity = 1
    elif not isinstance(quantity, int) or isinstance(quantity, bool):
        return Rejection("invalid_type:quantity")
    elif quantity < 1:
        return Rejection("negative_amount")
    elif quantity > MAX_QUANTITY:
        return Rejection("invalid_type:quantity")
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
