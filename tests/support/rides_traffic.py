"""Random valid traffic for the ``rides`` repository (tests/support/repos/rides): every event kind, the
fields each kind requires, optional fields sometimes absent, times spread over a span."""

from __future__ import annotations

import random
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import yaml

from fstore.core.timeutil import iso
from tests.support.repos import ROOT

Row = dict[str, Any]

KINDS = ("requested", "completed", "cancelled", "rated", "tipped")


def rides(n: int, start: int, span: int, seed: int, drivers: int = 6, zones: int = 4, riders: int = 15) -> list[Row]:
    """``n`` events with ``ts`` in ``[start, start + span)`` µs, sorted by time (ids ``e0``, ``e1``…)."""
    rng = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        kind = rng.choice(KINDS)
        ev: Row = {
            "uid": f"e{i}",
            "kind": kind,
            "zone_id": f"z{rng.randrange(zones)}",
            "ts": start + rng.randrange(span),
            "driver_id": None if kind == "requested" and rng.random() < 0.5 else f"d{rng.randrange(drivers)}",
            "rider": f"r{rng.randrange(riders)}" if rng.random() < 0.9 else None,
            "airport": rng.random() < 0.3 if rng.random() < 0.8 else None,
        }
        if kind == "completed":
            ev |= {
                "distance_km": round(rng.uniform(0.5, 40.0), 3),
                "rate_per_km": round(rng.uniform(0.8, 3.0), 2),
                "surge": rng.choice((1.0, 1.0, 1.5, 2.25)),
            }
        elif kind == "rated":
            ev["stars"] = rng.randint(1, 5)
        elif kind == "tipped":
            ev["tip"] = round(rng.uniform(0.0, 20.0), 2)
        out.append(ev)
    out.sort(key=lambda r: r["ts"])
    return out


def rides_repo(tmp: Path, redis_url: str) -> Path:
    """A copy of the rides repository wired to the fstore online and offline stores."""
    repo = tmp / "rides_repo"
    shutil.copytree(ROOT / "rides", repo, ignore=shutil.ignore_patterns("data", "__pycache__"))
    cfg = yaml.safe_load((repo / "feature_store.yaml").read_text())
    cfg["online_store"] = {"type": "fstore.feast.online_store.FstoreOnlineStore", "redis_url": redis_url}
    cfg["offline_store"] = {"type": "fstore.feast.offline_store.FstoreOfflineStore", "engine": "local"}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return repo


def message(ev: Mapping[str, Any]) -> tuple[str, bytes]:
    body = {k: (iso(v) if k == "ts" else v) for k, v in ev.items() if v is not None}
    return str(ev["zone_id"]), orjson.dumps(body)
