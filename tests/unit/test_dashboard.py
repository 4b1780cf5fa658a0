"""The Grafana dashboard: the committed JSON is what infra/grafana/dashboard.py generates, and it has the
panels an on-call person needs (their PromQL is run against a real Prometheus in
tests/integration/test_observability.py)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest
import yaml

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
GRAFANA = ROOT / "infra" / "grafana"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dashboard", GRAFANA / "dashboard.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_json_is_generated() -> None:
    assert (GRAFANA / "dashboards" / "fstore.json").read_text() == generator().render(), "run `make dashboard`"


def test_panels_cover_every_layer() -> None:
    board = json.loads((GRAFANA / "dashboards" / "fstore.json").read_text())
    queries = generator().panel_queries(board)
    text = "\n".join(e for exprs in queries.values() for e in exprs)
    for metric in (
        "fstore_stream_events_in_total",
        "fstore_stream_events_invalid_total",  # dead-lettered, by reason
        "fstore_stream_consumer_lag",
        "fstore_stream_freshness_lag_seconds_bucket",
        "fstore_stream_tile_commits_total",
        "fstore_batch_last_success_timestamp_seconds",
        "fstore_batch_dq_status",
        "fstore_api_requests_total",
        "fstore_api_request_seconds_bucket",
        "fstore_api_redis_errors_total",
        "fstore_stream_redis_errors_total",
        "fstore_consistency_mismatch_ratio",
    ):
        assert metric in text, metric
    assert 'status=~"4..|5.."' in text and "sum by (reason)" in text and "histogram_quantile(0.99" in text
    assert all(exprs for exprs in queries.values()), "a panel without a query"
    ids = [p["id"] for p in board["panels"]]
    assert len(set(ids)) == len(ids)
    source = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "prometheus.yml").read_text())
    uid = source["datasources"][0]["uid"]
    assert all(p["datasource"]["uid"] == uid for p in board["panels"] if p["type"] != "row")
