"""One local server process on a port: start with a health wait, pid file and log, stop, attach.

The machinery behind :mod:`fstore.devsvc.services` (Redis, the broker, an S3 endpoint): a subclass gives the
argv, an optional environment and a health check. By default (``die_with_parent=True``) the kernel kills
the process when its owner dies, so a crashed test run leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Self

from fstore.settings import STATE_DIR

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

    def __init__(
        self,
        port: int | None = None,
        state_dir: str | Path = STATE_DIR,
        *,
        start_timeout: float = 30.0,
        die_with_parent: bool = True,
    ) -> None:
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

    def environ(self) -> dict[str, str] | None:
        """The server's environment; ``None`` (the default) inherits ours."""
        return None

    @property
    def address(self) -> str:
        """How clients reach the server (URL or bootstrap string)."""
        return f"{HOST}:{self.port}"

    # -- files ------------------------------------------------------------------------------------
    @property
    def stem(self) -> str:
        """Name of this instance's files in :attr:`state_dir` (:attr:`name`; several instances of one
        service override it)."""
        return self.name

    @property
    def pid_file(self) -> Path:
        """``<state_dir>/<stem>.pid`` (JSON: pid, port, address, cmd)."""
        return self.state_dir / f"{self.stem}.pid"

    @property
    def log_path(self) -> Path:
        """``<state_dir>/<stem>.log``: the server's stdout and stderr, appended across restarts."""
        return self.state_dir / f"{self.stem}.log"

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
    def recorded_port(cls, state_dir: str | Path = STATE_DIR) -> int | None:
        """The port in ``state_dir``'s pid file (the last start's), whether or not the process lives."""
        try:
            return int(json.loads((Path(state_dir) / f"{cls.name}.pid").read_text())["port"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

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
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.state_dir,
                env=self.environ(),
                start_new_session=True,
                preexec_fn=_pdeathsig_hook() if self.die_with_parent else None,
            )
        self.pid = self._proc.pid
        info = {"pid": self.pid, "port": self.port, "address": self.address, "bin": argv[0], "cmd": argv}
        self.pid_file.write_text(json.dumps(info) + "\n")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while True:
            if not self.is_running():
                raise ServiceError(f"{self.name} exited during start-up (log {self.log_path}):\n{self.log_tail()}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(
                    f"{self.name} on port {self.port} not healthy after {self.start_timeout:.0f}"
                    f" s ({last}); log {self.log_path}:\n{self.log_tail()}"
                )
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

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(address={self.address!r}, pid={self.pid})"
