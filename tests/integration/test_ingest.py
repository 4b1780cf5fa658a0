"""``fstore ingest`` against real Delta tables on disk."""

from __future__ import annotations

import json
import os
import subprocess
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pyarrow.compute as pc
import pytest

from fstore.core.dedupe import first_ingested_arrow
from fstore.core.event_check import EventCheck
from fstore.core.events import Rejection, parse_row, payload_hash
from fstore.core.plan import Plan
from fstore.delta import raw_log
from fstore.ingest import Ingestor
from fstore.kafka.messages import MessageWriter
from tests.support.repos import installed

pytestmark = pytest.mark.integration


@pytest.fixture(autouse=True)
def plan() -> Iterator[Plan]:
    """The example plan, as the process's plan (what ``fstore ingest`` validates against)."""
    yield from installed("ecommerce")


NOW = 1_800_000_000_000_000  # 2027-01-15, after every event below


def message(i: int, **kw: object) -> bytes:
    obj: dict[str, object] = {
        "event_id": f"e{i}",
        "event_type": "click",
        "user_id": f"u{i % 7}",
        "product_id": f"p{i % 5}",
        "event_time": 1_763_700_000_000 + i * 997_000,
    }
    obj.update(kw)
    return json.dumps(obj).encode()


def build_messages() -> tuple[list[bytes], Counter[str]]:
    msgs = [message(i) for i in range(3000)]
    msgs += [message(5, quantity=3), message(6, email="x@y.z")]  # conflicting duplicate, duplicate with PII
    bad = {
        b"{oops": "malformed_json",
        message(9000, event_type="hover"): "unknown_event_type",
        message(9001, price=-1, event_type="purchase"): "negative_amount",
        message(9002, user_id="bad id"): "invalid_id:user_id",
        message(9003, event_time=NOW // 1000 + 3_600_000, email="leak@example.com"): "future_timestamp",
    }
    msgs += list(bad)
    return msgs, Counter(bad.values())


@pytest.mark.parametrize("ext", ["jsonl", "parquet"])
def test_ingest_is_exact_and_idempotent(tmp_path: Path, ext: str, plan: Plan) -> None:
    msgs, want_rejected = build_messages()
    path = tmp_path / f"events.{ext}"
    with MessageWriter(path) as w:
        w.write([None] * len(msgs), msgs)
    raw_uri, dead_uri = str(tmp_path / "raw_events"), str(tmp_path / "dead_letters")
    clock = iter(range(NOW, NOW + 10_000))
    ing = Ingestor(raw_uri, dead_uri, clock=lambda: next(clock))
    rep = ing.ingest_file(path, batch_size=1000)

    assert rep.messages == len(msgs) and rep.rejected == want_rejected
    assert rep.written == 3000 and rep.duplicates == 2 and rep.already_present == 0

    raw = raw_log.read_table(raw_uri)
    assert raw.num_rows == 3000 == len(set(raw.column("event_id").to_pylist()))
    # Brute force: the winner of each event_id is its first valid line (arrival order, docs/design.md §2).
    expected: dict[str, str] = {}
    check = EventCheck(plan.schema, {e.join_key for e in plan.entities}).check
    for m in msgs:
        ev = parse_row(m, NOW, check)
        if not isinstance(ev, Rejection):
            expected.setdefault(ev["event_id"], payload_hash(m))
    got = dict(zip(raw.column("event_id").to_pylist(), raw.column("payload_hash").to_pylist(), strict=True))
    assert got == expected
    row5 = raw.filter(pc.equal(raw.column("event_id"), "e5")).to_pylist()[0]
    assert row5["quantity"] == 1  # the batch-0 copy wins over the later conflicting one
    assert raw.schema.names == raw_log.raw_schema(plan.schema).names  # no unknown/PII column ever stored

    dead = raw_log.read_table(dead_uri)
    assert Counter(dead.column("reason").to_pylist()) == want_rejected
    assert not any(b"leak@example.com" in p for p in dead.column("payload").to_pylist())

    again = Ingestor(raw_uri, dead_uri, clock=lambda: NOW + 20_000).ingest_file(path)
    assert again.written == 0 and again.already_present == 3000
    assert raw_log.read_table(raw_uri).num_rows == 3000
    assert first_ingested_arrow(raw_log.read_table(raw_uri)).num_rows == 3000


def test_parquet_files_written_by_other_tools_are_ingested_or_refused_with_a_clear_error(tmp_path: Path) -> None:
    """A Parquet export of a topic may hold a tombstone (a null ``value``) or keep the values as text. Before,
    ``fstore ingest`` died on either with a traceback (``len(None)``, "Strings must be encoded before
    hashing") where ``fstore publish`` of the same file sends a tombstone, which the worker dead-letters as
    ``malformed_json``; a file without a ``value`` column gave an ``IndexError`` (found by the contract audit)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.support.paths import FSTORE

    values = [message(1), None, message(2), b""]
    as_text = [None if v is None else v.decode() for v in values]
    raw_uri, dead_uri = str(tmp_path / "raw_events"), str(tmp_path / "dead_letters")
    for name, column in (("bytes", pa.array(values, pa.binary())), ("text", pa.array(as_text, pa.large_string()))):
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"key": pa.array(["u1"] * 4), "value": column}), path)
        rep = Ingestor(raw_uri, dead_uri, clock=lambda: NOW).ingest_file(path)
        assert rep.messages == 4 and rep.rejected == Counter({"malformed_json": 2}), rep.summary()
    stored = raw_log.read_table(raw_uri)
    assert sorted(stored.column("event_id").to_pylist()) == ["e1", "e2"]
    assert stored.column("payload_hash").to_pylist() == [payload_hash(message(1)), payload_hash(message(2))]
    # the second file's dead letters are the first's bytes again: their batch is recognised, not stored twice
    assert Counter(raw_log.read_table(dead_uri).column("reason").to_pylist()) == {"malformed_json": 2}

    pq.write_table(pa.table({"k": ["u1"], "v": [message(3)]}), tmp_path / "other.parquet")
    proc = subprocess.run(
        [FSTORE, "ingest", str(tmp_path / "other.parquet")],
        env={**os.environ, "FSTORE_DATA_DIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "needs a column 'value' of binary or string" in proc.stderr
