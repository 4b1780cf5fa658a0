"""The data-quality gate of a nightly run: freshness, volume, nulls, duplicates, invalid and late events.

Each check yields a value and a status against a warn and a fail threshold from
:class:`~jobs.batch.settings.BatchSettings`; one ``fail`` makes the run a hard failure, which writes its
report but publishes nothing. Figures about the run day ``[C - 1 day, C)`` come from one Spark
aggregation over the de-duplicated rows; row counts per day come from the Delta log (no data read).

The checks are generic over the plan's event schema: the null rate is graded for the id field, the
timestamp field, every required field and every entity key (:func:`checked_fields`); a field required
only under a condition (``required_when``) counts as null only where the condition holds.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from datetime import date, timedelta
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
from pyspark.sql import Column, DataFrame
from pyspark.sql import functions as F

from fstore.core.event_schema import EventField, EventSchema
from fstore.core.expr_render import to_sql
from fstore.core.timeutil import SECOND
from fstore.delta import raw_log
from jobs.batch.plan import RunPlan
from jobs.batch.settings import BatchSettings

OK, WARN, FAIL, SKIPPED = "ok", "warn", "fail", "skipped"

REPORT_SCHEMA = pa.schema(
    [
        pa.field("check", pa.string(), nullable=False),
        pa.field("status", pa.string(), nullable=False),
        pa.field("value", pa.float64()),
        pa.field("warn_threshold", pa.float64()),
        pa.field("fail_threshold", pa.float64()),
        pa.field("detail", pa.string()),
        pa.field("cutover", pa.timestamp("us", tz="UTC"), nullable=False),
        pa.field("run_id", pa.string(), nullable=False),
        pa.field("run_date", pa.date32(), nullable=False),
    ]
)


@dataclass(frozen=True)
class Check:
    """One check's outcome: ``value`` against the thresholds (``value > threshold`` trips it)."""

    name: str
    status: str
    value: float | None
    warn: float | None
    fail: float | None
    detail: str = ""


def grade(name: str, value: float | None, warn: float, fail: float, detail: str = "") -> Check:
    """Status of a value where larger is worse."""
    if value is None:
        return Check(name, SKIPPED, None, warn, fail, detail)
    status = FAIL if value > fail else WARN if value > warn else OK
    return Check(name, status, value, warn, fail, detail)


@dataclass(frozen=True)
class DQReport:
    """All checks of one run."""

    checks: tuple[Check, ...]
    figures: dict[str, Any]

    @property
    def hard_failure(self) -> bool:
        """True when any check failed: the run must not publish."""
        return any(c.status == FAIL for c in self.checks)

    def summary(self) -> str:
        """Human-readable table, one line per check."""
        lines = [f"data quality: {'FAIL' if self.hard_failure else 'pass'}"]
        for c in self.checks:
            val = "-" if c.value is None else f"{c.value:.6g}"
            lines.append(f"  {c.status.upper():7} {c.name:28} {val:>12}  (warn > {c.warn}, fail > {c.fail}) {c.detail}")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly form for the job metrics."""
        return {
            "hard_failure": self.hard_failure,
            "figures": self.figures,
            "checks": {c.name: {"status": c.status, "value": c.value} for c in self.checks},
        }

    def table(self, plan: RunPlan, run_id: str) -> pa.Table:
        """Rows for the ``dq_reports`` Delta table (partition ``run_date``)."""
        n = len(self.checks)
        return pa.table(
            {
                "check": [c.name for c in self.checks],
                "status": [c.status for c in self.checks],
                "value": [c.value for c in self.checks],
                "warn_threshold": [c.warn for c in self.checks],
                "fail_threshold": [c.fail for c in self.checks],
                "detail": [c.detail for c in self.checks],
                "cutover": pa.array([plan.cutover] * n, pa.int64()).cast(pa.timestamp("us", tz="UTC")),
                "run_id": [run_id] * n,
                "run_date": pa.array([plan.run_date] * n, pa.date32()),
            },
            schema=REPORT_SCHEMA,
        )


def checked_fields(schema: EventSchema, entity_keys: list[str]) -> list[EventField]:
    """The fields whose null rate is graded, in declaration order: the id and timestamp fields, the
    required fields and the entity keys."""
    wanted = {schema.id_field, schema.timestamp_field, *entity_keys}
    return [f for f in schema.fields if f.name in wanted or f.required]


def _null(f: EventField, schema: EventSchema) -> Column:
    """A row lacks ``f`` where it should have it."""
    missing = F.col(f.name).isNull()
    if f.required or f.name in (schema.id_field, schema.timestamp_field) or f.required_when is None:
        return missing
    return missing & F.expr(to_sql(f.required_when, schema.columns()))


def day_figures(
    winners: DataFrame,
    plan: RunPlan,
    late_after_us: int,
    schema: EventSchema,
    fields: list[EventField],
    valid: Column,
) -> dict[str, Any]:
    """One aggregation over the de-duplicated rows: figures of the run day and the latest event time.

    ``fields`` are those whose nulls are counted (:func:`checked_fields`); ``valid`` is the validity of a
    row (:func:`jobs.batch.compute.is_valid`, which the job computes once while de-duplicating).
    """
    micros = F.unix_micros(F.col(schema.timestamp_field))
    in_day = (micros >= F.lit(plan.day_start)) & (micros < F.lit(plan.cutover))
    late = (F.unix_micros(F.col("ingested_at")) - micros) > F.lit(late_after_us)
    aggs = [
        F.sum(F.when(in_day, 1).otherwise(0)).alias("events"),
        F.sum(F.when(in_day & ~valid, 1).otherwise(0)).alias("invalid_rows"),
        F.sum(F.when(in_day & valid & late, 1).otherwise(0)).alias("late"),
        F.max(F.when(micros < F.lit(plan.cutover), micros)).alias("latest_event_us"),
    ]
    aggs += [F.sum(F.when(in_day & _null(f, schema), 1).otherwise(0)).alias(f"null_{f.name}") for f in fields]
    row = winners.agg(*aggs).collect()[0].asDict()
    return {k: (int(v) if v is not None else None) for k, v in row.items()}


def dead_letters_on(uri: str, day: date) -> int:
    """Messages dead-lettered on ``day`` (the ``ingest_date`` partition)."""
    table = raw_log.read_table(uri, ["ingest_date"], pc.field("ingest_date") == pa.scalar(day, pa.date32()))
    return int(table.num_rows)


def evaluate(
    s: BatchSettings,
    plan: RunPlan,
    null_fields: list[str],
    figures: dict[str, Any],
    copies_by_day: dict[date, int],
    dead_letters: int,
) -> DQReport:
    """Grade the figures of one run against the thresholds of ``s`` (null rates of ``null_fields``)."""
    day = plan.run_date
    events = figures["events"] or 0
    copies = copies_by_day.get(day, 0)
    checks = []
    latest = figures.get("latest_event_us")
    lag = None if latest is None else (plan.cutover - latest) / SECOND
    if lag is None:
        checks.append(
            Check(
                "freshness_lag_s",
                FAIL,
                None,
                s.dq_freshness_warn_s,
                s.dq_freshness_fail_s,
                "no events before the cutover",
            )
        )
    else:
        checks.append(grade("freshness_lag_s", lag, s.dq_freshness_warn_s, s.dq_freshness_fail_s))
    first = min(copies_by_day, default=day)
    history = [
        copies_by_day.get(day - timedelta(days=i), 0)
        for i in range(1, s.dq_volume_history_days + 1)
        if day - timedelta(days=i) >= first
    ]
    if len(history) >= s.dq_volume_min_history:
        mean, sd = statistics.fmean(history), statistics.stdev(history)
        z = (copies - mean) / max(sd, 1.0, 0.01 * mean)
        checks.append(
            grade(
                "volume_abs_zscore",
                abs(z),
                s.dq_volume_z_warn,
                s.dq_volume_z_fail,
                f"rows={copies} mean={mean:.0f} sd={sd:.0f} days={len(history)}",
            )
        )
    else:
        checks.append(
            grade(
                "volume_abs_zscore",
                None,
                s.dq_volume_z_warn,
                s.dq_volume_z_fail,
                f"only {len(history)} days of history",
            )
        )
    for col in null_fields:
        nulls = figures[f"null_{col}"] or 0
        checks.append(
            grade(
                f"null_rate_{col}",
                nulls / events if events else 0.0,
                s.dq_null_rate_warn,
                s.dq_null_rate_fail,
                f"{nulls} nulls",
            )
        )
    dups = max(copies - events, 0)
    checks.append(
        grade(
            "duplicate_rate",
            dups / copies if copies else 0.0,
            s.dq_duplicate_rate_warn,
            s.dq_duplicate_rate_fail,
            f"{dups} duplicate copies of {copies}",
        )
    )
    invalid = dead_letters + (figures["invalid_rows"] or 0)
    total = dead_letters + copies
    checks.append(
        grade(
            "invalid_rate",
            invalid / total if total else 0.0,
            s.dq_invalid_rate_warn,
            s.dq_invalid_rate_fail,
            f"{dead_letters} dead letters, {figures['invalid_rows']} invalid rows",
        )
    )
    late = figures["late"] or 0
    checks.append(
        grade(
            "late_rate",
            late / events if events else 0.0,
            s.dq_late_rate_warn,
            s.dq_late_rate_fail,
            f"{late} events ingested > {s.dq_late_after_s}s after their event time",
        )
    )
    return DQReport(
        tuple(checks), {**figures, "copies": copies, "dead_letters": dead_letters, "volume_history": history}
    )
