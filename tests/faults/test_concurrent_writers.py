"""Issue 12, row 5 (and Build 5): two ``fstore ingest`` of the same file at once, as two processes.

Before: 98,000 of 294,000 event_ids were stored twice and the dead letters doubled. Now each batch's
``raw_events`` commit is made only on top of the version it was checked against (a concurrent commit sends
it back to check again), and a batch's dead letters carry its idempotency key (a Delta application
transaction): every event_id is stored once and every rejected line is dead-lettered once, whoever wins.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pyarrow.compute as pc
import pytest

from fstore.delta import raw_log
from tests.support.stream import ROOT, make_traffic

pytestmark = pytest.mark.faults


def test_two_ingests_of_one_file_at_once_store_each_event_and_dead_letter_once(tmp_path: Path) -> None:
    traffic = make_traffic(24_000, seed=51, users=500, products=80)
    path = tmp_path / "events.jsonl"
    path.write_bytes(b"".join(v + b"\n" for v in traffic.values))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FSTORE_DATA_DIR": str(tmp_path / "data")}
    argv = [
        str(Path(sys.executable).parent / "fstore"),
        "ingest",
        str(path),
        "--batch-size",
        "1500",
        "--json",
        "--no-speed",
    ]
    procs = [subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [e.decode()[-2000:] for _, e in outs]

    ids = raw_log.read_table(str(tmp_path / "data" / "raw_events"), ["event_id"]).column("event_id")
    assert len(ids) == len(pc.unique(ids)), f"{len(ids) - len(pc.unique(ids))} event_ids stored twice"
    assert set(ids.to_pylist()) == traffic.valid_ids
    dead = raw_log.read_table(str(tmp_path / "data" / "dead_letters"), ["reason"])
    want = Counter(reason for (_, reason), n in traffic.malformed.items() for _ in range(n))
    assert Counter(dead.column("reason").to_pylist()) == want  # not doubled
