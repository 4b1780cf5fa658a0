"""Online/offline consistency (docs/design.md §5): served values vs get_historical_features at their as_of.

Two sources of online values, one comparison:

- :func:`check` samples entities from ``raw_events`` and reads them from a running API now;
- :func:`replay` takes what the API actually served (:mod:`fstore.samples`, written by the API itself).

Each value is recomputed by the point-in-time engine with ``event_timestamp`` = the answer's ``as_of``
and compared (:func:`fstore.core.aggregates.isclose`). Views and features come from the compiled plan
(:func:`fstore.plan_source.current_plan` unless one is passed). The promise holds for the events ingested by
``as_of``: :func:`replay` leaves out the served rows whose entity has an event with ``event_time <
as_of`` ingested after ``as_of - in_flight`` (still in flight when the API answered, or a late arrival
the API could not have seen) and counts them apart, so what remains must match exactly.
:func:`write_textfile` exports the figures for Prometheus.
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from fstore.core import pit
from fstore.core.aggregates import isclose
from fstore.core.plan import Plan, View
from fstore.delta import raw_log
from fstore.offline.local import get_historical_features
from fstore.plan_source import current_plan
from fstore.samples import Sample

TS = pa.timestamp("us", tz="UTC")


@dataclass
class ConsistencyReport:
    """Mismatches per ``view:feature`` over the compared entity rows."""

    entities: int = 0
    compared: int = 0
    mismatches: Counter[str] = field(default_factory=Counter)
    examples: list[dict[str, Any]] = field(default_factory=list)
    compared_by: Counter[str] = field(default_factory=Counter)
    in_flight: int = 0  # served rows left out: an event of theirs was still being ingested
    unknown: int = 0  # served rows of a view no longer defined

    @property
    def ok(self) -> bool:
        """True when nothing differed."""
        return not self.mismatches and self.compared > 0

    def summary(self) -> dict[str, Any]:
        """JSON-able figures (what ``fstore check-consistency --json`` prints)."""
        return {
            "entities": self.entities,
            "values_compared": self.compared,
            "mismatches": sum(self.mismatches.values()),
            "mismatch_rate": sum(self.mismatches.values()) / self.compared if self.compared else None,
            "by_feature": dict(self.mismatches),
            "skipped_in_flight": self.in_flight,
            "skipped_unknown_view": self.unknown,
            "examples": self.examples,
        }


OnlineRow = tuple[str, int, dict[str, Any], Sequence[str]]  # entity, as_of_us, served values, features to compare


def compare(
    report: ConsistencyReport, view: View, rows: Sequence[OnlineRow], raw_uri: str, plan: Plan | None = None
) -> None:
    """Recompute ``rows`` of ``view`` offline at their ``as_of`` and add the comparison to ``report``."""
    if not rows:
        return
    key = view.entity.join_key
    df = pd.DataFrame(
        {key: [r[0] for r in rows], "event_timestamp": pd.to_datetime([r[1] * 1000 for r in rows], utc=True)}
    )
    offline = get_historical_features(df, [view.name], raw_uri=raw_uri, plan=plan or current_plan())
    report.entities += len(rows)
    for i, (entity, as_of, values, names) in enumerate(rows):
        for f in names:
            want = offline[f].iloc[i]
            want = None if pd.isna(want) else want.item() if hasattr(want, "item") else want
            ref = f"{view.name}:{f}"
            got = values[ref]
            report.compared += 1
            report.compared_by[ref] += 1
            if not isclose(got, want):
                report.mismatches[ref] += 1
                if len(report.examples) < 10:
                    report.examples.append(
                        {
                            "view": view.name,
                            key: entity,
                            "as_of_us": as_of,
                            "feature": f,
                            "online": got,
                            "offline": want,
                        }
                    )


def sample_entities(raw_uri: str, join_key: str, n: int, seed: int) -> list[str]:
    """Up to ``n`` distinct entity keys seen in ``raw_events`` (reproducible with ``seed``)."""
    keys: list[str] = pc.unique(raw_log.read_table(raw_uri, [join_key]).column(join_key).drop_null()).to_pylist()
    keys.sort()
    random.Random(seed).shuffle(keys)
    return keys[:n]


def check(
    api_url: str,
    raw_uri: str,
    sample: int = 1000,
    seed: int = 0,
    views: Sequence[str] = (),
    api_key: str | None = None,
    progress: Callable[[int], object] | None = None,
    plan: Plan | None = None,
) -> ConsistencyReport:
    """Compare the API with the offline engine for ``sample`` entities per view.

    Args:
        api_url: base URL of a running ``fstore serve``.
        raw_uri: the ``raw_events`` table the offline engine reads.
        sample: entities per view.
        seed: sampling seed.
        views: feature views to check (default: every view of the plan).
        api_key: sent as ``X-API-Key`` when given.
        progress: called with 1 after each entity read.
        plan: the compiled plan (default: :func:`fstore.plan_source.current_plan`).
    """
    plan = plan or current_plan()
    report = ConsistencyReport()
    headers = {"X-API-Key": api_key} if api_key else {}
    with httpx.Client(base_url=api_url, headers=headers, timeout=10.0) as http:
        for name in views or [v.name for v in plan.views]:
            view = plan.view(name)
            key = view.entity.join_key
            online: list[tuple[str, int, dict[str, Any]]] = []
            for entity in sample_entities(raw_uri, key, sample, seed):
                r = http.get("/features", params={key: entity, "features": view.name})
                r.raise_for_status()
                body = r.json()
                online.append((entity, body["as_of_us"], body["rows"][0]["values"]))
                if progress:
                    progress(1)
            compare(report, view, [(e, t, v, view.feature_names) for e, t, v in online], raw_uri, plan)
    return report


def in_flight(
    raw_uri: str, view: View, rows: Sequence[tuple[str, int]], window_us: int, plan: Plan | None = None
) -> set[int]:
    """Indexes of ``(entity, as_of_us)`` rows whose entity has an event with a time before ``as_of``
    ingested after ``as_of - window_us``: the API may or may not have counted it, so the row proves nothing."""
    if not rows:
        return set()
    plan = plan or current_plan()
    ts = plan.schema.timestamp_field
    key = view.entity.join_key
    entities = sorted({e for e, _ in rows})
    as_of = np.array([t for _, t in rows], dtype=np.int64)
    span = (int(as_of.min()) - pit.resolve(plan, [view.name], True).lookback(), int(as_of.max()))
    days = raw_log.date_range(span)
    if days is None:
        return set()
    flt = (
        (pc.field("event_date") >= pa.scalar(days[0], pa.date32()))
        & (pc.field("event_date") <= pa.scalar(days[1], pa.date32()))
        & (pc.field("ingested_at") > pa.scalar(int(as_of.min()) - window_us, pa.int64()).cast(TS))
        & pc.field(key).isin(entities)
    )
    recent = raw_log.read_table(raw_uri, [key, ts, "ingested_at"], flt)
    if not recent.num_rows:
        return set()
    by_entity: dict[str, list[tuple[int, int]]] = {}
    times = recent.column(ts).cast(pa.int64()).to_pylist()
    ingested = recent.column("ingested_at").cast(pa.int64()).to_pylist()
    for e, t, i in zip(recent.column(key).to_pylist(), times, ingested, strict=True):
        by_entity.setdefault(e, []).append((t, i))
    return {n for n, (e, t) in enumerate(rows) if any(et < t and it > t - window_us for et, it in by_entity.get(e, ()))}


def replay(
    samples: Sequence[Sample],
    raw_uri: str,
    in_flight_us: int = 5_000_000,
    views: Sequence[str] = (),
    plan: Plan | None = None,
) -> ConsistencyReport:
    """Compare served samples with the point-in-time engine (see the module docstring).

    Args:
        samples: what the API served (:func:`fstore.samples.read_samples`).
        raw_uri: the ``raw_events`` table.
        in_flight_us: a row is left out when its entity has an event before ``as_of`` ingested after
            ``as_of - in_flight_us`` (covers the stream worker's batch time and clock skew between hosts).
        views: compare only these views (default: every view served).
        plan: the compiled plan (default: :func:`fstore.plan_source.current_plan`).
    """
    plan = plan or current_plan()
    known = {v.name: v for v in plan.views}
    report = ConsistencyReport()
    per_view: dict[str, list[OnlineRow]] = {}
    for s in samples:
        names: dict[str, list[str]] = {}
        for ref in s.values:
            view_name, _, feature = ref.partition(":")
            names.setdefault(view_name, []).append(feature)
        for view_name, feats in names.items():
            if views and view_name not in views:
                continue
            view = known.get(view_name)
            key = view.entity.join_key if view is not None else None
            if view is None or key not in s.entity or not set(feats) <= set(view.feature_names):
                report.unknown += 1
                continue
            per_view.setdefault(view_name, []).append((s.entity[key], s.as_of_us, s.values, feats))
    for view_name, rows in per_view.items():
        view = known[view_name]
        skip = in_flight(raw_uri, view, [(e, t) for e, t, _, _ in rows], in_flight_us, plan)
        report.in_flight += len(skip)
        compare(report, view, [r for n, r in enumerate(rows) if n not in skip], raw_uri, plan)
    return report


def write_textfile(report: ConsistencyReport, path: Path, samples: int, now: float | None = None) -> None:
    """Export the report as a Prometheus textfile (atomic replace): per feature the values compared, the
    mismatches and their ratio; the rows read and left out; the time of the run."""
    from prometheus_client import CollectorRegistry, Gauge, write_to_textfile

    reg = CollectorRegistry()
    compared = Gauge(
        "fstore_consistency_values_compared", "Served values recomputed offline", ["feature"], registry=reg
    )
    mismatched = Gauge("fstore_consistency_mismatches", "Served values that differ offline", ["feature"], registry=reg)
    ratio = Gauge(
        "fstore_consistency_mismatch_ratio", "Mismatches / values compared, per feature", ["feature"], registry=reg
    )
    for ref, n in sorted(report.compared_by.items()):
        compared.labels(ref).set(n)
        mismatched.labels(ref).set(report.mismatches[ref])
        ratio.labels(ref).set(report.mismatches[ref] / n)
    rows = Gauge("fstore_consistency_rows", "Served entity rows of the last run, by outcome", ["outcome"], registry=reg)
    rows.labels("compared").set(report.entities)
    rows.labels("in_flight").set(report.in_flight)
    rows.labels("unknown_view").set(report.unknown)
    Gauge("fstore_consistency_samples", "Samples read by the last run", registry=reg).set(samples)
    Gauge("fstore_consistency_last_run_timestamp_seconds", "End of the last replay", registry=reg).set(
        time.time() if now is None else now
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    write_to_textfile(str(path), reg)
