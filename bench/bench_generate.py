"""Benchmark: events/s of ``fstore generate`` (generation + JSON encoding + file writing).

Usage: ``python bench/bench_generate.py [--events N] [--out-dir DIR]``. Prints one JSON line with the
figures for Parquet and JSONL. Other benchmark scripts can call :func:`run`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from examples.synth.cli import write_stream
from examples.synth.generator import GeneratorConfig
from fstore.core.timeutil import DAY, parse_timestamp

END = parse_timestamp("2026-01-01T00:00:00Z")  # fixed, so every run writes the same bytes


def run(events: int = 1_000_000, out_dir: str | Path | None = None, seed: int = 7) -> dict[str, Any]:
    """Generate ``events`` messages (30 days, default config) to Parquet and to JSONL; return the figures.

    Args:
        events: messages per file.
        out_dir: where the files go (kept); None: a temporary directory, removed afterwards.
        seed: generator seed.

    Returns:
        ``{"events": N, "parquet": {...summary...}, "jsonl": {...}, "cpus": n, "python": version}``; each
        summary has ``events_per_s``, ``seconds`` and ``bytes``.
    """
    cfg = GeneratorConfig(start=END - 30 * DAY, end=END, events=events)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(out_dir) if out_dir is not None else Path(tmp)
        figures: dict[str, Any] = {"events": events, "cpus": os.cpu_count(), "python": platform.python_version()}
        for ext in ("parquet", "jsonl"):
            summary = write_stream(cfg, seed, directory / f"bench_events.{ext}", progress=False)
            figures[ext] = summary.as_dict()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--events", type=int, default=1_000_000, help="messages per file (default 1,000,000)")
    parser.add_argument("--out-dir", default=None, help="keep the files here (default: a temp dir)")
    args = parser.parse_args()
    print(json.dumps(run(args.events, args.out_dir)))


if __name__ == "__main__":
    main()
