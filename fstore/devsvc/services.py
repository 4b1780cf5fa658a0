"""Local Redis and Apache Kafka broker for the demo, the tests and development.

Two layers:

* :class:`RedisServer` and :class:`fstore.devsvc.broker.Broker` run one server process each on a local
  port (:class:`fstore.devsvc.process.LocalService`: pid file and log in a state directory, health wait on
  start, signal-then-SIGKILL on stop). They are context managers for pytest fixtures.
* :func:`up`, :func:`down` and :func:`status` manage the long-lived pair behind ``fstore services``: the
  processes outlive the command, and ``services.env`` in the state directory (``.fstore/`` by default)
  tells every later ``fstore`` command where they are. The broker keeps its log (topics, committed
  offsets, the DLQ) and its ports under the state directory, so ``down`` then ``up`` finds them again.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from fstore.devsvc.broker import Broker, ensure_topics, list_topics
from fstore.devsvc.process import HOST, LocalService, ServiceError, free_port, pid_alive, port_open
from fstore.settings import SERVICES_ENV, STATE_DIR

__all__ = [
    "HOST",
    "Broker",
    "LocalService",
    "RedisServer",
    "ServiceError",
    "ServiceStatus",
    "down",
    "ensure_topics",
    "free_port",
    "list_topics",
    "pid_alive",
    "port_open",
    "read_env",
    "status",
    "up",
]


def redis_server_bin() -> str:
    """Path of ``redis-server``.

    Raises:
        ServiceError: when it is not on PATH, telling the user to run ``make setup``.
    """
    path = shutil.which("redis-server")
    if path is None:
        raise ServiceError("redis-server is not installed (not on PATH); run `make setup`, which installs it")
    return path


class RedisServer(LocalService):
    """``redis-server`` on 127.0.0.1 without persistence (no RDB, no AOF): a cache, as docs/design.md §7 wants."""

    name = "redis"

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:PORT/0``."""
        return f"redis://{HOST}:{self.port}/0"

    @property
    def address(self) -> str:
        """The Redis URL."""
        return self.url

    def command(self) -> list[str]:
        """``redis-server`` bound to 127.0.0.1 on :attr:`port`, logging to stdout, no persistence."""
        return [
            redis_server_bin(),
            "--port",
            str(self.port),
            "--bind",
            HOST,
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.state_dir.resolve()),
            "--daemonize",
            "no",
            "--logfile",
            "",
            "--protected-mode",
            "yes",
        ]

    def check(self, timeout: float) -> None:
        """PING through the redis client, and check the answer comes from our process."""
        import redis

        client = redis.Redis(host=HOST, port=self.port or 0, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            if not client.ping():
                raise ServiceError("redis PING failed")
            pid = client.info("server").get("process_id")
        finally:
            client.close()
        if self.pid is not None and pid != self.pid:
            raise ServiceError(f"port {self.port} is answered by another redis-server (pid {pid})")


# -- the long-lived pair behind `fstore services` ---------------------------------------------------


@dataclass(frozen=True)
class ServiceStatus:
    """What :func:`status` knows about one service."""

    name: str
    running: bool
    healthy: bool
    pid: int | None
    port: int | None
    address: str | None
    log_path: Path


def env_file(state_dir: str | Path = STATE_DIR) -> Path:
    """``services.env`` of a state directory (:data:`fstore.settings.SERVICES_ENV` for the default)."""
    return Path(state_dir) / SERVICES_ENV.name


def service_env(redis: RedisServer, broker: Broker) -> dict[str, str]:
    """The ``FSTORE_*`` variables that point the settings (and Feast's feature_store.yaml) at these services."""
    return {"FSTORE_REDIS_URL": redis.url, "FSTORE_KAFKA_BOOTSTRAP": broker.bootstrap}


def read_env(state_dir: str | Path = STATE_DIR) -> dict[str, str]:
    """The variables in ``services.env`` (empty if there is none)."""
    try:
        lines = env_file(state_dir).read_text().splitlines()
    except OSError:
        return {}
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def up(
    state_dir: str | Path = STATE_DIR,
    *,
    redis_port: int | None = None,
    broker_port: int | None = None,
    topics: Mapping[str, int] | None = None,
    start_timeout: float = 90.0,
) -> tuple[RedisServer, Broker, dict[str, bool]]:
    """Start (or reuse) the local Redis and broker, create ``topics`` and write ``services.env``.

    A service recorded in ``state_dir`` whose process is alive and healthy is reused (its port wins
    over the requested one); one that is alive but unhealthy is stopped and started again; one that
    died is started again on its recorded port when no port is requested and that one is free, so the
    workers and APIs already configured with ``services.env`` reach it again. The processes outlive
    the caller; :func:`down` stops them.

    Returns:
        ``(redis, broker, reused)`` where ``reused`` maps service name → whether it was already running.

    Raises:
        ServiceError: when a service cannot be started (with its log tail) or a topic cannot be created.
    """
    reused: dict[str, bool] = {}
    redis = _up_one(RedisServer, state_dir, redis_port, start_timeout, reused)
    broker = _up_one(Broker, state_dir, broker_port, start_timeout, reused)
    if topics:
        broker.ensure_topics(topics)
    path = env_file(state_dir)
    body = "".join(f"{k}={v}\n" for k, v in service_env(redis, broker).items())
    path.write_text("# written by `fstore services up`; removed by `fstore services down`\n" + body)
    return redis, broker, reused


_S = TypeVar("_S", bound=LocalService)


def _up_one(
    cls: type[_S], state_dir: str | Path, port: int | None, start_timeout: float, reused: dict[str, bool]
) -> _S:
    if port is None:  # read before attach, which forgets a dead process's record
        port = cls.recorded_port(state_dir)
        if port is not None and port_open(HOST, port):  # taken since: a free one
            port = None
    svc = cls.attach(state_dir, start_timeout=start_timeout, die_with_parent=False)
    if svc is not None and svc.healthy():
        reused[cls.name] = True
        return svc
    if svc is not None:
        svc.stop()
    reused[cls.name] = False
    return cls(port, state_dir, start_timeout=start_timeout, die_with_parent=False).start()


def down(state_dir: str | Path = STATE_DIR, timeout: float = 10.0) -> dict[str, int | None]:
    """Stop the services recorded in ``state_dir`` and remove ``services.env``.

    Returns:
        Service name → pid that was stopped, or ``None`` when it was not running.
    """
    stopped: dict[str, int | None] = {}
    for cls in (Broker, RedisServer):
        svc = cls.attach(state_dir)
        stopped[cls.name] = svc.pid if svc is not None else None
        if svc is not None:
            svc.stop(timeout)
    env_file(state_dir).unlink(missing_ok=True)
    return stopped


def status(state_dir: str | Path = STATE_DIR) -> list[ServiceStatus]:
    """Liveness and health of the services recorded in ``state_dir``."""
    out = []
    for cls in (RedisServer, Broker):
        svc = cls.attach(state_dir)
        log = Path(state_dir) / f"{cls.name}.log"
        if svc is None:
            out.append(ServiceStatus(cls.name, False, False, None, None, None, log))
        else:
            out.append(ServiceStatus(cls.name, True, svc.healthy(), svc.pid, svc.port, svc.address, log))
    return out
