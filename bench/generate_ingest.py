"""Benchmark of the Foundation paths: ``fstore generate`` to Parquet/JSONL and ``fstore ingest`` into Delta.

Usage: ``python bench/generate_ingest.py [--events N]``. Generates N events (30 days, 10k users, 1k
products, 1% duplicates/late/PII, 0.1% malformed) to Parquet and JSONL, then ingests the Parquet file into
a fresh Delta ``raw_events`` and ingests it again (the idempotent re-run). Prints one JSON object with
events/s for every step and the ratio to the 100,000 events/s target.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

from examples.synth.cli import write_stream
from examples.synth.generator import GeneratorConfig
from fstore.core.timeutil import DAY, parse_timestamp
from fstore.ingest import Ingestor

END = parse_timestamp("2026-01-01T00:00:00Z")
TARGET = 100_000


def run(events: int) -> dict[str, Any]:
    """Run every step once on ``events`` messages and return the figures."""
    cfg = GeneratorConfig(
        start=END - 30 * DAY,
        end=END,
        events=events,
        duplicate_rate=0.01,
        late_rate=0.01,
        malformed_rate=0.001,
        pii_rate=0.01,
    )
    out: dict[str, Any] = {
        "events": events,
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        for ext in ("parquet", "jsonl"):
            s = write_stream(cfg, 7, d / f"events.{ext}", progress=False).as_dict()
            out[f"generate_{ext}_events_per_s"] = s["events_per_s"]
        for label, src in (("ingest_parquet", "events.parquet"), ("reingest_parquet", "events.parquet")):
            ing = Ingestor(str(d / "raw_events"), str(d / "dead_letters"))
            t = time.perf_counter()
            rep = ing.ingest_file(d / src)
            secs = time.perf_counter() - t
            out[f"{label}_events_per_s"] = round(rep.messages / secs)
            out[f"{label}_written"] = rep.written
        out["ratio_to_target"] = {k: round(v / TARGET, 2) for k, v in out.items() if k.endswith("_per_s")}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description="generate + ingest throughput")
    p.add_argument("--events", type=int, default=1_000_000)
    print(json.dumps(run(p.parse_args().events), indent=1))


if __name__ == "__main__":
    main()
