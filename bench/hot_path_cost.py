"""Deterministic cost of the arithmetic hot paths: instructions per unit, counted by valgrind's callgrind.

CPU time on a shared machine moves with the load by ±15 %; instruction counts do not, so a change to the
online merge or the stream's pre-aggregation can be compared with its parent commit exactly. Each path
runs once with 1 round and once with ``1 + --rounds`` rounds (same data, ``PYTHONHASHSEED=0``); the
difference divided by the extra units excludes start-up, data building and warm-up.

* ``eval`` — :func:`fstore.online.merge.evaluate_columns` of every feature of one entity (decoded tiles
  in, values out): the window arithmetic of an online read. Unit: one entity read.
* ``finish`` — :func:`fstore.online.merge.finish`: decoding the entity's speed hashes plus ``eval``.
  Unit: one entity read.
* ``plan`` — :func:`jobs.stream.speed_lua.group_events` + :func:`~jobs.stream.speed_lua.plan_calls` +
  packing: the stream worker's pre-aggregation of a batch. Unit: one event.

Data: 15,000 events over 8 days for 60 users and 15 products (batch tiles before a cutover, 13 h of
speed tiles after it); 20,000 events in batches of 5,000 for the stream. Needs ``valgrind`` on PATH.

Usage: ``python bench/hot_path_cost.py [--rounds 6] [--paths eval,finish,plan]`` (about a minute per path).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from fstore.core.timeutil import DAY, HOUR, MINUTE, parse_timestamp  # noqa: E402
from tests.support.legacy.events_example import Event  # noqa: E402
from tests.support.legacy.features import PRODUCT_ENGAGEMENT, USER_ACTIVITY  # noqa: E402
from tests.support.legacy.tiles import build_tiles  # noqa: E402

C = parse_timestamp("2026-11-21T00:00:00Z")
AS_OF = C + 13 * HOUR + 7 * MINUTE
PATHS = ("eval", "finish", "plan")


def events(n: int, seed: int, users: int, products: int) -> list[Event]:
    """Events of a plausible type mix over the 8 days before ``AS_OF``."""
    rng = random.Random(seed)
    types = ["page_view"] * 5 + ["impression"] * 8 + ["click"] * 3 + ["add_to_cart", "purchase"]
    return [
        Event(
            f"e{i}",
            rng.choice(types),
            f"u{rng.randrange(users)}",
            f"p{rng.randrange(products)}",
            AS_OF - rng.randrange(1, 8 * DAY),
            round(rng.uniform(1, 90), 2),
            rng.randint(1, 3),
            None,
        )
        for i in range(n)
    ]


def entity_reads() -> list[tuple[Any, Any, list[dict[bytes, bytes]]]]:
    """Per entity of both views: the read, its decoded batch tiles and its speed hashes (HGETALL replies)."""
    from fstore.online.merge import EntityRead, decode_batch
    from fstore.plan_source import current_plan
    from fstore.redis.layout import packed_fields, partial_fields

    evs = events(15_000, 1, 60, 15)
    out = []
    for view in (USER_ACTIVITY, PRODUCT_ENGAGEMENT):
        by: dict[str, tuple[dict[bytes, bytes], dict[int, dict[bytes, bytes]]]] = {}
        for (entity, size, start), tile in build_tiles(view, evs).items():
            batch, speed = by.setdefault(entity, ({}, {}))
            for m, p in tile.items():
                if start < C:
                    batch.update({k.encode(): v.encode() for k, v in packed_fields(size, start, m, p).items()})
                else:
                    fields = partial_fields(size, start, m, p)
                    speed.setdefault(start // DAY, {}).update({k.encode(): v.encode() for k, v in fields.items()})
        served = current_plan().view(view.name)  # the merge runs from the plan (same features, same tiles)
        for entity, (batch, speed) in sorted(by.items()):
            read = EntityRead(served, entity, served.feature_names)
            out.append((read, decode_batch(served, batch, C, AS_OF - HOUR), [speed[d] for d in sorted(speed)]))
    return out


def run(path: str, rounds: int) -> int:
    """Run ``rounds`` rounds of one path; returns the number of units."""
    if path in ("eval", "finish"):
        from fstore.online.merge import decode_speed_hashes, evaluate_columns, finish

        reads = entity_reads()
        columns = [(r, b, decode_speed_hashes(s, C)[0]) for r, b, s in reads]
        for step in range(rounds):
            t = AS_OF + step * 7_777_777
            if path == "eval":
                for r, b, cols in columns:
                    evaluate_columns(r.view, r.names, b, cols, t)
            else:
                for r, b, s in reads:
                    finish(r, C, b, s, t)
        return rounds * len(reads)
    from fstore.plan_source import current_plan
    from jobs.stream.speed_lua import group_events, plan_calls
    from jobs.stream.tile_steps import view_steps

    evs = events(4 * 5000, 2, 5_000, 500)
    for i in range(0, len(evs), 5):  # a fifth of the events in the last 13 hours, as live traffic
        evs[i] = evs[i]._replace(event_time=C + (evs[i].event_time - C) % (13 * HOUR))
    batches = [evs[i : i + 5000] for i in range(0, len(evs), 5000)][:rounds]
    for batch in batches:
        plan = current_plan()
        subs = list(
            group_events([view_steps(v, plan.schema) for v in plan.views], [e._asdict() for e in batch]).values()
        )
        for call in plan_calls(subs, 3600, 3600, cluster=False, chunk=4000, generation=1):
            call.packed()
    return sum(map(len, batches))


def counted(path: str, rounds: int) -> tuple[int, int]:
    """(instructions, units) of one run under callgrind."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "PYTHONPATH": str(ROOT)}
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, __file__]
    proc = subprocess.run([*cmd, "--run", path, "--rounds", str(rounds)], env=env, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", proc.stderr)
    units = re.search(r"units (\d+)", proc.stdout)
    if proc.returncode or not found or not units:
        raise RuntimeError(f"callgrind run of {path} failed:\n{proc.stderr[-2000:]}")
    return int(found.group(1)), int(units.group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=6, help="extra rounds counted (a path's units per round vary)")
    ap.add_argument("--paths", default=",".join(PATHS), help="comma-separated subset of eval, finish, plan")
    ap.add_argument("--run", choices=PATHS, help=argparse.SUPPRESS)  # the measured child process
    args = ap.parse_args()
    if args.run:
        print("units", run(args.run, args.rounds))
        return
    out: dict[str, Any] = {}
    for path in args.paths.split(","):
        base, base_units = counted(path, 1)
        more, more_units = counted(path, 1 + args.rounds)
        out[path] = {"instructions_per_unit": (more - base) // (more_units - base_units), "units": more_units}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
