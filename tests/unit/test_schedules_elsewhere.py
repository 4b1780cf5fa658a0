"""The nightly batch under other schedulers: the Airflow DAG (infra/airflow/) and the Kubernetes CronJob
(infra/k8s/) retry exit code 1 only, like ``fstore schedule``.

Airflow is not a dependency of fstore: the DAG file is loaded against a minimal stand-in of the three
Airflow names it uses (``DAG``, the two exceptions, ``PythonOperator``), enough to read its settings and
run its callable."""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from jobs.batch import exit_codes

pytestmark = pytest.mark.unit

INFRA = Path(__file__).resolve().parents[2] / "infra"


class AirflowException(Exception):
    pass


class AirflowFailException(AirflowException):
    pass


class DAG:
    current: DAG | None = None

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.tasks: list[Any] = []

    def __enter__(self) -> DAG:
        DAG.current = self
        return self

    def __exit__(self, *_: object) -> None:
        DAG.current = None


class PythonOperator:
    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        assert DAG.current is not None
        DAG.current.tasks.append(self)


@pytest.fixture
def dag_module(monkeypatch: pytest.MonkeyPatch) -> Iterator[types.ModuleType]:
    fake: dict[str, dict[str, Any]] = {
        "airflow": {"DAG": DAG},
        "airflow.exceptions": {"AirflowException": AirflowException, "AirflowFailException": AirflowFailException},
        "airflow.operators": {},
        "airflow.operators.python": {"PythonOperator": PythonOperator},
    }
    for name, attrs in fake.items():
        mod = types.ModuleType(name)
        mod.__dict__.update(attrs)
        monkeypatch.setitem(sys.modules, name, mod)
    spec = importlib.util.spec_from_file_location("fstore_batch_dag", INFRA / "airflow" / "fstore_batch.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    yield module


def test_airflow_dag_runs_the_batch_nightly_and_retries_only_exit_code_1(dag_module: types.ModuleType) -> None:
    dag = dag_module.dag
    assert dag.kwargs["schedule"] == "30 1 * * *" and dag.kwargs["default_args"]["retries"] == 3
    (task,) = dag.tasks
    run = task.kwargs["python_callable"]
    calls: list[Sequence[str]] = []

    def runner(code: int) -> Any:
        def go(cmd: Sequence[str]) -> int:
            calls.append(cmd)
            return code

        return go

    run("2026-11-26", runner=runner(exit_codes.OK))
    assert calls[-1] == ["fstore", "batch", "--date", "2026-11-26", "--no-progress"]
    for code in (exit_codes.RUN_FAILED, -9):
        with pytest.raises(AirflowException) as retried:
            run("2026-11-26", runner=runner(code))
        assert not isinstance(retried.value, AirflowFailException)
    for code in (exit_codes.DQ_FAILED, exit_codes.USAGE, exit_codes.CONFIG):
        with pytest.raises(AirflowFailException, match="not retried"):
            run("2026-11-26", runner=runner(code))


def test_kubernetes_cronjob_fails_fast_on_the_codes_no_retry_can_fix() -> None:
    cron = yaml.safe_load((INFRA / "k8s" / "batch-cronjob.yaml").read_text())
    assert cron["kind"] == "CronJob" and cron["spec"]["schedule"] == "30 1 * * *"
    assert cron["spec"]["timeZone"] == "Etc/UTC" and cron["spec"]["concurrencyPolicy"] == "Forbid"
    job = cron["spec"]["jobTemplate"]["spec"]
    assert job["backoffLimit"] == 3
    (fail,) = [r for r in job["podFailurePolicy"]["rules"] if r["action"] == "FailJob"]
    no_retry = {exit_codes.DQ_FAILED, exit_codes.USAGE, exit_codes.CONFIG}
    assert fail["onExitCodes"]["operator"] == "In" and set(fail["onExitCodes"]["values"]) == no_retry
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert fail["onExitCodes"]["containerName"] == container["name"]
    assert "fstore batch --date" in container["args"][0] and "yesterday" in container["args"][0]
