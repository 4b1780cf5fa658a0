"""What the batch job tells its scheduler: exit codes that tell a usage error from a data-quality failure,
and the Prometheus textfile of the last run (the last success survives a failed run)."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner
from prometheus_client.parser import text_string_to_metric_families

from fstore.cli import main
from fstore.plan_source import use_plan
from jobs.batch import exit_codes
from jobs.batch.metrics import JobMetrics, last_success_in
from jobs.batch.rebuild_features import main as spark_submit_main

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("args", "env", "code"),
    [
        ([], {}, exit_codes.USAGE),
        (["--date", "2026-13-01"], {}, exit_codes.USAGE),
        (["--from", "2026-11-02", "--to", "2026-11-01"], {}, exit_codes.USAGE),
        (["--nope"], {}, exit_codes.USAGE),
        (["--date", "2026-11-01"], {"FSTORE_SPARK_SHUFFLE_PARTITIONS": "0"}, exit_codes.CONFIG),
    ],
)
def test_usage_and_configuration_errors_are_not_the_dq_exit_code(
    args: list[str], env: dict[str, str], code: int
) -> None:
    res = CliRunner().invoke(main, ["batch", *args], env=env)
    assert res.exit_code == code != exit_codes.DQ_FAILED, res.output


def test_a_feature_repository_with_mistakes_is_a_configuration_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Both entry points refuse a bad repository before starting Spark, naming the mistake (exit 78)."""
    (tmp_path / "feature_store.yaml").write_text("project: empty\nprovider: local\nregistry: r.db\n")
    use_plan(None)
    monkeypatch.setenv("FSTORE_FEATURE_REPO", str(tmp_path))
    try:
        res = CliRunner().invoke(main, ["batch", "--date", "2026-11-01"])
        assert res.exit_code == exit_codes.CONFIG, res.output
        assert "StreamFeatureView" in res.output
        use_plan(None)
        assert spark_submit_main(["--date", "2026-11-01"]) == exit_codes.CONFIG
        assert "StreamFeatureView" in capsys.readouterr().err
    finally:
        use_plan(None)


def test_spark_submit_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        spark_submit_main([])
    assert exc.value.code == exit_codes.USAGE and "--date" in capsys.readouterr().err


def values(path: Path) -> dict[str, float]:
    out = {}
    for fam in text_string_to_metric_families(path.read_text()):
        for s in fam.samples:
            label = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{label}}}" if label else s.name] = s.value
    return out


def test_textfile_keeps_the_last_success_across_a_failed_run(tmp_path: Path) -> None:
    path = tmp_path / "metrics" / "batch.prom"
    ok = JobMetrics()
    ok.info = {
        "published": True,
        "dq": {"checks": {"volume": {"status": "ok", "value": 0.5}, "late": {"status": "warn", "value": 0.07}}},
    }
    with ok.stage("dq"):
        pass
    ok.write_prometheus(str(path), "2026-11-26", True, 1_764_201_600.0)
    first = values(path)
    assert first["fstore_batch_last_run_success"] == 1 and first["fstore_batch_published"] == 1
    assert first["fstore_batch_dq_status"] == 1 and first["fstore_batch_dq_check_status{check=late}"] == 1
    assert first["fstore_batch_dq_check_value{check=volume}"] == 0.5
    assert first["fstore_batch_cutover_timestamp_seconds"] == 1_764_201_600.0
    done = first["fstore_batch_last_success_timestamp_seconds"]
    assert done == first["fstore_batch_last_run_timestamp_seconds"] == last_success_in(str(path))

    failed = JobMetrics()
    failed.info = {"dq": {"checks": {"volume": {"status": "fail", "value": 9.0}}}}
    failed.write_prometheus(str(path), "2026-11-27", False)
    second = values(path)
    assert second["fstore_batch_last_run_success"] == 0 and second["fstore_batch_dq_status"] == 2
    assert (
        second["fstore_batch_last_success_timestamp_seconds"]
        == done
        < second["fstore_batch_last_run_timestamp_seconds"]
    )
    assert "fstore_batch_published" not in second

    (tmp_path / "fresh.prom").unlink(missing_ok=True)
    JobMetrics().write_prometheus(str(tmp_path / "fresh.prom"), "2026-11-27", False)
    assert "fstore_batch_last_success_timestamp_seconds" not in values(tmp_path / "fresh.prom")
