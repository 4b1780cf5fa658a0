"""The batch job and the Spark point-in-time engine on a real standalone Spark cluster (a master and two
1-core workers started from PySpark's ``bin/spark-class`` on loopback) give the same results as
``local[*]``, byte for byte: content hashes of the sorted output tables, the Redis batch views field for
field, the point-in-time frames equal with their dtypes.

The nightly job goes to the cluster the way docs/scaling.md tells users to: ``spark-submit --master
spark://... --jars <delta-spark> --conf ... jobs/batch/rebuild_features.py``; the reference is ``fstore
batch --master local[*]``. delta-spark must reach the executors (they write the tables' files).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from datetime import date, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import redis
from deltalake import DeltaTable

from examples.synth.generator import GeneratorConfig, generate
from fstore.core.events import Rejection, payload_hash
from fstore.core.timeutil import DAY, day_start
from fstore.delta import raw_log
from fstore.devsvc.services import RedisServer
from fstore.devsvc.spark_cluster import SparkCluster, spark_home
from fstore.jvm.artifacts import delta_jars
from fstore.redis.layout import POINTER_KEY, BatchPointer
from fstore.settings import get_settings
from tests.support import raw_rows
from tests.support.delta import content_hash
from tests.support.legacy.events_example import parse
from tests.support.legacy.features import VIEWS
from tests.support.paths import run_batch
from tests.support.repos import ROOT as REPOS
from tests.support.repos import compiled
from tests.support.stream import ROOT

pytestmark = pytest.mark.integration

EXAMPLE_REPO = REPOS / "ecommerce"
D = date(2026, 11, 20)
START, END = day_start(D - timedelta(days=8)), day_start(D + timedelta(days=1))


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SparkCluster]:
    with SparkCluster(tmp_path_factory.mktemp("spark-cluster"), workers=2, cores=1, memory="1g") as c:
        yield c


@pytest.fixture(scope="module")
def raw_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """9 days of generated traffic with duplicates (every copy stored, as the stream's sink does)."""
    root = tmp_path_factory.mktemp("raw") / "data"
    cfg = GeneratorConfig(
        start=START, end=END, events=16_000, users=400, products=90, duplicate_rate=0.04, late_rate=0.03
    )
    events, hashes, at = [], [], []
    for b in generate(cfg, seed=31):
        for value, arrival in zip(b.values, b.arrival.tolist(), strict=True):
            ev = parse(value, END)
            if not isinstance(ev, Rejection):
                events.append(ev)
                hashes.append(payload_hash(value))
                at.append(arrival)
    raw_log.append_raw(str(root / "raw_events"), raw_rows.events_table(events, hashes, at))
    return root


def example_views() -> list[str]:
    return [v.name for v in compiled("ecommerce").views]


def db_url(server: RedisServer, db: int) -> str:
    url = server.url.rsplit("/", 1)[0] + f"/{db}"
    redis.Redis.from_url(url).flushdb()
    return url


def outputs(root: Path) -> dict[str, str]:
    """Content hash of run D's partition of every table the job writes."""
    out = {}
    for name in example_views():
        for table in (f"tiles_{name}", f"feature_snapshots/{name}"):
            rows = raw_log.read_table(str(root / table), filter=pc.field("run_date") == pa.scalar(D, pa.date32()))
            assert rows.num_rows > 50, table
            out[table] = content_hash(rows)
    return out


#: The executors' JVM options: those tests/conftest.py gives every Spark driver of the run (C1 only).
SHORT_JVM = os.environ.get("SPARK_SUBMIT_OPTS", "")


def batch_view(url: str) -> dict[str, dict[bytes, bytes]]:
    """The published batch view: entity key (version stripped) → fields."""
    client = redis.Redis.from_url(url)
    try:
        pointer = BatchPointer.loads(client.get(POINTER_KEY))
        assert pointer is not None, "no batch view published"
        keys = list(client.scan_iter(match=f"fs:*:b:{pointer.version}", count=2000))
        return {k.decode().rsplit(":b:", 1)[0]: client.hgetall(k) for k in keys}  # type: ignore[misc]
    finally:
        client.close()


def spark_submit(master: str, data: Path, redis_url: str) -> None:
    """``spark-submit`` of the nightly job to ``master`` with delta-spark from the jar cache."""
    jars = delta_jars(get_settings().jar_cache)
    assert jars.jars, jars.reason
    env = {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": "127.0.0.1",  # the driver too stays on loopback
        "PYSPARK_PYTHON": sys.executable,
        "PYSPARK_DRIVER_PYTHON": sys.executable,
        "FSTORE_DATA_DIR": str(data),
        "FSTORE_REDIS_URL": redis_url,
        "FSTORE_DQ_LATE_AFTER_S": str(40 * 86_400),
        "FSTORE_SPARK_SHUFFLE_PARTITIONS": "2",
        "FSTORE_FEATURE_REPO": str(EXAMPLE_REPO),  # the driver compiles the plan; executors get the views
    }
    argv = [
        str(spark_home() / "bin" / "spark-submit"),
        "--master",
        master,
        "--driver-memory",
        "1g",
        "--conf",
        "spark.executor.memory=768m",
        "--conf",
        "spark.ui.enabled=false",
        "--conf",
        f"spark.executor.extraJavaOptions={SHORT_JVM}",
        "--conf",
        "spark.driver.host=127.0.0.1",
        *jars.submit_args(),
        str(ROOT / "jobs" / "batch" / "rebuild_features.py"),
        "--date",
        D.isoformat(),
    ]
    proc = subprocess.run(argv, env=env, cwd=data.parent, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_nightly_job_on_the_cluster_equals_local(
    cluster: SparkCluster, raw_dir: Path, redis_server: RedisServer, tmp_path: Path
) -> None:
    local_root, cluster_root = tmp_path / "local" / "data", tmp_path / "cluster" / "data"
    for root in (local_root, cluster_root):
        shutil.copytree(raw_dir / "raw_events", root / "raw_events")
    local_url, cluster_url = db_url(redis_server, 7), db_url(redis_server, 8)

    run_batch(
        D.isoformat(), local_root, local_url, FSTORE_SPARK_MASTER="local[*]", FSTORE_FEATURE_REPO=str(EXAMPLE_REPO)
    )
    spark_submit(cluster.master_url, cluster_root, cluster_url)

    apps = cluster.master.state()["completedapps"]
    assert [a["name"] for a in apps] == ["fstore-batch"], apps  # it really ran there
    for name in example_views():  # committed by delta-spark, whose classes the executors needed to write the files
        info = str(DeltaTable(str(cluster_root / f"tiles_{name}")).history(1)[0].get("engineInfo"))
        assert "Delta-Lake" in info, info
    assert outputs(cluster_root) == outputs(local_root)
    view = batch_view(cluster_url)
    assert len(view) > 300 and view == batch_view(local_url)


def entity_frame(n: int, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    times = rng.integers(START + DAY, END, n)
    return pd.DataFrame(
        {
            "user_id": [f"u{i:06d}" for i in rng.integers(0, 420, n)],  # the generator's ids; some unknown
            "product_id": [f"p{i:05d}" for i in rng.integers(0, 95, n)],
            "label": rng.integers(0, 2, n),
            "event_timestamp": pd.to_datetime(times, unit="us", utc=True),
        }
    )


def pit_on(master: str, df: pd.DataFrame, raw_uri: str) -> pd.DataFrame:
    from pyspark.sql import SparkSession

    from fstore.offline.spark import get_historical_features, spark_session

    active = SparkSession.getActiveSession()
    if active is not None:  # another module's session: one SparkContext per process
        active.stop()
    loopback = {
        "spark.driver.host": "127.0.0.1",
        "spark.driver.bindAddress": "127.0.0.1",
        "spark.executor.extraJavaOptions": SHORT_JVM,
    }
    spark = spark_session("fstore-test-pit-cluster", master=master, conf=loopback)
    try:
        assert spark.sparkContext.master == master
        out: pd.DataFrame = get_historical_features(
            df,
            list(VIEWS),
            plan=compiled("ecommerce"),
            raw_uri=raw_uri,
            full_feature_names=True,
            spark=spark,
            buckets=4,
        )
        return out
    finally:
        spark.stop()


def test_point_in_time_engine_on_the_cluster_equals_local(cluster: SparkCluster, raw_dir: Path) -> None:
    df = entity_frame(500, seed=5)
    uri = str(raw_dir / "raw_events")
    local = pit_on("local[*]", df, uri)
    on_cluster = pit_on(cluster.master_url, df, uri)
    assert any(a["name"] == "fstore-test-pit-cluster" for a in cluster.master.state()["completedapps"])
    pd.testing.assert_frame_equal(on_cluster, local, check_exact=True)
    assert content_hash(pa.Table.from_pandas(on_cluster)) == content_hash(pa.Table.from_pandas(local))
    assert (local["user_activity__page_views_24h"] > 0).sum() > 100
