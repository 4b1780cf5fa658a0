"""ASGI entry point: ``uvicorn services.online_api.main:app``."""

from services.online_api.app import create_app

app = create_app()
