"""Traffic and an independent brute force for the ``meters`` repository (tests/support/repos/meters).

The brute force restates docs/design.md §3 by hand for each feature of the repository — its own measure
functions (plain Python, not the expression evaluator), its own hop table, the textbook aggregations — so
that it shares no code with the engines it checks (tests/support/plan_bruteforce.py reuses the plan and
the expression evaluator).
"""

from __future__ import annotations

import math
import random
import shutil
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson
import yaml

from fstore.core.timeutil import iso
from tests.support.repos import ROOT

Row = dict[str, Any]
Value = int | float | None
MIN, HOUR, DAY = 60_000_000, 3_600_000_000, 86_400_000_000
METERS = [f"m{i}" for i in range(5)]
PHASES = ("sample", "sample", "sample", "fault", "reset")


def hop(window: int, slide: int | None = None) -> int:
    """docs/design.md §3's table (or the declared hop)."""
    if slide is not None:
        return slide
    return 5 * MIN if window <= 12 * HOUR else HOUR if window <= 12 * DAY else DAY


def tail(t: int, window: int, slide: int | None = None) -> int:
    h = hop(window, slide)
    return (t - window) // h * h


def _energy(e: Row) -> float | None:
    if e["phase"] != "sample" or e.get("tripped") is True:
        return None
    v, a, h = e.get("volts"), e.get("amps"), e.get("hours")
    return None if v is None or a is None or h is None else v * a * h


MEASURES: dict[str, Callable[[Row], Any]] = {
    "sample": lambda e: 1 if e["phase"] == "sample" else None,
    "fault": lambda e: 1 if e["phase"] == "fault" else None,
    "big_kwh": lambda e: e["kwh"] if e.get("kwh") is not None and e["kwh"] >= 5 else None,
    "energy": _energy,
    "tripped_circuit": lambda e: e.get("circuit") if e.get("tripped") is True else None,
    "kwh": lambda e: e.get("kwh"),
    "volts": lambda e: e.get("volts"),
    "amps": lambda e: e.get("amps"),
    "circuit": lambda e: e.get("circuit"),
    "delta": lambda e: e.get("delta"),
    "tier": lambda e: e.get("tier"),
}
# name → (measure, function, window, declared hop)
WINDOWED: dict[str, tuple[str, str, int, int | None]] = {
    "samples_12h": ("sample", "count", 12 * HOUR, None),
    "faults_12h5m": ("fault", "count", 12 * HOUR + 5 * MIN, None),
    "kwh_12d": ("kwh", "sum", 12 * DAY, None),
    "kwh_avg_12d1h": ("kwh", "mean", 12 * DAY + HOUR, None),
    "kwh_mean_12h": ("kwh", "mean", 12 * HOUR, None),
    "volts_min_12h5m": ("volts", "min", 12 * HOUR + 5 * MIN, None),
    "volts_max_12d": ("volts", "max", 12 * DAY, None),
    "energy_std_12h": ("energy", "std", 12 * HOUR, None),
    "energy_stddev_12d1h": ("energy", "std", 12 * DAY + HOUR, None),
    "energy_var_12h5m": ("energy", "var", 12 * HOUR + 5 * MIN, None),
    "energy_variance_12d": ("energy", "var", 12 * DAY, None),
    "circuits_12d": ("circuit", "count_distinct", 12 * DAY, None),
    "tripped_12h": ("tripped_circuit", "count_distinct", 12 * HOUR, None),
    "deltas_12d": ("delta", "count_distinct", 12 * DAY, None),
    "tiers_12d": ("tier", "count_distinct", 12 * DAY, None),
    "big_kwh_2h": ("big_kwh", "sum", 2 * HOUR, 20 * MIN),
    "kwh_readings_2h": ("kwh", "count", 2 * HOUR, None),
}
RATIOS = {
    "fault_rate": ("faults_12h5m", "samples_12h"),
    "big_share_2h": ("big_kwh_2h", "kwh_12d"),
    "trip_per_fault": ("tripped_12h", "faults_12h5m"),
}
#: Bit-equal between engines; the others to 1e-9 relative (sums are added in another order).
EXACT = {"count", "count_distinct", "min", "max"}


def aggregate(function: str, xs: list[Any]) -> Value:
    if function == "count":
        return len(xs)
    if function == "count_distinct":
        return len(set(xs))
    if function == "sum":
        return math.fsum(xs)
    if not xs:
        return None
    if function == "min":
        return float(min(xs))
    if function == "max":
        return float(max(xs))
    mean = math.fsum(xs) / len(xs)
    if function == "mean":
        return mean
    if len(xs) < 2:
        return None
    var = math.fsum((x - mean) ** 2 for x in xs) / (len(xs) - 1)
    return var if function == "var" else math.sqrt(var)


Windowed = Mapping[str, tuple[str, str, int, int | None]]


def values(events: Sequence[Row], meter: str, t: int, windowed: Windowed = WINDOWED) -> dict[str, Value]:
    """value(e, t) of every feature, by a scan over every event (valid, first copies)."""
    out: dict[str, Value] = {}
    mine = [e for e in events if e["meter_id"] == meter]
    for name, (measure, function, window, slide) in windowed.items():
        lo = tail(t, window, slide)
        xs = [m for e in mine if lo <= e["read_at"] < t and (m := MEASURES[measure](e)) is not None]
        out[name] = aggregate(function, xs)
    for name, (a, b) in RATIOS.items():
        num, den = out[a], out[b]
        out[name] = None if num is None or den is None or den == 0 else num / den
    return out


def function_of(name: str) -> str:
    return WINDOWED[name][1] if name in WINDOWED else "ratio"


def same(function: str, got: Any, want: Value) -> bool:
    """Bit-equal for counts, min and max; 1e-9 relative for sums, means, std, var and ratios."""
    if got is None or want is None or (isinstance(got, float) and math.isnan(got)):
        return want is None and (got is None or math.isnan(got))
    if function in EXACT:
        return float(got) == float(want)
    return math.isclose(float(got), float(want), rel_tol=1e-9, abs_tol=0.0)


def readings(n: int, start: int, span: int, seed: int, tag: str = "r") -> list[Row]:
    """``n`` valid readings with ``read_at`` in ``[start, start + span)`` µs, in time order."""
    rng = random.Random(seed)
    out: list[Row] = []
    for i in range(n):
        phase = rng.choice(PHASES)
        ev: Row = {
            "reading_no": f"{tag}{i}",
            "phase": phase,
            "meter_id": rng.choice(METERS),
            "read_at": start + rng.randrange(span),
            "circuit": f"c{rng.randrange(6)}" if rng.random() < 0.8 else None,
            "kwh": round(rng.uniform(0, 10), 3) if phase == "sample" or rng.random() < 0.3 else None,
            "volts": round(rng.uniform(210, 250), 2) if rng.random() < 0.9 else None,
            "amps": round(rng.uniform(0.1, 30), 3) if rng.random() < 0.9 else None,
            "hours": rng.choice((0.25, 0.5, 1.0)) if rng.random() < 0.9 else None,
            "tripped": rng.random() < 0.2 if rng.random() < 0.8 else None,
            # -1.0 * 0.0 is -0.0: one number with 0.0 (a count_distinct counts them once)
            "delta": rng.choice((-1.0, 1.0, 2.5)) * rng.choice((0.0, 1.0)) if rng.random() < 0.7 else None,
            "tier": rng.randrange(1, 4) if rng.random() < 0.7 else None,
        }
        out.append(ev)
    out.sort(key=lambda r: r["read_at"])
    return out


def edges(meter: str, t: int, tag: str) -> list[Row]:
    """Readings at the edges of every window ending at ``t``: at ``t`` (excluded), 1 µs before (included),
    at each tail (included) and 1 µs before it (excluded)."""
    times = {t, t - 1}
    for _, _, window, slide in WINDOWED.values():
        lo = tail(t, window, slide)
        times |= {lo, lo - 1}
    base: Row = {"phase": "sample", "meter_id": meter, "circuit": "edge", "kwh": 7.5, "volts": 199.0,
                 "amps": 2.0, "hours": 0.5, "tripped": None, "delta": -0.0}  # fmt: skip
    return [dict(base, reading_no=f"{tag}{i}", read_at=x, volts=199.0 + i) for i, x in enumerate(sorted(times))]


def message(ev: Mapping[str, Any]) -> tuple[str, bytes]:
    body = {k: (iso(v) if k == "read_at" else v) for k, v in ev.items() if v is not None}
    return str(ev["meter_id"]), orjson.dumps(body)


def meters_repo(tmp: Path, redis_url: str) -> Path:
    """A copy of the meters repository wired to the fstore online and offline stores."""
    repo = tmp / "meters_repo"
    shutil.copytree(ROOT / "meters", repo, ignore=shutil.ignore_patterns("data", "__pycache__", "__init__.py"))
    cfg = yaml.safe_load((repo / "feature_store.yaml").read_text())
    cfg["online_store"] = {"type": "fstore.feast.online_store.FstoreOnlineStore", "redis_url": redis_url}
    cfg["offline_store"] = {"type": "fstore.feast.offline_store.FstoreOfflineStore", "engine": "local"}
    (repo / "feature_store.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    return repo
