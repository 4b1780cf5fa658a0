"""The fstore Grafana dashboard, generated with grafana-foundation-sdk: ``make dashboard`` writes
infra/grafana/dashboards/fstore.json, which Grafana provisions (infra/grafana/provisioning/).

Every query is plain PromQL with fixed ranges (``[5m]``, no Grafana-only variables), so the tests can run
each panel's queries against a real Prometheus (tests/integration/test_observability.py) and check that
the committed JSON is what this file generates (tests/unit/test_dashboard.py).

Usage: ``python infra/grafana/dashboard.py [--check]`` (``--check``: exit 1 if the JSON is out of date).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, TypeVar

from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.builders.dashboard import Dashboard, Row, ThresholdsConfig
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import (
    DataSourceRef,
    Threshold,
    ThresholdsMode,
    ValueMap,
    ValueMappingResult,
)

OUT = Path(__file__).resolve().parent / "dashboards" / "fstore.json"
DATASOURCE = DataSourceRef(type_val="prometheus", uid="prometheus")  # provisioning/datasources/prometheus.yml

Query = tuple[str, str]  # PromQL, legend


def q(expr: str, legend: str = "") -> Query:
    return expr, legend


P = TypeVar("P", timeseries.Panel, stat.Panel)


def targets(panel: P, queries: list[Query]) -> P:
    for i, (expr, legend) in enumerate(queries):
        t = prometheus.Dataquery().expr(expr).ref_id(chr(ord("A") + i))
        panel = panel.with_target(t.legend_format(legend) if legend else t)
    return panel


def series(title: str, unit: str, queries: list[Query], description: str, width: int = 8) -> timeseries.Panel:
    p = timeseries.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(width)
    return targets(p.height(8), queries)


def single(
    title: str, unit: str, queries: list[Query], description: str, red_above: float | None = None, width: int = 4
) -> stat.Panel:
    p = stat.Panel().title(title).description(description).datasource(DATASOURCE).unit(unit).span(width).height(8)
    if red_above is not None:
        steps = [Threshold(None, "green"), Threshold(red_above, "red")]
        p = p.thresholds(ThresholdsConfig().mode(ThresholdsMode.ABSOLUTE).steps(steps))
    return targets(p, queries)


def quantiles(metric: str, selector: str = "") -> list[Query]:
    return [
        q(f"histogram_quantile({p}, sum by (le) (rate({metric}_bucket{selector}[5m])))", f"p{int(p * 100)}")
        for p in (0.5, 0.99)
    ]


def build() -> Dashboard:
    """The dashboard: one row per layer, the panels an on-call person needs (docs/operations.md)."""
    dq = single(
        "Last data-quality gate",
        "none",
        [q("max(fstore_batch_dq_status)")],
        "0 pass, 1 warn, 2 fail (nothing published). Per check: fstore_batch_dq_check_status.",
        red_above=2,
    ).mappings(
        [
            ValueMap(
                {
                    "0": ValueMappingResult(text="pass", color="green"),
                    "1": ValueMappingResult(text="warn", color="orange"),
                    "2": ValueMappingResult(text="FAIL", color="red"),
                }
            )
        ]
    )
    return (
        Dashboard("fstore")
        .uid("fstore")
        .tags(["fstore"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("utc")
        .with_row(Row("Speed layer (stream worker)"))
        .with_panel(
            series(
                "Events in / dead-lettered per second",
                "ops",
                [
                    q("sum(rate(fstore_stream_events_in_total[5m]))", "in"),
                    q("sum(rate(fstore_stream_events_valid_total[5m]))", "valid"),
                    q("sum by (reason) (rate(fstore_stream_events_invalid_total[5m]))", "dead-lettered: {{reason}}"),
                ],
                "Messages consumed from the events topic; invalid ones go to events.dlq with one reason each.",
            )
        )
        .with_panel(
            series(
                "Consumer lag",
                "short",
                [
                    q("sum by (partition) (fstore_stream_consumer_lag)", "partition {{partition}}"),
                    q("min(fstore_stream_broker_up)", "broker reachable (1/0)"),
                ],
                "High watermark minus the next offset to process, per partition; the lag keeps its last value "
                "while the broker is down, so the broker's reachability is drawn too. Alerts: FstoreConsumerLagHigh, "
                "FstoreBrokerUnreachable.",
            )
        )
        .with_panel(
            series(
                "Freshness lag p50 / p99",
                "s",
                quantiles("fstore_stream_freshness_lag_seconds"),
                "Tile commit time minus the Kafka record timestamp. Alert: FstoreFreshnessLagHigh (p99 > 5 s).",
            )
        )
        .with_panel(
            series(
                "Speed tile commits per second",
                "ops",
                [q("sum(rate(fstore_stream_tile_commits_total[5m]))", "commits/s")],
                "Batches whose tile updates Redis applied. Alert: FstoreSpeedLayerStalled.",
                width=16,
            )
        )
        .with_panel(
            single(
                "Since the last tile commit",
                "s",
                [q("time() - max(fstore_stream_last_tile_commit_timestamp_seconds)")],
                "Seconds since the stream worker last committed speed tiles.",
                red_above=300,
                width=8,
            )
        )
        .with_row(Row("Batch layer (nightly job)"))
        .with_panel(
            single(
                "Batch age",
                "s",
                [q("time() - max(fstore_batch_last_success_timestamp_seconds)")],
                "Since the last successful batch run. Alert: FstoreBatchStale (> 26 h).",
                red_above=26 * 3600,
            )
        )
        .with_panel(
            single(
                "Serving cutover age",
                "s",
                [q("time() - max(fstore_batch_view_cutover_timestamp_seconds)")],
                "Now minus the cutover C of the batch view the API serves (batch tiles before C).",
                red_above=49 * 3600,
            )
        )
        .with_panel(dq)
        .with_panel(
            single(
                "Last exit code of scheduled jobs",
                "none",
                [q("max by (task) (fstore_schedule_last_exit_code)", "{{task}}")],
                "0 ok; batch: 1 failed (retried), 2 data-quality gate failed, 64/78 usage/config.",
                red_above=1,
                width=6,
            )
        )
        .with_panel(
            series(
                "Scheduled runs (1 h)",
                "short",
                [q("sum by (task, outcome) (increase(fstore_schedule_runs_total[1h]))", "{{task}} {{outcome}}")],
                "Attempts per job and outcome (success, retry, failed).",
                width=6,
            )
        )
        .with_row(Row("Online API"))
        .with_panel(
            series(
                "Requests per second",
                "reqps",
                [q("sum by (route) (rate(fstore_api_requests_total[5m]))", "{{route}}")],
                "Every API worker's requests (multiprocess metrics).",
                width=6,
            )
        )
        .with_panel(
            series(
                "/features latency p50 / p99",
                "s",
                quantiles("fstore_api_request_seconds", '{route="/features"}'),
                "GET and POST /features. Alert: FstoreApiLatencyHigh (p99 > 50 ms).",
                width=6,
            )
        )
        .with_panel(
            series(
                "4xx / 5xx per second",
                "reqps",
                [q('sum by (status) (rate(fstore_api_requests_total{status=~"4..|5.."}[5m]))', "{{status}}")],
                "Client errors (unknown feature or entity: 4xx), server errors (Redis down: 503). Alert: FstoreApi5xx.",
                width=6,
            )
        )
        .with_panel(
            series(
                "Redis errors",
                "short",
                [
                    q("sum(rate(fstore_api_redis_errors_total[5m]))", "API errors/s"),
                    q("sum(rate(fstore_stream_redis_errors_total[5m]))", "worker retries/s"),
                    q("min(fstore_api_redis_up)", "reachable (1/0)"),
                    q("max(fstore_stream_redis_lost_writes)", "lost writes (1/0)"),
                ],
                "Alerts: FstoreRedisUnreachable; FstoreRedisLostWrites (a worker found Redis went back in time: "
                "fstore repair).",
                width=6,
            )
        )
        .with_row(Row("Online / offline consistency"))
        .with_panel(
            series(
                "Mismatch rate per feature",
                "percentunit",
                [q("max by (feature) (fstore_consistency_mismatch_ratio)", "{{feature}}")],
                "Served values that the point-in-time engine recomputes differently at their as_of, per feature "
                "(fstore check-consistency --from-samples). Alert: FstoreConsistencyMismatch.",
                width=16,
            )
        )
        .with_panel(
            single(
                "Values compared (last replay)",
                "short",
                [q("sum(fstore_consistency_values_compared)")],
                "Served values recomputed by the last replay; rows left out as in flight: fstore_consistency_rows.",
                width=8,
            )
        )
    )


def render() -> str:
    """The dashboard JSON as committed (panel ids in order, stable key order, trailing newline)."""
    board = json.loads(JSONEncoder().encode(build().build()))
    for i, panel in enumerate(board["panels"], start=1):
        panel["id"] = i
    return json.dumps(board, sort_keys=True, indent=2) + "\n"


def panel_queries(dashboard: dict[str, Any]) -> dict[str, list[str]]:
    """Panel title → its PromQL queries (rows excluded)."""
    return {p["title"]: [t["expr"] for t in p.get("targets", [])] for p in dashboard["panels"] if p["type"] != "row"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true", help="exit 1 if the committed JSON differs")
    args = ap.parse_args()
    text = render()
    if args.check:
        same = OUT.exists() and OUT.read_text() == text
        print(f"{OUT}: {'up to date' if same else 'OUT OF DATE: run make dashboard'}")
        return 0 if same else 1
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(text)
    print(f"wrote {OUT} ({len(panel_queries(json.loads(text)))} panels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
