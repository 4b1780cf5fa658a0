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


class _JavaException:
    """What py4j hands over as ``Py4JJavaError.java_exception``: a Java throwable with a cause."""

    def __init__(self, text: str, cause: _JavaException | None = None) -> None:
        self.text, self.cause = text, cause

    def toString(self) -> str:
        return self.text

    def getCause(self) -> _JavaException | None:
        return self.cause

    def equals(self, other: object) -> bool:
        return other is self


class _SparkFailure(RuntimeError):
    """A Spark failure as PySpark raises it: pages of Java stack trace, the cause inside ``java_exception``."""

    java_exception = _JavaException(
        "org.apache.spark.SparkException: Job aborted due to stage failure: Task 0 in stage 3.0 failed 1 times",
        _JavaException("java.io.IOException: No space left on device"),
    )

    def __init__(self) -> None:
        trace = "\tat org.apache.spark.Foo(Foo.java:1)\n" * 80
        super().__init__("An error occurred while calling o123.save.\n" + trace)


def test_a_failed_run_ends_with_one_line_that_says_why(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Spark, Delta or the disk failing mid-run: exit 1 (a retry is safe) and, after the stack trace, one last
    line naming the run date and the Java exception's own message — from both entry points."""
    import fstore.commands.batch as batch_cmd  # noqa: F401 - the CLI imports the job lazily, from these modules
    from jobs.batch import file_systems, rebuild_features

    def failing(*_args: object, **_kwargs: object) -> None:
        raise _SparkFailure()

    class _Spark:
        def stop(self) -> None:
            pass

    monkeypatch.setattr(rebuild_features, "rebuild", failing)
    monkeypatch.setattr(rebuild_features, "build_spark", lambda *_a, **_k: _Spark())
    monkeypatch.setattr(file_systems, "missing_file_system", lambda *_a: None)
    monkeypatch.setattr(rebuild_features, "missing_file_system", lambda *_a: None)
    res = CliRunner().invoke(main, ["batch", "--date", "2026-11-01", "--no-progress"])
    last = res.output.strip().splitlines()[-1]
    assert res.exit_code == exit_codes.RUN_FAILED, res.output[-2000:]
    assert last == (
        "Error: the batch run for 2026-11-01 failed (exit 1; a re-run is safe): "
        "java.io.IOException: No space left on device"
    ), last
    assert spark_submit_main(["--date", "2026-11-01"]) == exit_codes.RUN_FAILED
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1] == last, err[-2000:]


def test_the_summary_of_a_python_failure_is_its_type_and_first_line() -> None:
    from jobs.batch.run_failure import MAX_CHARS, summary

    assert summary(KeyError("tiles_x")) == "KeyError: 'tiles_x'"
    assert summary(OSError("\n  disk gone  \nmore")) == "OSError: disk gone"
    assert summary(RuntimeError()) == "RuntimeError"
    long = summary(ValueError("x" * 1000))
    assert len(long) == MAX_CHARS and long.endswith("…")
