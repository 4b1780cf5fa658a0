"""Where a Spark driver fstore starts listens (fstore/jvm/spark.py)."""

from __future__ import annotations

import pytest

from fstore.jvm.spark import loopback_driver

pytestmark = pytest.mark.unit


def test_a_local_driver_listens_on_loopback_a_cluster_driver_where_executors_reach_it() -> None:
    for master in ("local", "local[*]", "local[2]", "local-cluster[2,1,1024]"):
        assert loopback_driver(master) == {"spark.driver.bindAddress": "127.0.0.1", "spark.driver.host": "127.0.0.1"}
    for master in ("spark://127.0.0.1:7077", "yarn", "k8s://https://h:6443"):
        assert loopback_driver(master) == {}
