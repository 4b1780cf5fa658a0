"""``python -m jobs.stream``: run the speed-layer worker (same as ``fstore stream``)."""

from jobs.stream.app import run_worker

run_worker()
