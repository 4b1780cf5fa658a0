"""A standalone Spark cluster on loopback, started from PySpark's own ``bin/spark-class``: one master and
some workers, each a :class:`~fstore.devsvc.process.LocalService` (pid file, log, stop by pid).

It is the real thing, not a simulation: ``spark-submit --master spark://127.0.0.1:PORT`` and
``SparkSession.builder.master(...)`` talk to it as to any standalone cluster, executors run in their own
JVMs (launched by the workers) with their own Python workers. Tests and benchmarks use it to prove that
the batch job and the Spark point-in-time engine give the same results there as on ``local[*]``
(docs/scaling.md). Small by default: 1 core and 1 GiB per worker, 256 MiB per daemon.

Example::

    with SparkCluster(state_dir, workers=2) as cluster:
        spark = SparkSession.builder.master(cluster.master_url).getOrCreate()
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from fstore.devsvc.process import HOST, LocalService, ServiceError, free_port


def spark_home() -> Path:
    """The installed PySpark's directory, which holds ``bin/spark-class`` and the Spark jars.

    Raises:
        ServiceError: when PySpark is not installed (``make setup`` installs it).
    """
    spec = importlib.util.find_spec("pyspark")
    if spec is None or spec.origin is None:
        raise ServiceError("pyspark is not installed; run `make setup`")
    return Path(spec.origin).parent


def _daemon_env(daemon_memory: str) -> dict[str, str]:
    return {
        **os.environ,
        "SPARK_HOME": str(spark_home()),
        "SPARK_LOCAL_IP": HOST,
        "SPARK_DAEMON_MEMORY": daemon_memory,
        "SPARK_NO_DAEMONIZE": "1",
    }


class SparkMaster(LocalService):
    """``spark-class org.apache.spark.deploy.master.Master`` on 127.0.0.1 (its web UI answers the health
    check: ``/json`` says ALIVE and lists the workers)."""

    name = "spark-master"

    def __init__(self, *args: Any, daemon_memory: str = "256m", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon_memory = daemon_memory
        self.ui_port: int | None = None

    @property
    def address(self) -> str:
        """``spark://127.0.0.1:PORT``: the ``--master`` of spark-submit and of a session."""
        return f"spark://{HOST}:{self.port}"

    def command(self) -> list[str]:
        """The master on :attr:`port`, its web UI on a free port."""
        self.ui_port = free_port()
        return [
            str(spark_home() / "bin" / "spark-class"),
            "org.apache.spark.deploy.master.Master",
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--webui-port",
            str(self.ui_port),
        ]

    def environ(self) -> dict[str, str]:
        """Small daemon heap, loopback only, in the foreground."""
        return _daemon_env(self.daemon_memory)

    def state(self, timeout: float = 5.0) -> dict[str, Any]:
        """The master's ``/json`` document (status, workers, applications)."""
        with urllib.request.urlopen(f"http://{HOST}:{self.ui_port}/json/", timeout=timeout) as resp:
            doc: dict[str, Any] = json.load(resp)
        return doc

    def check(self, timeout: float) -> None:
        """The master says it is ALIVE."""
        status = self.state(timeout).get("status")
        if status != "ALIVE":
            raise ServiceError(f"spark master status {status}")

    def alive_workers(self) -> int:
        """How many workers are registered and alive."""
        return sum(1 for w in self.state().get("workers", []) if w.get("state") == "ALIVE")


class SparkWorker(LocalService):
    """``spark-class org.apache.spark.deploy.worker.Worker`` registered with a master, offering ``cores``
    and ``memory`` to executors; number ``index`` names its pid file, log and work directory."""

    name = "spark-worker"

    def __init__(
        self,
        master: SparkMaster,
        index: int,
        *args: Any,
        cores: int = 1,
        memory: str = "1g",
        daemon_memory: str = "256m",
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self.master, self.index = master, index
        self.cores, self.memory, self.daemon_memory = cores, memory, daemon_memory

    @property
    def stem(self) -> str:
        """``spark-worker-<index>``: its pid file, log and work directory."""
        return f"{self.name}-{self.index}"

    def command(self) -> list[str]:
        """The worker on :attr:`port` (web UI on a free port), executors' files under its work dir."""
        work = (self.state_dir / f"{self.stem}-work").resolve()
        return [
            str(spark_home() / "bin" / "spark-class"),
            "org.apache.spark.deploy.worker.Worker",
            self.master.address,
            "--host",
            HOST,
            "--port",
            str(self.port),
            "--webui-port",
            str(free_port()),
            "--cores",
            str(self.cores),
            "--memory",
            self.memory,
            "--work-dir",
            str(work),
        ]

    def environ(self) -> dict[str, str]:
        """As the master's."""
        return _daemon_env(self.daemon_memory)

    def check(self, timeout: float) -> None:
        """The worker listens (the cluster waits for its registration with the master)."""


class SparkCluster:
    """A master and ``workers`` workers, started together and stopped by pid (workers first).

    Args:
        state_dir: pid files, logs and work directories.
        workers: how many workers.
        cores, memory: what each worker offers its executors.
        start_timeout: seconds to wait for each daemon and for every worker to register.
    """

    def __init__(
        self,
        state_dir: str | Path,
        workers: int = 2,
        *,
        cores: int = 1,
        memory: str = "1g",
        start_timeout: float = 60.0,
    ) -> None:
        self.master = SparkMaster(free_port(), state_dir=state_dir, start_timeout=start_timeout)
        self.workers = [
            SparkWorker(
                self.master,
                i,
                free_port(),
                state_dir=state_dir,
                cores=cores,
                memory=memory,
                start_timeout=start_timeout,
            )
            for i in range(workers)
        ]
        self.start_timeout = start_timeout

    @property
    def master_url(self) -> str:
        """``spark://127.0.0.1:PORT``."""
        return self.master.address

    def start(self) -> Self:
        """Start the master, then the workers; return once every worker is registered and alive.

        Raises:
            ServiceError: a daemon failed, or the workers did not all register in time (with log tails).
        """
        daemons: list[LocalService] = [self.master, *self.workers]
        try:
            # All three JVMs start at once (the workers retry until the master is up): start-up is mostly
            # JVM and class loading, so this takes about as long as the master alone.
            for d in daemons:
                d._spawn()
            for d in daemons:
                d._wait_healthy()
            deadline = time.monotonic() + self.start_timeout
            while self.master.alive_workers() < len(self.workers):
                if time.monotonic() > deadline:
                    tails = "\n".join(f"{w.log_path}:\n{w.log_tail()}" for w in self.workers)
                    raise ServiceError(f"spark workers did not register with {self.master_url}:\n{tails}")
                time.sleep(0.2)
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        """Stop the workers (and so their executors), then the master."""
        for w in self.workers:
            w.stop()
        self.master.stop()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
