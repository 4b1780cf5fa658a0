"""ASGI entry point: ``uvicorn services.online_api.main:app``."""

import gc

from services.online_api.app import create_app

app = create_app()
# Everything imported so far (FastAPI, pydantic, redis, fstore) lives as long as the process: move it out
# of the collector's generations so full collections, and the latency spikes they cause, stay small.
gc.collect()
gc.freeze()
# A 100-entity request allocates a few thousand short-lived containers; at the default threshold (700) the
# collector runs several times per request and promotes that garbage to older generations, which then cost
# full collections over the long-lived batch tile cache. Collect the youngest generation less often.
gc.set_threshold(20_000, 10, 10)
