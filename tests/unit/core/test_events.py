"""The event contract (docs/design.md §2): every rejection reason, normalisation, PII, de-duplication."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime

import orjson
import pyarrow as pa
import pytest

from fstore.core.dedupe import first_ingested
from fstore.core.events import (
    REASONS,
    Loads,
    Rejection,
    hashed,
    json_loads,
    mask_dead_letter,
    payload_hash,
    reason_family,
)
from fstore.core.timeutil import MINUTE, to_micros
from tests.support import bruteforce
from tests.support.legacy.events_example import FIELDS, MAX_PRICE, MAX_QUANTITY, Event, parse

pytestmark = pytest.mark.unit

NOW = to_micros(datetime(2026, 11, 21, 12, 0, tzinfo=UTC))
BASE = {
    "event_id": "e1",
    "event_type": "purchase",
    "user_id": "u1",
    "product_id": "p1",
    "event_time": "2026-11-21T11:00:00.5+01:00",
    "price": 9.5,
    "quantity": 2,
    "session_id": "s1",
}


def msg(**changes: object) -> bytes:
    obj = {**BASE, **changes}
    return json.dumps({k: v for k, v in obj.items() if v is not DROP}).encode()


DROP = object()

REJECTIONS = [
    (b"{not json", "malformed_json"),
    (b"[1, 2]", "malformed_json"),
    (b"\xff\xfe", "malformed_json"),
    (b'{"event_id": NaN}', "malformed_json"),
    (b"", "malformed_json"),
    (msg(price=10**400), "malformed_json"),  # overflows a double in both decoders
    (msg(price="1e400").replace(b'"1e400"', b"1e400"), "malformed_json"),
    (msg(pad="x" * 70_000), "oversized"),
    (msg(event_id=DROP), "missing_field:event_id"),
    (msg(event_id=None), "missing_field:event_id"),
    (msg(event_type=DROP), "missing_field:event_type"),
    (msg(user_id=DROP), "missing_field:user_id"),
    (msg(product_id=DROP), "missing_field:product_id"),
    (msg(event_time=DROP), "missing_field:event_time"),
    (msg(price=DROP), "missing_field:price"),
    (msg(event_id=12), "invalid_type:event_id"),
    (msg(event_type=["click"]), "invalid_type:event_type"),
    (msg(user_id=True), "invalid_type:user_id"),
    (msg(product_id=7), "invalid_type:product_id"),
    (msg(event_time="yesterday"), "invalid_type:event_time"),
    (msg(event_time="2026-11-21T11:00:00"), "invalid_type:event_time"),  # no offset
    (msg(event_time=True), "invalid_type:event_time"),
    (msg(event_time=-5), "invalid_type:event_time"),
    (msg(price="9.50"), "invalid_type:price"),
    (msg(quantity=1.5), "invalid_type:quantity"),
    (msg(session_id=5), "invalid_type:session_id"),
    (msg(event_id="has space"), "invalid_id:event_id"),
    (msg(user_id="u" * 129), "invalid_id:user_id"),
    (msg(product_id=""), "invalid_id:product_id"),
    (msg(event_id="é"), "invalid_id:event_id"),
    (msg(event_type="hover"), "unknown_event_type"),
    (msg(price=-0.01), "negative_amount"),
    (msg(quantity=0), "negative_amount"),
    (msg(quantity=3_000_000_000), "invalid_type:quantity"),  # beyond raw_events' int32
    (msg(quantity=2**31), "invalid_type:quantity"),
    (msg(price=1e15 * 1.0000001), "invalid_type:price"),
    (msg(price=10**300), "invalid_type:price"),  # an int that would overflow price × quantity
    (msg(event_time=1_763_726_400), "invalid_type:event_time"),  # epoch seconds of 2025-11-21: not ms
    (msg(event_time=99_999_999_999), "invalid_type:event_time"),
    (msg(event_time=1_763_726_400.5), "invalid_type:event_time"),
    (msg(event_type="click", price=-1), "negative_amount"),
    (msg(event_time="2026-11-21T12:05:00.000001Z"), "future_timestamp"),
    (msg(event_time=(NOW + 5 * MINUTE) // 1000 + 1), "future_timestamp"),
]


@pytest.mark.parametrize(("raw", "reason"), REJECTIONS, ids=[r for _, r in REJECTIONS])
@pytest.mark.parametrize("loads", [json_loads, orjson.loads], ids=["stdlib", "orjson"])
def test_rejections(raw: bytes, reason: str, loads: object) -> None:
    assert parse(raw, NOW, loads) == Rejection(reason)  # type: ignore[arg-type]


#: Bytes orjson refuses that the standard library's decoder took (probe-fuzz): a byte-order mark, lone surrogate
#: escapes (in a declared field or not, alone or reversed), UTF-16 (which json.loads detects on bytes).
NOT_UTF8_TEXT = [
    b"\xef\xbb\xbf" + msg(),
    msg(session_id="a").replace(b'"a"', b'"a\\ud800"'),
    msg().replace(b"{", b'{"note": "\\udc00\\ud800", ', 1),
    msg().decode().encode("utf-16"),
]


@pytest.mark.parametrize("raw", NOT_UTF8_TEXT, ids=["bom", "lone-high", "reversed-pair", "utf-16"])
def test_the_stdlib_decoder_refuses_what_orjson_refuses(raw: bytes) -> None:
    with pytest.raises(ValueError):
        orjson.loads(raw)
    with pytest.raises(ValueError):
        json_loads(raw)
    assert parse(raw, NOW, json_loads) == parse(raw, NOW, orjson.loads) == Rejection("malformed_json")
    paired = msg(session_id="a").replace(b'"a"', b'"a\\ud83d\\ude00"')  # a valid pair is one character
    assert json_loads(paired) == orjson.loads(paired)


E1 = to_micros(datetime(2026, 11, 21, 11, 0, tzinfo=UTC))  # 2026-11-21T11:00:00Z
TIME_FORMATS: list[tuple[object, int | str]] = [  # event_time as sent -> stored µs, or the rejection reason
    ("2026-11-21T11:00:00Z", E1),
    ("2026-11-21T11:00:00+00:00", E1),
    ("2026-11-21T12:30:00+01:30", E1),
    ("2026-11-21T06:00:00-05:00", E1),
    ("2026-11-21T11:00:00.123456Z", E1 + 123_456),
    ("2026-11-21T11:00:00.5Z", E1 + 500_000),
    ("2026-11-21 11:00:00Z", E1),  # RFC 3339 allows a space for the T
    ("2026-11-21t11:00:00z", E1),  # ... and lower-case t and z (RFC 3339, 5.6)
    ("2026-11-21T12:30:00.25+01:30", E1 + 250_000),
    (E1 // 1000, E1),  # epoch milliseconds
    (E1 // 1000 + 0.25, E1 + 250),  # fractional milliseconds: rounded to µs
    (100_000_000_000, 100_000_000_000_000),  # the smallest epoch number taken as milliseconds (1973-03-03)
    ("20261121T110000Z", E1),  # ISO-8601 basic form
    ("2026-11-21T11:00Z", E1),  # no seconds
    ("2026-11-21T11:00:00,5Z", E1 + 500_000),
    ("2026-11-21T11:00:00", "invalid_type:event_time"),  # no offset: ambiguous
    ("2026-11-21x11:00:00Z", "invalid_type:event_time"),  # not ISO-8601 (fromisoformat takes any separator)
    ("2026-11-21T11:00:00.Z", "invalid_type:event_time"),  # a decimal point without digits
    ("2026-11-21T11:00:00 Z", "invalid_type:event_time"),
    ("2026-11-21T12:30:00+01:30:00", "invalid_type:event_time"),  # offset with seconds: not ISO-8601
    ("2026-11-21T11:00:00+24:00", "invalid_type:event_time"),
    ("2026/11/21T11:00:00Z", "invalid_type:event_time"),
    ("Sat, 21 Nov 2026 11:00:00 +0000", "invalid_type:event_time"),  # RFC 2822
    ("2026-11-21", "invalid_type:event_time"),
    ("11:00:00Z", "invalid_type:event_time"),
    (str(E1 // 1000), "invalid_type:event_time"),  # a number in a string
    ("yesterday", "invalid_type:event_time"),
    ("", "invalid_type:event_time"),
    (True, "invalid_type:event_time"),
    ([E1 // 1000], "invalid_type:event_time"),
    (E1 // 1_000_000, "invalid_type:event_time"),  # epoch seconds
    (E1 / 1_000_000, "invalid_type:event_time"),  # epoch seconds with a fraction
    (E1, "invalid_type:event_time"),  # epoch microseconds
    (E1 * 1000, "invalid_type:event_time"),  # epoch nanoseconds
    (99_999_999_999, "invalid_type:event_time"),
    (-1, "invalid_type:event_time"),
    (None, "missing_field:event_time"),
]


@pytest.mark.parametrize(("sent", "want"), TIME_FORMATS, ids=[repr(t) for t, _ in TIME_FORMATS])
@pytest.mark.parametrize("loads", [json_loads, orjson.loads], ids=["stdlib", "orjson"])
def test_time_formats(sent: object, want: int | str, loads: Loads) -> None:
    got = parse(msg(event_time=sent), NOW, loads)
    if isinstance(want, str):
        assert got == Rejection(want)
    else:
        assert isinstance(got, Event) and got.event_time == want


def test_the_largest_accepted_amounts_fit_every_sink() -> None:
    ev = parse(msg(price=MAX_PRICE, quantity=MAX_QUANTITY), NOW)
    assert isinstance(ev, Event) and ev == parse(msg(price=MAX_PRICE, quantity=MAX_QUANTITY), NOW, orjson.loads)
    assert ev.price is not None and math.isfinite(
        ev.price * ev.quantity * 1e9
    )  # a billion of them still sum to a finite float
    assert pa.array([ev.quantity], pa.int32()).to_pylist() == [MAX_QUANTITY]  # raw_events' quantity column


def test_every_reason_family_is_covered() -> None:
    assert {reason_family(r) for _, r in REJECTIONS} == set(REASONS)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (msg(), Event("e1", "purchase", "u1", "p1", NOW - 2 * 60 * MINUTE + 500_000, 9.5, 2, "s1")),
        (
            msg(
                event_type="page_view",
                product_id=DROP,
                price=DROP,
                quantity=DROP,
                session_id=DROP,
                event_time=1763722800123,
            ),
            Event("e1", "page_view", "u1", None, 1763722800123000, None, 1, None),
        ),
        (msg(event_time=1763722800123.4), Event("e1", "purchase", "u1", "p1", 1763722800123400, 9.5, 2, "s1")),
        (
            msg(event_time="2026-11-21T12:05:00Z", price=0),
            Event("e1", "purchase", "u1", "p1", NOW + 5 * MINUTE, 0.0, 2, "s1"),
        ),
        (
            msg(email="a@b.c", ip="1.2.3.4", extra={"x": 1}),
            Event("e1", "purchase", "u1", "p1", NOW - 2 * 60 * MINUTE + 500_000, 9.5, 2, "s1"),
        ),
    ],
)
def test_valid_events_are_normalised(raw: bytes, expected: Event) -> None:
    assert parse(raw, NOW) == expected
    assert parse(raw, NOW, orjson.loads) == expected


def test_pii_never_survives_validation_and_is_masked_in_dead_letters() -> None:
    raw = json.dumps(
        {
            **BASE,
            "event_type": "hover",
            "email": "alice@example.com",
            "customer_email": "bob@example.com",
            "user": {"email": "carol@example.com"},
            "session_id": "mail dave@example.com",
            "product_id": {"owner": "erin@example.com"},
        }
    ).encode()
    assert parse(raw, NOW) == Rejection("unknown_event_type")
    masked = mask_dead_letter(raw, FIELDS)
    for secret in (b"alice", b"bob", b"carol", b"dave", b"erin", b"example.com"):
        assert secret not in masked
    kept = json.loads(masked)
    assert kept["event_type"] == "hover" and kept["event_id"] == "e1" and kept["price"] == 9.5
    assert kept["session_id"].startswith("h:") and kept["product_id"].startswith("h:")
    assert kept["dropped_fields"] == 3 and set(kept) <= {*Event._fields, "dropped_fields"}
    for unparseable in (b"{broken alice@example.com", b'["alice@example.com"]', b"\xff"):
        summary = json.loads(mask_dead_letter(unparseable, FIELDS))
        assert summary == {"unparseable": True, "size": len(unparseable), "blake2b": payload_hash(unparseable)}
        assert mask_dead_letter(unparseable, FIELDS, keep_unparseable=True) == unparseable  # the operator's opt-in


def test_a_dead_letter_nested_deeper_than_json_dumps_recurses_is_masked_not_raised() -> None:
    # orjson (the adapters' decoder) reads 1,020 levels of arrays; json.dumps recursed past the interpreter's limit
    # while hashing the value, so `fstore ingest` crashed on the message the stream worker dead-letters (probe-fuzz).
    deep = b"[" * 1020 + b"]" * 1020
    raw = b'{"event_id":"e1","session_id":' + deep + b',"email":"alice@example.com"}'
    assert isinstance(orjson.loads(raw)["session_id"], list)
    masked = mask_dead_letter(raw, FIELDS, orjson.loads)
    kept = json.loads(masked)
    assert kept["event_id"] == "e1" and kept["session_id"].startswith("h:") and b"alice" not in masked
    assert mask_dead_letter(raw, FIELDS, orjson.loads) == masked  # the same bytes, the same dead letter


def test_free_text_session_id_is_stored_as_a_hash() -> None:
    ev = parse(msg(session_id="mail alice@example.com"), NOW)
    assert isinstance(ev, Event) and ev.session_id == hashed("mail alice@example.com")
    assert ev == parse(msg(session_id="mail alice@example.com"), NOW, orjson.loads)
    assert isinstance(ev2 := parse(msg(session_id="s-1.2:3"), NOW), Event) and ev2.session_id == "s-1.2:3"


def test_first_ingested_wins_then_smaller_hash() -> None:
    class Copy:
        def __init__(self, raw: bytes, ingested_at: int) -> None:
            self.raw, self.ingested_at, self.payload_hash = raw, ingested_at, payload_hash(raw)
            ev = parse(raw, NOW)
            assert isinstance(ev, Event)
            self.event = ev
            self.event_id = ev.event_id

    a, b, c = msg(quantity=1), msg(quantity=2), msg(quantity=3)
    copies = [Copy(b, 10), Copy(a, 11), Copy(c, 10), Copy(msg(event_id="e2"), 5)]
    win = first_ingested(copies)
    same_time = sorted([Copy(b, 10), Copy(c, 10)], key=lambda x: x.payload_hash)[0]
    assert win["e1"].raw == same_time.raw  # ingested_at 10 beats 11; the tie goes to the smaller hash
    assert win["e2"].event.event_id == "e2"
    brute = bruteforce.dedupe((x.ingested_at, x.payload_hash, x.event) for x in copies)
    assert sorted(e.quantity for e in brute) == sorted(x.event.quantity for x in win.values())


EDGES = [
    msg(),
    msg(price=3),
    msg(price=0),
    msg(price=-0.0),
    msg(price=10**300),
    msg(price=2**1023),
    msg(price=True),
    msg(quantity=True),
    msg(quantity=2**70),
    msg(event_time=0),
    msg(event_time=1.5),
    msg(event_time=10**400 // 10**380),
    msg(event_time=253402300799999),
    msg(event_time=253402300800000),
    msg(event_time="0001-01-01T00:00:00+00:01"),
    msg(event_time="9999-12-31T23:59:59.999999-00:01"),
    msg(event_time="2026-11-21T11:00:00.5+01:00"),
    msg(event_time="2026-11-21"),
    msg(event_time="2026-11-21x11:00:00Z"),
    msg(event_time="2026-11-21T11:00:00.Z"),
    msg(event_time="2026-W47-6T11:00:00Z"),
    msg(event_time="2026-11-21T11:00:00+01:00:30"),
    msg(event_type="page_view", product_id=None),
    msg(event_type="click", product_id=None, price=None),
    msg(event_id="a" * 128),
    msg(event_id="a" * 129),
    msg(user_id="a/b"),
    msg(product_id="p/1/2"),
    msg(event_id="x/y", product_id=DROP, event_type="page_view"),
    msg(session_id=None),
    msg(session_id=["s"]),
]


def test_fast_path_agrees_with_validate() -> None:
    """``parse`` tries a fast path first; it may only ever return what ``validate`` returns."""
    from tests.support.legacy.events_example import _accept, validate
    from tests.support.messages import injected_messages

    generated = injected_messages(NOW, 60, 3_000, 7, malformed_rate=0.3)
    fast = 0
    for raw in [r for r, _ in REJECTIONS] + EDGES + generated:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if not isinstance(obj, dict):
            continue
        got = _accept(obj, NOW)
        if got is not None:
            fast += 1
            assert got == validate(obj, NOW), raw
            assert [type(x) for x in got] == [type(x) for x in validate(obj, NOW)], raw
    assert fast > 1_500  # the common case does take the fast path
