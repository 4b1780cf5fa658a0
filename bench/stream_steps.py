"""CPU per valid event of the stream worker's pure steps, offline, on the traffic of ``bench/stream_throughput.py``.

The throughput bench measures the whole worker (Kafka fetch, event loop, Redis round trips, the raw sink's
thread); this one times only the four pure steps a batch goes through in ``SpeedLayer.begin``, without any
service, so a change to one of them can be compared with its parent on a shared machine:

* ``prepare`` — :func:`jobs.stream.pipeline.prepare`: decode, validate, classify, payload hashes;
* ``plan`` — :meth:`jobs.stream.sinks.TileWriter.plan`: group by ``(view, entity)`` and pack the script calls;
* ``claims`` — :func:`jobs.stream.claims.pack_claims`: the event_id claims' script calls;
* ``rows`` — :func:`fstore.delta.raw_log.rows_table`: the batch's ``raw_events`` rows as Arrow.

Same generator settings as the throughput bench (6 hours of events, 50,000 users, 5,000 products, 2 %
duplicates), batches of ``--batch`` messages, the worker's garbage-collector settings; each step's CPU time
(``time.process_time``) per valid message, the best of ``--passes`` passes over the same batches.

Usage: ``python bench/stream_steps.py [--events 100000] [--batch 10000] [--passes 7]``; prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from examples.synth.generator import GeneratorConfig, generate  # noqa: E402
from fstore.core.timeutil import DAY, SECOND  # noqa: E402
from fstore.delta import raw_log  # noqa: E402
from fstore.event_reader import reader_for  # noqa: E402
from fstore.plan_source import current_plan  # noqa: E402
from jobs.stream.claims import pack_claims  # noqa: E402
from jobs.stream.layer import tune_gc  # noqa: E402
from jobs.stream.pipeline import prepare  # noqa: E402
from jobs.stream.sinks import TileWriter  # noqa: E402
from jobs.stream.speed_lua import marker_generation  # noqa: E402

STEPS = ("prepare", "plan", "claims", "rows")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--events", type=int, default=100_000, help="messages generated")
    ap.add_argument("--batch", type=int, default=10_000, help="messages per batch (FSTORE_STREAM_BATCH_MAX)")
    ap.add_argument("--passes", type=int, default=7, help="passes over the batches; the best is reported")
    args = ap.parse_args()
    now = time.time_ns() // 1000
    cfg = GeneratorConfig(
        start=now - 6 * 3600 * SECOND, end=now, events=args.events, users=50_000, products=5_000, duplicate_rate=0.02
    )
    values = [v for b in generate(cfg, 1, dumps=orjson.dumps) for v in b.values]
    batches = [values[i : i + args.batch] for i in range(0, len(values), args.batch)]
    plan = current_plan()
    reader = reader_for(plan)
    marker_ttl = 86_400
    tiles = TileWriter(object(), plan, marker_ttl, 9 * marker_ttl)
    tune_gc(args.batch)
    best: dict[str, float] | None = None
    valid = 0
    for _ in range(args.passes):
        spent = dict.fromkeys(STEPS, 0.0)
        valid, last_at = 0, 0
        for batch in batches:
            c0 = time.process_time()
            prep = prepare(batch, now, last_at, None, 8 * DAY, reader)
            c1 = time.process_time()
            tiles.plan(prep.fresh, now)
            c2 = time.process_time()
            pack_claims(prep.claims, tiles.keys, *marker_generation(now, marker_ttl))
            c3 = time.process_time()
            raw_log.rows_table(plan.schema, prep.valid, prep.hashes, prep.ingested_at)
            c4 = time.process_time()
            spent["prepare"] += c1 - c0
            spent["plan"] += c2 - c1
            spent["claims"] += c3 - c2
            spent["rows"] += c4 - c3
            last_at, valid = prep.last_at, valid + len(prep.valid)
        us = {k: v / valid * 1e6 for k, v in spent.items()}
        us["total"] = sum(us.values())
        if best is None or us["total"] < best["total"]:
            best = us
    assert best is not None
    out = {
        "messages": len(values),
        "valid": valid,
        "batch": args.batch,
        "cpu_us_per_valid_event": {k: round(v, 3) for k, v in best.items()},
        "load_avg_1m": round(os.getloadavg()[0], 2),
    }
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
