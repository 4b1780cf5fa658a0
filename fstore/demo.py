"""``make demo``: the whole pipeline end to end on local services, printing every step.

Run as ``python -m fstore.demo [--keep-services] [--users N] [--days N]``. Each step runs the same
``fstore``/``feast`` command a user would type, echoed with a ``$`` prompt, so the demo doubles as a
walkthrough. The local Redis and broker are stopped at the end unless ``--keep-services`` is given.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def run(cmd: list[str], cwd: Path = ROOT, env: dict[str, str] | None = None) -> None:
    """Echo and run one command; stop the demo with its exit status if it fails."""
    where = "" if cwd == ROOT else f"(cd {cwd.relative_to(ROOT)} && "
    print(f"\n$ {where}{shlex.join(cmd)}{')' if where else ''}", flush=True)
    exe = str(BIN / cmd[0]) if (BIN / cmd[0]).exists() else cmd[0]
    res = subprocess.run([exe, *cmd[1:]], cwd=cwd, env=env, check=False)
    if res.returncode != 0:
        sys.exit(f"demo: `{shlex.join(cmd)}` failed with exit status {res.returncode}")


def summary(history: Path) -> None:
    """Print what exists now: tables, dead letters, a sample of features computed from raw_events."""
    import pyarrow.compute as pc

    from fstore import raw_log
    from fstore.core.dedupe import first_ingested_arrow
    from fstore.core.events import Event
    from fstore.core.features import VIEWS
    from fstore.core.tiles import values_at
    from fstore.core.timeutil import iso, to_micros
    from fstore.settings import get_settings

    s = get_settings()
    raw = raw_log.read_table(s.table("raw_events"))
    dedup = first_ingested_arrow(raw)
    times = pc.min_max(raw.column("event_time"))
    print("\n=== summary ===")
    print(f"message file        {history} ({history.stat().st_size / 1e6:.1f} MB)")
    print(f"raw_events          {raw.num_rows:,} rows, {dedup.num_rows:,} distinct event_ids, "
          f"{len(set(raw.column('event_date').to_pylist()))} event_date partitions, "
          f"{times['min'].as_py():%Y-%m-%d %H:%M} .. {times['max'].as_py():%Y-%m-%d %H:%M} UTC")
    dead = raw_log.read_table(s.table("dead_letters"), ["reason"])
    print(f"dead_letters        {dead.num_rows:,} rows: "
          + ", ".join(f"{r} {n}" for r, n in Counter(dead.column("reason").to_pylist()).most_common(6)) + ", ...")
    print("feast               feature views user_activity, product_engagement registered in "
          "feature_repo/data/registry.db")
    t = to_micros(times["max"].as_py()) + 1
    for view in VIEWS.values():
        key = view.entity.join_key
        top = pc.value_counts(dedup.column(key).drop_null()).to_pylist()
        entity = max(top, key=lambda x: x["counts"])["values"]
        rows = dedup.filter(pc.equal(dedup.column(key), entity)).to_pylist()
        events = [Event(r["event_id"], r["event_type"], r["user_id"], r["product_id"],
                        to_micros(r["event_time"]), r["price"], r["quantity"], r["session_id"]) for r in rows]
        vals = values_at(view, events, entity, t)
        shown = ", ".join(f"{k}={round(v, 3) if isinstance(v, float) else v}" for k, v in vals.items())
        print(f"{view.name:<19} {key}={entity} at {iso(t)}: {shown}")


def main() -> None:
    p = argparse.ArgumentParser(description="fstore end-to-end demo on local services")
    p.add_argument("--keep-services", action="store_true", help="leave Redis and the broker running")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--products", type=int, default=1_000)
    p.add_argument("--days", type=int, default=30)
    args = p.parse_args()
    started = time.perf_counter()
    history = Path("data/demo/history.parquet")
    try:
        print("fstore demo: local services, 30 days of history, ingest, Feast registry, live traffic")
        run(["fstore", "services", "up"])
        run(["fstore", "generate", "--out", str(history), "--users", str(args.users), "--products",
             str(args.products), "--days", str(args.days), "--duplicate-rate", "0.01", "--late-rate", "0.01",
             "--malformed-rate", "0.001", "--pii-rate", "0.01"])
        run(["fstore", "ingest", str(history)])
        from fstore.localsvc import read_env

        run(["feast", "apply"], cwd=ROOT / "feature_repo", env={**os.environ, **read_env()})
        run(["fstore", "publish", "--live", "--rate", "2000", "--duration", "5", "--malformed-rate", "0.01",
             "--no-progress"])
        summary(history)
        print(f"\ndemo finished in {time.perf_counter() - started:.0f}s")
    finally:
        if not args.keep_services:
            run(["fstore", "services", "down"])


if __name__ == "__main__":
    main()
