"""Exit codes of the batch job (``fstore batch`` and ``spark-submit jobs/batch/rebuild_features.py``).

Schedulers act on them (``fstore schedule``, the Airflow DAG and the Kubernetes CronJob in infra/):
only RUN_FAILED is worth a retry. Click and argparse use 2 for usage errors; here 2 means the
data-quality gate failed, so usage errors get 64 (EX_USAGE) and invalid settings 78 (EX_CONFIG).
"""

OK = 0  # published, or rebuilt without publishing because a later cutover serves
RUN_FAILED = 1  # Spark, Delta, Redis, ...: retry
DQ_FAILED = 2  # the data-quality gate failed: fix the data, no retry
USAGE = 64  # bad command line: no retry
CONFIG = 78  # invalid FSTORE_* settings, a feature repository with mistakes, an unreachable data root: no retry
