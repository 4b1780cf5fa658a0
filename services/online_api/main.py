"""ASGI entry point: ``uvicorn services.online_api.main:app``."""

import gc

from services.online_api.app import create_app

app = create_app()
# Everything imported so far (FastAPI, pydantic, redis, fstore) lives as long as the process: move it out
# of the collector's generations so full collections, and the latency spikes they cause, stay small.
gc.collect()
gc.freeze()
