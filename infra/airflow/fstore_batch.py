"""Airflow DAG of the nightly batch: ``fstore batch --date {{ ds }}`` every day at 01:30 UTC.

The run of logical date D starts after D ends (the data interval is [D, D+1)), so it rebuilds day D and
publishes the batch view with cutover D+1 00:00 UTC. The exit code decides (jobs/batch/exit_codes.py):
1 or a signal → AirflowException, retried 3 times with exponential backoff; 2 (data-quality gate),
64 (usage), 78 (settings) → AirflowFailException: failed at once, no retry (a retry cannot fix them).
Copy this file into the DAGs folder of a deployment whose workers have the fstore image or package.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from typing import Any

from airflow import DAG
from airflow.exceptions import AirflowException, AirflowFailException

try:  # Airflow 3
    from airflow.providers.standard.operators.python import PythonOperator
except ImportError:  # Airflow 2
    from airflow.operators.python import PythonOperator

NO_RETRY = {2: "the data-quality gate failed", 64: "usage error", 78: "invalid FSTORE_* settings"}


def run_batch(ds: str, runner: Callable[[Sequence[str]], int] | None = None, **_: Any) -> None:
    """Run the batch for day ``ds`` and turn its exit code into Airflow's retry decision."""
    cmd = ["fstore", "batch", "--date", ds, "--no-progress"]
    code = runner(cmd) if runner is not None else subprocess.run(cmd, check=False).returncode
    if code == 0:
        return
    if code in NO_RETRY:
        raise AirflowFailException(f"fstore batch --date {ds} exited {code} ({NO_RETRY[code]}): not retried")
    raise AirflowException(f"fstore batch --date {ds} exited {code}: will be retried")


with DAG(
    dag_id="fstore_nightly_batch",
    schedule="30 1 * * *",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    default_args={
        "retries": 3,
        "retry_delay": timedelta(minutes=5),
        "retry_exponential_backoff": True,
        "max_retry_delay": timedelta(hours=1),
        "execution_timeout": timedelta(hours=3),
    },
    tags=["fstore"],
) as dag:
    PythonOperator(task_id="batch", python_callable=run_batch)
