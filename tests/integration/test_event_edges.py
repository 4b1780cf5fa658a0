"""The event contract's edges (docs/design.md §2) through the real worker and through ``fstore ingest``.

A black-box table: each message, as bytes (or a Kafka tombstone), with the verdict the contract gives it —
a reason from the closed list, or the row ``raw_events`` must hold. The messages go to a real broker and
the worker as a process; then every dead letter must be in the DLQ topic with its original bytes and its
reason, the worker's per-reason counters must count them, every valid one must be in ``raw_events`` with
exactly the stored values the contract names (UTC microseconds, defaults, nulls, no undeclared column),
and no personal data sent in an undeclared field may appear in ``raw_events``' files, in Redis or in the
worker's log. The same lines loaded by ``fstore ingest`` must get the same verdicts and the same rows.
"""

from __future__ import annotations

import contextlib
import json
import re
import time
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
import redis
from confluent_kafka import Producer

from fstore.delta import raw_log
from fstore.devsvc.services import Broker
from fstore.kafka import client as kafka_io
from tests.support.paths import run_fstore
from tests.support.stream import Factory, dlq_reasons

pytestmark = pytest.mark.integration

MS = 1_000  # µs per millisecond
PII = ("pii.person@example.com", "+44 20 7946 0958", "203.0.113.77", "Jane Q Public")
DECLARED = ("event_id", "event_type", "user_id", "product_id", "event_time", "price", "quantity", "session_id")
Case = tuple[str, bytes | None, "str | dict[str, Any]"]


def iso(us: int, offset_min: int = 0) -> str:
    tz = timezone(timedelta(minutes=offset_min))
    return (datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)).astimezone(tz).isoformat()


def cases(now_us: int) -> list[Case]:
    """``(label, value, verdict)``: a reason, or the ``raw_events`` row (declared fields, event_time in µs)."""
    t = now_us - 3_600_000_000 - (now_us % 1_000_000)  # an hour ago, on a whole second
    eve = now_us - now_us % 86_400_000_000 - 3_600_000_000  # 23:00 UTC yesterday: another date at +14:00
    base: dict[str, Any] = {
        "event_type": "purchase",
        "user_id": "edge-u",
        "product_id": "edge-p",
        "event_time": t // MS,
        "price": 9.5,
        "quantity": 2,
    }

    def m(eid: str, **kw: Any) -> bytes:
        obj = {"event_id": eid, **base, **kw}
        return json.dumps({k: v for k, v in obj.items() if v is not ...}).encode()

    def row(eid: str, **kw: Any) -> dict[str, Any]:
        r = {"event_id": eid, **base, "event_time": t, "session_id": None, **kw}
        return {k: (None if v is ... else v) for k, v in r.items()}

    pad = m("v-64k", junk="")
    out: list[Case] = [
        # valid: times, defaults, ids, unknown fields, size
        ("iso +05:30", m("v-ist", event_time=iso(t, 330)), row("v-ist")),
        ("iso -08:00", m("v-pst", event_time=iso(t, -480)), row("v-pst")),
        ("iso +14:00, the UTC day before", m("v-day", event_time=iso(eve, 840)), row("v-day", event_time=eve)),
        ("iso Z with µs", m("v-us", event_time=iso(t + 123_456)), row("v-us", event_time=t + 123_456)),
        ("epoch ms", m("v-ms", event_time=t // MS + 7), row("v-ms", event_time=t + 7 * MS)),
        ("quantity absent", m("v-q1", quantity=...), row("v-q1", quantity=1)),
        ("price 0", m("v-p0", price=0), row("v-p0", price=0.0)),
        ("price int", m("v-pint", price=12), row("v-pint", price=12.0)),
        (
            "page_view, optionals absent",
            m("v-pv", event_type="page_view", product_id=..., price=..., quantity=...),
            row("v-pv", event_type="page_view", product_id=None, price=None, quantity=1),
        ),
        ("id of 128", m("v" * 128), row("v" * 128)),
        ("id charset", m("v-A.z_0:9-"), row("v-A.z_0:9-")),
        ("session id", m("v-sess", session_id="s-1"), row("v-sess", session_id="s-1")),
        (
            "personal data in undeclared fields",
            m("v-pii", email=PII[0], phone=PII[1], ip=PII[2], customer={"name": PII[3]}),
            row("v-pii"),
        ),
        (
            "future by 4:59",
            m("v-fut", event_time=iso(now_us + 299 * 1_000_000)),
            row("v-fut", event_time=now_us + 299_000_000),
        ),
        ("exactly 64 KiB", m("v-64k", junk="x" * (65_536 - len(pad))), row("v-64k")),
        # invalid: the bytes
        ("not UTF-8", m("x-utf8").replace(b"edge-u", b"edge-\xff"), "malformed_json"),
        ("JSON array", b'[{"event_id": "x"}]', "malformed_json"),
        ("JSON number", b"42", "malformed_json"),
        ("JSON null", b"null", "malformed_json"),
        ("JSON string", b'"x"', "malformed_json"),
        ("empty value", b"", "malformed_json"),
        ("deeply nested", m("x-deep").replace(b"}", b', "n": ' + b"[" * 5000 + b"]" * 5000 + b"}"), "malformed_json"),
        ("NaN", m("x-nan").replace(b"9.5", b"NaN"), "malformed_json"),
        ("Infinity", m("x-inf").replace(b"9.5", b"Infinity"), "malformed_json"),
        ("truncated", m("x-trunc")[:-1], "malformed_json"),
        ("64 KiB + 1", m("x-64k", junk="x" * (65_537 - len(m("x-64k", junk="")))), "oversized"),
        # invalid: the fields
        ("no event_id", m("x", event_id=...).replace(b'"event_id": "x", ', b""), "missing_field:event_id"),
        ("no event_type", m("x-et", event_type=...), "missing_field:event_type"),
        ("no user_id", m("x-u", user_id=...), "missing_field:user_id"),
        ("no product_id", m("x-p", product_id=...), "missing_field:product_id"),
        ("no event_time", m("x-t", event_time=...), "missing_field:event_time"),
        ("purchase without price", m("x-pr", price=...), "missing_field:price"),
        ("price null", m("x-prn", price=None), "missing_field:price"),
        ("price as a string", m("x-prs", price="9.5"), "invalid_type:price"),
        ("quantity 1.5", m("x-q15", quantity=1.5), "invalid_type:quantity"),
        ("quantity true", m("x-qt", quantity=True), "invalid_type:quantity"),
        ("event_id a number", m("x", event_id=5), "invalid_type:event_id"),
        ("ISO without offset", m("x-noff", event_time=iso(t)[:19]), "invalid_type:event_time"),
        ("ISO fraction of an hour", m("x-fh", event_time=iso(t)[:13] + ".5Z"), "invalid_type:event_time"),
        ("ISO three-digit seconds", m("x-s3", event_time=iso(t)[:17] + "080Z"), "invalid_type:event_time"),
        ("ISO fourth group", m("x-4g", event_time=iso(t)[:19] + ":00Z"), "invalid_type:event_time"),
        ("id of 129", m("x" * 129), "invalid_id:event_id"),
        ("id with a space", m("x y"), "invalid_id:event_id"),
        ("id with a slash", m("x-p/1", user_id="u/1"), "invalid_id:event_id"),
        ("user_id bad char", m("x-ub", user_id="edge@u"), "invalid_id:user_id"),
        ("empty product_id", m("x-pe", product_id=""), "invalid_id:product_id"),
        ("unknown event_type", m("x-ut", event_type="hover"), "unknown_event_type"),
        ("event_type case", m("x-uc", event_type="Purchase"), "unknown_event_type"),
        ("negative price", m("x-np", price=-0.01), "negative_amount"),
        ("quantity 0", m("x-q0", quantity=0), "negative_amount"),
        ("future by 5:30", m("x-fut", event_time=iso(now_us + 330 * 1_000_000)), "future_timestamp"),
        ("future epoch ms", m("x-futms", event_time=now_us // MS + 600_000), "future_timestamp"),
        # several reasons: fields in declaration order, the clock last
        (
            "missing and bad type",
            m("x", event_id=..., user_id=5).replace(b'"event_id": "x", ', b""),
            "missing_field:event_id",
        ),
        ("bad id and bad type", m("x y", event_type="hover"), "invalid_id:event_id"),
        ("unknown type and negative", m("x-un", event_type="hover", price=-1), "unknown_event_type"),
        ("negative and future", m("x-nf", price=-1, event_time=now_us // MS + 600_000), "negative_amount"),
    ]
    return out


def publish_raw(broker: Broker, topic: str, values: list[bytes | None]) -> None:
    """Send values in order to partition 0 (a ``None`` value is a tombstone), waiting for every delivery."""
    p = Producer({"bootstrap.servers": broker.bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors: list[object] = []
    for v in values:
        p.produce(topic, value=v, key=b"edge-u", partition=0, on_delivery=lambda e, _m: errors.append(e) if e else None)
    assert p.flush(30) == 0 and not errors, errors


def invalid_counters(port: int, zeros: bool = False) -> Counter[str]:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    found = re.findall(r'^fstore_stream_events_invalid_total\{reason="([^"]*)"\} (\S+)$', body, re.M)
    return Counter({reason: int(float(v)) for reason, v in found if zeros or float(v)})


def stored_rows(uri: str) -> tuple[pa.Schema, dict[str, dict[str, Any]]]:
    """The schema of ``raw_events`` and its rows by event_id (event_time in µs; every row's event_date is the
    UTC date of its event_time)."""
    table = raw_log.read_table(uri)
    at = table.schema.get_field_index("event_time")
    table = table.set_column(at, "event_time", table.column(at).cast(pa.int64()))
    rows = table.to_pylist()
    assert [r["event_date"] for r in rows] == [
        datetime.fromtimestamp(r["event_time"] // 1_000_000, UTC).date() for r in rows
    ]
    return table.schema, {r["event_id"]: {k: r[k] for k in DECLARED} for r in rows}


def redis_contents(client: redis.Redis) -> bytes:
    """Every key and value in Redis, as bytes (strings, hashes, sets, lists, sorted sets)."""
    out = []
    for key in client.scan_iter(count=5000):
        kind = client.type(key)
        if kind == b"string":
            out += [key, client.get(key) or b""]
        elif kind == b"hash":
            out += [key, *(x for kv in client.hgetall(key).items() for x in kv)]
        elif kind == b"set":
            out += [key, *client.smembers(key)]
        elif kind == b"list":
            out += [key, *client.lrange(key, 0, -1)]
        elif kind == b"zset":
            out += [key, *client.zrange(key, 0, -1)]
        else:
            raise AssertionError((key, kind))
    return b"\n".join(out)


def assert_no_pii(*blobs: bytes) -> None:
    for blob in blobs:
        for text in PII:
            assert text.encode() not in blob, text


def test_every_edge_reaches_the_dlq_or_raw_events_as_the_contract_says(
    kafka_broker: Broker, redis_client: redis.Redis, worker_factory: Factory, tmp_path: Path
) -> None:
    w = worker_factory(kafka_broker, FSTORE_STREAM_LOG_LEVEL="info")
    w.start()
    # every reason's counter exists at 0 before any message: a series born with its first burst shows no
    # increase to rate(), so that burst would stay out of FstoreDeadLetterRateHigh (probe-ops)
    declared: Counter[str] = Counter()
    deadline = time.monotonic() + 60
    while "malformed_json" not in declared:
        assert time.monotonic() < deadline, f"no dead-letter counters before any message: {declared}\n{w.log_tail()}"
        time.sleep(0.3)
        with contextlib.suppress(OSError):
            declared = invalid_counters(w.port, zeros=True)
    table = cases(time.time_ns() // 1000)
    values: list[bytes | None] = [v for _, v, _ in table] + [None]  # and a tombstone
    want_dlq = Counter((v, r) for _, v, r in table if isinstance(r, str) and v is not None)
    want_dlq[(b"", "malformed_json")] += 1  # the tombstone's dead letter holds empty bytes
    want_rows = {r["event_id"]: r for _, _, r in table if isinstance(r, dict)}
    publish_raw(kafka_broker, w.topic, values)
    w.wait_done(len(values), timeout=90)
    counters = invalid_counters(w.port)
    w.stop()
    assert w.proc is not None and w.proc.returncode == 0, w.log_tail()

    records = kafka_io.read_topic(kafka_broker.bootstrap, w.dlq, timeout=60)
    got_dlq = Counter((r.value, reason) for r, reason in dlq_reasons(kafka_broker, w.dlq, records))
    assert got_dlq == want_dlq, (sorted(got_dlq - want_dlq, key=str)[:5], sorted(want_dlq - got_dlq, key=str)[:5])
    assert counters == Counter(r for (_, r), n in want_dlq.items() for _ in range(n))
    assert set(declared.values()) == {0} and set(counters) <= set(declared), set(counters) - set(declared)

    raw_uri = str(tmp_path / "data" / "raw_events")
    schema, rows = stored_rows(raw_uri)
    assert set(schema.names) - {"ingested_at", "payload_hash", "event_date"} == set(DECLARED)
    bad = {eid: (rows.get(eid), want) for eid, want in want_rows.items() if rows.get(eid) != want}
    assert not bad and set(rows) == set(want_rows), bad
    files = b"".join(p.read_bytes() for p in Path(raw_uri).rglob("*") if p.is_file())
    assert_no_pii(files, redis_contents(redis_client), (w.tmp / f"worker-{w.runs}.log").read_bytes())

    # the same lines through ``fstore ingest`` (a file holds no tombstone, and a blank line is no message):
    # the same verdicts and rows
    lines = [v for v in values if v]
    path = tmp_path / "edges.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in lines))
    data = tmp_path / "ingested"
    out = run_fstore(["ingest", "--json", "--no-speed", str(path)], {"FSTORE_DATA_DIR": str(data)}, tmp_path)
    report = json.loads(out.strip().splitlines()[-1])
    want_reasons = Counter(r for _, v, r in table if isinstance(r, str) and v)
    assert Counter(report["rejected_by_reason"]) == want_reasons
    _, ingested = stored_rows(str(data / "raw_events"))
    assert ingested == rows
    dead = raw_log.read_table(str(data / "dead_letters"))
    assert Counter(dead.column("reason").to_pylist()) == want_reasons
    assert_no_pii(b"".join(p.read_bytes() for p in data.rglob("*") if p.is_file()))
