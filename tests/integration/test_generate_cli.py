"""Acceptance: `fstore generate --events 1000000 --seed 7` is byte-identical across runs (real CLI)."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.integration


def test_one_million_events_same_sha256_twice(tmp_path: Path) -> None:
    fstore = str(Path(sys.executable).with_name("fstore"))
    digests = []
    for name in ("a.parquet", "b.parquet"):
        out = tmp_path / name
        res = subprocess.run(
            [fstore, "generate", "--events", "1000000", "--seed", "7", "--end", "2026-11-01", "--out", str(out)],
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert res.returncode == 0, res.stderr
        assert "1,000,000 messages" in res.stdout
        digests.append(hashlib.sha256(out.read_bytes()).hexdigest())
    assert digests[0] == digests[1]
    assert pq.ParquetFile(tmp_path / "a.parquet").metadata.num_rows == 1_000_000
