"""A local Redis Cluster on loopback ports for the tests and the benchmarks (docs/operations.md, "Redis Cluster").

:class:`RedisCluster` starts ``primaries * (1 + replicas)`` ``redis-server --cluster-enabled yes`` processes
(:class:`ClusterNode`, each a :class:`fstore.devsvc.process.LocalService` with its own state directory,
pid file and log), joins them with ``redis-cli --cluster create ... --cluster-replicas N --cluster-yes``
and waits until every node reports ``cluster_state:ok``. Stopping stops each process by its pid.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from fstore.devsvc.process import HOST, ServiceError, free_port
from fstore.devsvc.services import RedisServer


class ClusterNode(RedisServer):
    """One ``redis-server`` in cluster mode (its ``nodes.conf`` lives in its own state directory)."""

    name = "redis-cluster-node"

    def __init__(self, *args: object, node_timeout_ms: int = 1000, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.node_timeout_ms = node_timeout_ms
        self.bus_port: int | None = None  # cluster bus; picked freely (the default, port + 10000, may not exist)

    def command(self) -> list[str]:
        """:meth:`RedisServer.command` plus cluster mode, a short node timeout (fast failover) and no full-
        coverage requirement (the slots of a live primary keep serving while another is failing over)."""
        if self.bus_port is None:
            self.bus_port = free_port()
        return [
            *super().command(),
            "--cluster-enabled",
            "yes",
            "--cluster-config-file",
            "nodes.conf",
            "--cluster-node-timeout",
            str(self.node_timeout_ms),
            "--cluster-port",
            str(self.bus_port),
            "--cluster-require-full-coverage",
            "no",
        ]


class RedisCluster:
    """A Redis Cluster of ``primaries`` primaries with ``replicas`` replicas each, on free loopback ports.

    Args:
        state_dir: parent of the nodes' state directories.
        primaries: number of primaries (at least 3: ``redis-cli --cluster create`` needs them).
        replicas: replicas per primary.
        node_timeout_ms: ``cluster-node-timeout`` (how long before a silent primary is failed over).
    """

    def __init__(self, state_dir: str | Path, primaries: int = 3, replicas: int = 0, node_timeout_ms: int = 1000):
        self.state_dir = Path(state_dir)
        self.nodes = [
            ClusterNode(state_dir=self.state_dir / f"node{i}", node_timeout_ms=node_timeout_ms)
            for i in range(primaries * (1 + replicas))
        ]
        self.primaries, self.replicas = primaries, replicas

    @property
    def ports(self) -> list[int]:
        """Ports of every node (the first ``primaries`` were created as primaries)."""
        return [n.port or 0 for n in self.nodes]

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0`` of the first node: a seed from which clients discover the rest."""
        return self.nodes[0].url

    def node(self, port: int) -> ClusterNode:
        """The node listening on ``port``."""
        return next(n for n in self.nodes if n.port == port)

    def start(self) -> Self:
        """Start every node, create the cluster and wait until every node says ``cluster_state:ok``.

        Raises:
            ServiceError: a node did not start, ``redis-cli --cluster create`` failed, or the cluster did
                not become ready within 30 s.
        """
        try:
            for n in self.nodes:
                n.start()
            cli = shutil.which("redis-cli")
            if cli is None:
                raise ServiceError("redis-cli is not installed (not on PATH); run `make setup`, which installs it")
            argv = [cli, "--cluster", "create", *(f"{HOST}:{p}" for p in self.ports)]
            argv += ["--cluster-replicas", str(self.replicas), "--cluster-yes"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
            if done.returncode != 0:
                raise ServiceError(f"redis-cli --cluster create failed: {done.stdout[-2000:]}{done.stderr[-2000:]}")
            self.wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait until every live node reports ``cluster_state:ok`` and knows every other live node."""
        import redis

        deadline = time.monotonic() + timeout
        live = [n for n in self.nodes if n.is_running()]
        while True:
            try:
                ok = True
                for n in live:
                    client = redis.Redis(host=HOST, port=n.port or 0, socket_timeout=1)
                    try:
                        info = client.execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
                    finally:
                        client.close()
                    text = info.decode() if isinstance(info, bytes) else str(info)
                    ok = ok and "cluster_state:ok" in text
                if ok:
                    return
            except redis.RedisError:
                pass
            if time.monotonic() > deadline:
                raise ServiceError(f"Redis Cluster on ports {self.ports} not ready after {timeout:.0f} s")
            time.sleep(0.1)

    def primary_ports(self) -> list[int]:
        """Ports of the nodes that are primaries now (asked of a live node)."""
        import redis

        for n in self.nodes:
            if not n.is_running():
                continue
            client = redis.Redis(host=HOST, port=n.port or 0, socket_timeout=1)
            try:
                text = client.execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
            except redis.RedisError:
                continue
            finally:
                client.close()
            lines = (text.decode() if isinstance(text, bytes) else str(text)).splitlines()
            return sorted(
                int(p[1].split("@")[0].rsplit(":", 1)[1])
                for p in (line.split() for line in lines)
                if "master" in p[2] and "fail" not in p[2]
            )
        raise ServiceError("no live Redis Cluster node")

    def stop(self) -> None:
        """Stop every node (by pid)."""
        for n in self.nodes:
            n.stop(timeout=5)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
