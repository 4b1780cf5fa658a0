"""ASGI entry point: ``uvicorn services.online_api.main:app``."""

import gc
import multiprocessing
import os
import signal
import sys


def _die_with_supervisor() -> None:
    """In a worker of ``fstore serve --workers N`` (a process uvicorn spawned), ask the kernel for SIGTERM
    when the supervisor dies: killed with ``kill -9`` it cannot stop its workers, which would otherwise
    keep serving on the inherited socket, orphaned, and hold the port against a restart (Linux only)."""
    parent = multiprocessing.parent_process()
    if parent is None or not sys.platform.startswith("linux"):
        return
    import ctypes

    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    if os.getppid() != parent.pid:  # the supervisor died before the call
        os.kill(os.getpid(), signal.SIGTERM)


_die_with_supervisor()

from services.online_api.app import create_app  # noqa: E402 - after the death signal is armed

app = create_app()
# Everything imported so far (FastAPI, pydantic, redis, fstore) lives as long as the process: move it out
# of the collector's generations so full collections, and the latency spikes they cause, stay small.
gc.collect()
gc.freeze()
# A 100-entity request allocates a few thousand short-lived containers; at the default threshold (700) the
# collector runs several times per request and promotes that garbage to older generations, which then cost
# full collections over the long-lived batch tile cache. Collect the youngest generation less often.
gc.set_threshold(20_000, 10, 10)
