"""Shared fixtures: real local Redis and Apache Kafka broker for integration tests.

None is autouse: unit tests never start a service. Servers run from a temporary state directory on
free ports, are stopped by the fixture finalizers, and are also killed by the kernel if the test
process dies (``die_with_parent``), so nothing outlives a run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import prometheus_client  # noqa: F401 - see _forget_feast_metrics_dir
import pytest
import redis

from fstore import applied
from fstore.devsvc.cluster import RedisCluster
from fstore.devsvc.services import Broker, RedisServer
from tests.support.repos import ROOT as REPOS
from tests.support.repos import compiled
from tests.support.stream import PARTITIONS, WorkerProcess

# The plan every in-process engine and every process the tests start (workers, `fstore batch`, the API, ...)
# runs: the example repository (tests/support/repos/ecommerce, which compiles to the shipped example's plan),
# unless the run names another. It is a copy of this run's, applied once the session starts (its compiled
# plan recorded as `fstore apply` records it, see _apply_example_repo): a process reads the record instead of
# compiling the source, which imports Feast: ≈ 5 s of CPU in every worker, `fstore` command and API process
# (Feast's typeguard decorators re-compile its functions at import). A repository never applied, run from its
# source, is still tested where a test names its own (test_apply.py, test_spark_cluster.py's spark-submit).
_REPO_ENV = "FSTORE_FEATURE_REPO"
_EXAMPLE_REPO: Path | None = None
if _REPO_ENV not in os.environ:
    _EXAMPLE_REPO = Path(tempfile.mkdtemp(prefix="fstore-test-repo-")) / "ecommerce"
    shutil.copytree(REPOS / "ecommerce", _EXAMPLE_REPO, ignore=shutil.ignore_patterns("data", "__pycache__"))
    os.environ[_REPO_ENV] = str(_EXAMPLE_REPO)
# The API keeps a share of the answers it serves (FSTORE_API_SAMPLE_RATE, on by default) under
# FSTORE_SAMPLES_DIR, by default under the data root, which is ./data for an app a test builds without
# one: send them to a folder of this run instead of the working tree. Tests that read samples set their own.
_SAMPLES = os.environ.setdefault("FSTORE_SAMPLES_DIR", tempfile.mkdtemp(prefix="fstore-test-samples-"))
# Likewise the data root (Delta tables: raw_events, batch_views, ...) of anything a test builds without one:
# a folder of this run, never the checkout's ./data, which `make demo` fills (an app reading the demo's
# published batch views would answer differently). Tests that share a data folder with a process set their own.
_DATA = os.environ.setdefault("FSTORE_DATA_DIR", tempfile.mkdtemp(prefix="fstore-test-data-"))
# Every Spark driver the tests start (in-process sessions, `fstore batch`, spark-submit) goes through
# spark-submit, which adds SPARK_SUBMIT_OPTS to its JVM's options. The tests' Spark JVMs live seconds on
# small data: the C2 compiler's work never pays back, and C1 alone cuts their CPU time by about a third
# (measured on `fstore batch` over the kill -9 test's data: 65 -> 40 CPU seconds). It changes no result.
# The standalone cluster's daemons read SPARK_DAEMON_JAVA_OPTS; its executors get the same option from
# tests/integration/test_spark_cluster.py (spark.executor.extraJavaOptions).
os.environ.setdefault("SPARK_SUBMIT_OPTS", "-XX:TieredStopAtLevel=1")
os.environ.setdefault("SPARK_DAEMON_JAVA_OPTS", "-XX:TieredStopAtLevel=1")


def _forget_feast_metrics_dir() -> None:
    """Importing Feast's metrics module points PROMETHEUS_MULTIPROC_DIR (and PROMETHEUS_MULTIPROCESS_DIR) at a
    temporary folder of its own. prometheus_client chooses between in-memory and file-backed values when it
    is first imported, so this conftest imports it first: the test process keeps in-memory values, as
    fstore's own processes do. And the processes the tests start (``fstore serve``, ``fstore schedule``)
    must not inherit Feast's folder and share it: the variable goes. Tests that want multiprocess metrics
    set their own."""
    for var in ("PROMETHEUS_MULTIPROC_DIR", "PROMETHEUS_MULTIPROCESS_DIR"):
        if Path(os.environ.get(var, "/")).name.startswith("feast_metrics_"):
            del os.environ[var]


def _apply_example_repo() -> None:
    """Record the example repository's compiled plan in this run's copy (what ``fstore apply`` records,
    with nothing pending): the same plan as its source compiles to (tests/support/repos.compiled)."""
    if _EXAMPLE_REPO is None or applied.load(_EXAMPLE_REPO) is not None:
        return
    try:
        plan = compiled("ecommerce")
    except Exception:  # no record: each test that needs the plan fails on the mistake itself
        return
    applied.save(_EXAMPLE_REPO, applied.AppliedPlan(plan, time.time_ns() // 1000))


def pytest_collection_finish(session: pytest.Session) -> None:
    _apply_example_repo()  # imports Feast, which sets the variables _forget_feast_metrics_dir removes
    _forget_feast_metrics_dir()


def pytest_runtest_setup(item: pytest.Item) -> None:
    _forget_feast_metrics_dir()


def pytest_unconfigure(config: pytest.Config) -> None:
    if Path(_SAMPLES).name.startswith("fstore-test-samples-"):
        shutil.rmtree(_SAMPLES, ignore_errors=True)
    if Path(_DATA).name.startswith("fstore-test-data-"):
        shutil.rmtree(_DATA, ignore_errors=True)
    if _EXAMPLE_REPO is not None:
        shutil.rmtree(_EXAMPLE_REPO.parent, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    """A running ``redis-server`` for the whole session (``.url`` = ``redis://127.0.0.1:PORT/0``)."""
    with RedisServer(state_dir=tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture
def redis_client(redis_server: RedisServer) -> Iterator[redis.Redis]:
    """A ``redis.Redis`` client on :func:`redis_server` with an empty database."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    """A running 3-primary Redis Cluster for the whole session (``.url`` = one node, a seed for clients).

    Shared: tests use keys of their own (or flush every primary first); a test that kills nodes starts its
    own :class:`fstore.devsvc.cluster.RedisCluster`.
    """
    with RedisCluster(tmp_path_factory.mktemp("redis-cluster"), primaries=3) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    """A running Apache Kafka broker for the whole session (``.bootstrap`` = ``127.0.0.1:PORT``).

    Shared: use unique topic names, and do not restart it — use :func:`private_broker` for that.
    """
    with Broker(state_dir=tmp_path_factory.mktemp("broker")) as broker:
        yield broker


@pytest.fixture
def private_broker(tmp_path: Path) -> Iterator[Broker]:
    """An Apache Kafka broker for one test alone, e.g. to kill and restart it (its log is in ``tmp_path``)."""
    with Broker(state_dir=tmp_path / "broker") as broker:
        yield broker


@pytest.fixture
def worker_factory(
    tmp_path: Path,
    redis_server: RedisServer,
    redis_client: redis.Redis,
) -> Iterator[Callable[..., WorkerProcess]]:
    """Makes stream workers (``python -m jobs.stream`` processes, not started) on a given broker; kills any
    still running at teardown."""
    made: list[WorkerProcess] = []

    def make(
        broker: Broker, partitions: int = PARTITIONS, like: WorkerProcess | None = None, **extra: str
    ) -> WorkerProcess:
        w = WorkerProcess(tmp_path, broker, redis_server.url, partitions, like, **extra)
        made.append(w)
        return w

    yield make
    for w in made:
        if w.proc is not None and w.proc.poll() is None:
            w.proc.kill()
            w.proc.wait(10)
