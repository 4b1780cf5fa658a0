"""Fuzz through Kafka (issue 12): ≥ 100,000 generated bad messages mixed with valid ones, one real worker.

Every message is classified by :func:`oracle`, written here from docs/design.md §2 alone (it does not call
fstore's validator): a size check, a strict UTF-8/JSON decode, then the field table. Bad messages carry
exactly one defect each (or are not a JSON object at all), so the expected reason never depends on the
order in which a validator checks the fields. Then, on a real Apache Kafka broker, Redis and Delta:

* the worker never stops (alive throughout, clean exit on SIGTERM);
* ``events.dlq`` holds every bad message exactly once, byte for byte, with the oracle's reason, and the
  per-reason counters agree;
* every valid event_id is in ``raw_events`` and the speed tiles equal a brute force over the first copy
  of each valid event_id (tests/support/stream.py), duplicates included in the traffic.

Seeded (``FSTORE_FUZZ_SEED`` overrides; the seed is printed), bounded (~125,000 messages).
"""

from __future__ import annotations

import json
import math
import os
import random
import re
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis

from fstore.delta import raw_log
from fstore.devsvc.services import Broker
from fstore.kafka import client as kafka_io
from tests.support.legacy.events_example import Event
from tests.support.stream import Factory, Traffic, assert_tiles_exact, dlq_reasons, publish

pytestmark = pytest.mark.faults

SECOND = 1_000_000
LIMIT = 64 * 1024  # "A message is one JSON object, UTF-8, at most 64 KiB."
TYPES = ("page_view", "impression", "click", "add_to_cart", "purchase")
ID = re.compile(r"[A-Za-z0-9_.:-]{1,128}")
# ISO-8601 date and time with a UTC offset: extended (2026-11-27T10:11:12.5+05:30) or basic
# (20261127T101112Z) form, seconds and fraction optional, T or RFC 3339's space; no offset seconds, no
# other separator. (Week dates are ISO-8601 too; the fuzz sends none.)
ISO = re.compile(
    r"(?P<y>\d{4})(?P<s1>-?)(?P<mo>\d\d)(?P=s1)(?P<d>\d\d)[T ](?P<h>\d\d)(?:(?P<s2>:?)(?P<mi>\d\d)"
    r"(?:(?P=s2)(?P<sec>\d\d)(?:[.,](?P<f>\d{1,6}))?)?)?(?P<z>Z|[+-]\d\d(?::?\d\d)?)"
)
MAX_MS = (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(
    milliseconds=1
)


class Bad(Exception):
    """The oracle's verdict for an invalid message."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _no_constants(name: str) -> Any:
    raise ValueError(name)


def _float(text: str) -> float:
    v = float(text)
    if math.isinf(v):  # a number a double cannot hold is not decodable (docs/design.md §2)
        raise ValueError(text)
    return v


def _int(text: str) -> int | float:
    v = int(text)
    return v if -(2**63) <= v < 2**64 else _float(text)  # beyond 64 bits: read as a double


def _decode(raw: bytes) -> dict[str, Any]:
    if len(raw) > LIMIT:
        raise Bad("oversized")
    try:
        text = raw.decode("utf-8")  # strict: no BOM handling, invalid bytes fail
        if text.startswith("\ufeff"):
            raise ValueError("byte order mark")
        obj = json.loads(text, parse_constant=_no_constants, parse_float=_float, parse_int=_int)
        json.dumps(obj, ensure_ascii=False).encode()  # a lone surrogate escape is not Unicode text: fails
    except (ValueError, RecursionError):
        raise Bad("malformed_json") from None
    if not isinstance(obj, dict):
        raise Bad("malformed_json")
    return obj


def _is_num(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _an_id(obj: dict[str, Any], f: str, required: bool) -> str | None:
    if f not in obj:
        if required:
            raise Bad(f"missing_field:{f}")
        return None
    v = obj[f]
    if not isinstance(v, str):
        raise Bad(f"invalid_type:{f}")
    if not ID.fullmatch(v):
        raise Bad(f"invalid_id:{f}")
    return v


def _time(v: Any) -> int:
    if isinstance(v, str):
        m = ISO.fullmatch(v)
        if m is None:
            raise Bad("invalid_type:event_time")
        g = m.groupdict()
        z = g["z"]
        if z != "Z" and (int(z[1:3]) > 23 or (len(z) > 3 and int(z[-2:]) > 59)):
            raise Bad("invalid_type:event_time")  # not a UTC offset
        try:
            off = (
                timedelta(0)
                if z == "Z"
                else (1 if z[0] == "+" else -1) * timedelta(hours=int(z[1:3]), minutes=int(z[-2:] if len(z) > 3 else 0))
            )
            dt = datetime(
                int(g["y"]),
                int(g["mo"]),
                int(g["d"]),
                int(g["h"]),
                int(g["mi"] or 0),
                int(g["sec"] or 0),
                int((g["f"] or "0").ljust(6, "0")),
                tzinfo=UTC,
            )
        except ValueError:
            raise Bad("invalid_type:event_time") from None
        return (dt - off - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    if _is_num(v):
        if not 10**11 <= v <= MAX_MS:
            raise Bad("invalid_type:event_time")
        out: int = round(v * 1000)
        return out
    raise Bad("invalid_type:event_time")


def oracle(raw: bytes, now: int) -> Event | Bad:
    """docs/design.md §2 for one message: the normalised event, or the reason it is dead-lettered.

    Reading of the contract where it is terse: a field that is absent is missing (the fuzz never sends
    ``null`` for a required field); ``quantity`` < 1 is an impossible amount, ``negative_amount``, like a
    negative price; any string ``session_id`` is valid (hashed when outside the id charset).
    """
    try:
        obj = _decode(raw)
        event_id = _an_id(obj, "event_id", True)
        if "event_type" not in obj:
            raise Bad("missing_field:event_type")
        etype = obj["event_type"]
        if not isinstance(etype, str):
            raise Bad("invalid_type:event_type")
        if etype not in TYPES:
            raise Bad("unknown_event_type")
        user_id = _an_id(obj, "user_id", True)
        product_id = _an_id(obj, "product_id", etype != "page_view")
        if "event_time" not in obj:
            raise Bad("missing_field:event_time")
        t = _time(obj["event_time"])
        price = obj.get("price")
        if "price" not in obj:
            if etype == "purchase":
                raise Bad("missing_field:price")
        elif not _is_num(price):
            raise Bad("invalid_type:price")
        elif price < 0:  # type: ignore[operator]  # a number: _is_num said so
            raise Bad("negative_amount")
        elif price > 1e15:  # type: ignore[operator]
            raise Bad("invalid_type:price")
        quantity = obj.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            raise Bad("invalid_type:quantity")
        if quantity < 1:
            raise Bad("negative_amount")
        if quantity > 2**31 - 1:
            raise Bad("invalid_type:quantity")
        session = obj.get("session_id")
        if "session_id" in obj and not isinstance(session, str):
            raise Bad("invalid_type:session_id")
        if t > now + 5 * 60 * SECOND:
            raise Bad("future_timestamp")
    except Bad as bad:
        return bad
    assert event_id is not None and user_id is not None
    return Event(event_id, etype, user_id, product_id, t, None if price is None else float(price), quantity, None)


# ---------------------------------------------------------------------------------------------- traffic


def iso(us: int, offset_min: int = 0, frac: int = 3, basic: bool = False) -> str:
    dt = datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us) + timedelta(minutes=offset_min)
    if basic:
        text = dt.strftime("%Y%m%dT%H%M%S")
    else:
        text = dt.strftime("%Y-%m-%dT%H:%M:%S")
        if frac:
            text += "." + f"{dt.microsecond:06d}"[:frac]
    if offset_min == 0:
        return text + "Z"
    sign, m = ("+" if offset_min > 0 else "-"), abs(offset_min)
    return f"{text}{sign}{m // 60:02d}:{m % 60:02d}"


def dumps(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8", "surrogatepass")


class Fuzz:
    """Seeded traffic: valid events (some duplicated) and bad messages with one defect each."""

    def __init__(self, seed: int, now: int) -> None:
        self.rng, self.now, self.n = random.Random(seed), now, 0
        self.keys: list[str | None] = []
        self.values: list[bytes] = []

    def base(self, etype: str | None = None) -> dict[str, Any]:
        r = self.rng
        self.n += 1
        etype = etype or r.choice(TYPES)
        us = self.now - r.randrange(60 * SECOND, 2 * 3600 * SECOND)
        ms = us // 1000
        kind = r.randrange(6)
        t: Any = (
            iso(ms * 1000)
            if kind == 0
            else iso(us, r.choice([330, -480, 60, -30]), frac=r.choice([0, 1, 3, 6]))
            if kind == 1
            else ms
            if kind == 2
            else ms + r.choice([0.25, 0.5, 0.125])
            if kind == 3
            else iso(us - us % SECOND, basic=True)
            if kind == 4
            else iso(us, frac=6)
        )
        obj: dict[str, Any] = {
            "event_id": f"e{self.n}-{r.randrange(10**9):x}",
            "event_type": etype,
            "user_id": f"u{r.randrange(3000)}",
            "event_time": t,
        }
        if etype != "page_view" or r.random() < 0.5:
            obj["product_id"] = f"p{r.randrange(400)}"
        if etype == "purchase" or r.random() < 0.1:
            obj["price"] = r.choice([r.randrange(1, 100000) / 100, r.randrange(0, 500), 0.0, 1e15, 5e-324, -0.0])
        if r.random() < 0.3:
            obj["quantity"] = r.choice([1, 2, r.randrange(1, 50), 2**31 - 1])
        if r.random() < 0.3:
            obj["session_id"] = r.choice(["s-1", "jane.doe@example.com", "sessión ✓", "a b", "x" * 300])
        if r.random() < 0.1:
            obj["extra"] = r.choice([{"email": "a@b.c", "ip": "10.0.0.1"}, [1, [2, [3]]], "ünïcödé ✓ 🚀", None, 1e308])
        return obj

    def add(self, value: bytes, key: str | None = None) -> None:
        self.keys.append(key)
        self.values.append(value)

    def valid(self) -> None:
        obj = self.base()
        raw = dumps(obj)
        self.add(raw, obj["user_id"])
        if self.rng.random() < 0.05:  # a duplicate: same key (same partition, so log order = publish order)
            dup = dict(obj, quantity=7) if self.rng.random() < 0.5 else obj
            self.add(dumps(dup), obj["user_id"])

    def bad(self) -> None:
        r = self.rng
        kind = r.random() * 100
        if kind < 12:  # random bytes
            n = r.choice([0, 1, 2, 5, 20, 200, 2000])
            self.add(r.randbytes(n), r.choice([None, "u1"]))
            return
        if kind < 16:  # valid JSON but not an object, deep nesting, constants, BOM, bad escapes
            choice = r.randrange(8)
            depth = r.choice([10, 1000, 20_000])
            raw = [
                b"[" * depth + b"]" * depth,
                b'"just a string"',
                b"12345",
                b"null",
                b'{"event_id":"e1","price":NaN}',
                b"\xef\xbb\xbf" + dumps(self.base()),
                b'{"event_id":"e\\ud800"}',
                dumps(self.base())[:-1],
            ][choice]
            self.add(raw, None)
            return
        obj = self.base()
        key: str | None = obj["user_id"]
        f = r.choice(
            ["event_id", "event_type", "user_id", "product_id", "event_time", "price", "quantity", "session_id"]
        )
        if kind < 16.2:  # oversized: a huge string beyond 64 KiB (up to ~200 KiB)
            obj["blob"] = r.choice(["é", "x"]) * int(LIMIT * r.choice([0.51, 1.01, 1.5, 3]))
            raw = dumps(obj)
            if len(raw) <= LIMIT:
                raw = dumps(dict(obj, blob2="x" * (LIMIT + 1 - len(raw) + 10)))
            self.add(raw, key)
            return
        if kind < 16.4:  # exactly at the limit (valid) and one byte over (oversized)
            raw = dumps(dict(obj, pad=""))
            raw = dumps(dict(obj, pad="x" * (LIMIT - len(raw) + r.choice([0, 1]))))
            self.add(raw, key)
            return
        if kind < 30:  # missing field
            f = r.choice(["event_id", "event_type", "user_id", "product_id", "event_time", "price"])
            if f == "product_id":
                obj["event_type"] = r.choice(TYPES[1:])
            if f == "price":
                obj["event_type"] = "purchase"
            obj.setdefault("product_id", "p1")
            obj.pop(f, None)
        elif kind < 50:  # wrong type
            wrong: list[Any] = [12345, 1.5, True, False, ["x"], {"a": 1}, [[[[[[[[[["deep"]]]]]]]]]]]
            if f not in ("price", "quantity", "event_time", "session_id"):
                wrong.append(_nest(r.randrange(2, 200)))
            if f == "quantity":
                wrong = [2.5, 1e20, "3", True, [1], 2.0000001]
            elif f == "price":
                wrong = ["19.99", True, [1.0], {"v": 1}, "NaN"]
            elif f == "event_time":
                wrong = [True, [1], {"t": 1}]
            elif f == "session_id":
                wrong = [123, 1.5, False, ["s"], {"s": 1}]
            obj[f] = r.choice(wrong)
            if f in ("price", "quantity"):
                obj["event_type"] = "purchase"
                obj.setdefault("price", 1.0)
            if f == "product_id" or f == "event_type":
                obj.setdefault("product_id", "p1")
        elif kind < 60:  # ids outside the charset or length, unknown event types
            if r.random() < 0.3:
                obj["event_type"] = r.choice(
                    ["", "Click", "click ", "checkout", "PURCHASE", "page-view", "ünicode", "x" * 5000]
                )
                obj.setdefault("product_id", "p1")
            else:
                g = r.choice(["event_id", "user_id", "product_id"])
                obj.setdefault("product_id", "p1")
                obj[g] = r.choice(
                    [
                        "",
                        "x" * 129,
                        "a b",
                        "a/b",
                        "a#b",
                        "é",
                        "user@example.com",
                        "🚀",
                        "a\nb",
                        "\u0661\u0662",
                        "x" * 5000,
                    ]
                )
        elif kind < 75:  # time formats
            us = self.now - r.randrange(60 * SECOND, 3600 * SECOND)
            s = iso(us)
            obj["event_time"] = r.choice(
                [
                    s[:-1],  # no offset
                    s[:10],  # a date
                    s.replace("-", "/"),
                    s.replace("T", "x"),
                    s.replace("Z", " Z"),
                    s[:-5] + ".Z",
                    s[:-1] + "+05:30:15",
                    s[:-1] + "+24:00",
                    datetime.fromtimestamp(us / SECOND, UTC).strftime("%a, %d %b %Y %H:%M:%S +0000"),
                    str(us // 1000),  # epoch milliseconds as a string
                    "",
                    "now",
                    "2026-13-01T00:00:00Z",
                    "2026-02-30T00:00:00Z",
                    "2026-11-27T24:00:00Z",
                    "2026-11-27T10:61:00Z",
                    us // SECOND,  # epoch seconds
                    us,  # epoch microseconds
                    us * 1000,  # epoch nanoseconds
                    -(us // 1000),
                    0,
                    99_999_999_999,
                    float(us // SECOND),
                    1e300,
                    -1e300,
                    2**63 - 1,
                    2**70,
                    MAX_MS + 1,
                ]
            )
        elif kind < 82:  # the future
            ahead = r.choice([3600, 86400 * 365, 86400 * 365 * 100]) * SECOND  # far beyond the 5 min: no race
            us = self.now + ahead + r.randrange(SECOND)
            obj["event_time"] = r.choice([iso(us), us // 1000, "9999-12-31T23:59:59Z"])
        else:  # extreme and impossible amounts
            obj["event_type"] = "purchase"
            obj.setdefault("product_id", "p1")
            obj.setdefault("price", 1.0)
            g = r.choice(["price", "quantity"])
            obj[g] = r.choice(
                [-1, -0.01, -1e308, -5e-324, 1e15 * (1 + 1e-15), 1e16, 1e308, 2**63 - 1, 2**64 - 1]
                if g == "price"
                else [0, -1, -(2**63), 2**31, 2**63 - 1, 2**64 - 1, 3_000_000_000]
            )
        self.add(dumps(obj), key if r.random() < 0.9 else None)


def _nest(depth: int) -> Any:
    x: Any = "leaf"
    for i in range(depth):
        x = [x] if i % 2 else {"k": x}
    return x


def build(seed: int, bad_target: int, valid_target: int, now: int) -> tuple[Traffic, Counter[str], Counter[str]]:
    """Interleave bad and valid messages until the oracle counts both targets; returns the traffic, the
    expected reasons and the valid copies per event_id."""
    fz = Fuzz(seed, now)
    malformed: Counter[tuple[bytes, str]] = Counter()
    reasons: Counter[str] = Counter()
    copies: Counter[str] = Counter()
    first: dict[str, Event] = {}
    p, bad, valid = bad_target / (bad_target + valid_target), 0, 0
    while bad < bad_target or valid < valid_target:
        start = len(fz.values)
        if bad < bad_target and (valid >= valid_target or fz.rng.random() < p):
            fz.bad()
        else:
            fz.valid()
        for v in fz.values[start:]:
            verdict = oracle(v, now)
            if isinstance(verdict, Bad):
                malformed[(v, verdict.reason)] += 1
                reasons[verdict.reason] += 1
                bad += 1
            else:
                first.setdefault(verdict.event_id, verdict)
                copies[verdict.event_id] += 1
                valid += 1
    return Traffic(fz.keys, fz.values, malformed, set(first), list(first.values())), reasons, copies


def invalid_counters(body: str) -> Counter[str]:
    out: Counter[str] = Counter()
    for m in re.finditer(r'^fstore_stream_events_invalid_total\{reason="([^"]+)"\} (\S+)$', body, re.M):
        out[m.group(1)] = int(float(m.group(2)))
    return out


def test_fuzz_100k_bad_messages_through_kafka(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    seed = int(os.environ.get("FSTORE_FUZZ_SEED", "20261127"))
    print(f"fuzz seed {seed}")
    now = time.time_ns() // 1000
    traffic, reasons, copies = build(seed, bad_target=100_000, valid_target=25_000, now=now)
    n_bad = sum(traffic.malformed.values())
    assert n_bad >= 100_000 and len(traffic.valid_ids) >= 20_000
    families = {r.split(":")[0] for r in reasons}
    assert families >= {
        "malformed_json",
        "oversized",
        "missing_field",
        "invalid_type",
        "invalid_id",
        "unknown_event_type",
        "negative_amount",
        "future_timestamp",
    }, reasons
    print(f"{len(traffic.values)} messages: {n_bad} bad, {len(traffic.values) - n_bad} valid; {dict(reasons)}")

    w = worker_factory(kafka_broker)
    w.start()
    half = len(traffic.values) // 2
    publish(kafka_broker, w.topic, traffic, 0, half)
    time.sleep(1)
    assert w.proc is not None and w.proc.poll() is None, w.log_tail()
    publish(kafka_broker, w.topic, traffic, half)
    w.wait_done(len(traffic.values), timeout=240)  # asserts the worker is alive on every poll
    body = urllib.request.urlopen(f"http://127.0.0.1:{w.port}/metrics", timeout=5).read().decode()
    w.stop()
    assert w.proc.returncode == 0, w.log_tail()

    assert invalid_counters(body) == reasons
    records = kafka_io.read_topic(kafka_broker.bootstrap, w.dlq, timeout=120)
    got = Counter((r.value, reason) for r, reason in dlq_reasons(kafka_broker, w.dlq, records))
    if got != traffic.malformed:
        missing, extra = traffic.malformed - got, got - traffic.malformed
        examples = [(v[:120], r) for v, r in list(missing)[:8]], [(v[:120], r) for v, r in list(extra)[:8]]
        raise AssertionError(f"DLQ differs: {sum(missing.values())} missing, {sum(extra.values())} extra: {examples}")
    raw = raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"])
    assert Counter(raw.column("event_id").to_pylist()) == copies  # every valid copy stored once, no more
    assert_tiles_exact(redis_client, traffic)
