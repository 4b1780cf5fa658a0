"""Typed dependencies of the routes (FastAPI full-stack-template style).

All are ``async def``: they do no blocking work, and a sync dependency would cost a thread-pool hop per
request.
"""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from fstore.online.reader import OnlineReader
from services.online_api.logic import RequestError
from services.online_api.settings import ApiSettings


async def get_reader(request: Request) -> OnlineReader:
    """The app's online reader (created at start-up; async so FastAPI runs it inline, not in a thread)."""
    reader: OnlineReader = request.app.state.reader
    return reader


async def get_settings(request: Request) -> ApiSettings:
    """The app's validated settings."""
    settings: ApiSettings = request.app.state.settings
    return settings


ReaderDep = Annotated[OnlineReader, Depends(get_reader)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


async def check_api_key(request: Request, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """401 unless ``X-API-Key`` matches FSTORE_API_KEY (constant-time); open when no key is set.

    Reads the settings from the app state directly rather than through :data:`SettingsDep`: every
    dependency level costs FastAPI a parameter-solving pass on each request.
    """
    if not key_ok(request.app.state.settings, x_api_key):
        raise RequestError(401, "missing or wrong X-API-Key header")


def key_ok(settings: ApiSettings, x_api_key: str | None) -> bool:
    """Whether a request with this ``X-API-Key`` value may pass (constant-time compare)."""
    if settings.api_key is None:
        return True
    expected = settings.api_key.get_secret_value().encode()
    return x_api_key is not None and hmac.compare_digest(x_api_key.encode(), expected)


Secured = [Depends(check_api_key)]
