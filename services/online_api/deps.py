"""Typed dependencies of the routes (FastAPI full-stack-template style)."""

from __future__ import annotations

import hmac
from typing import Annotated

from fastapi import Depends, Header, Request

from fstore.online import OnlineReader
from services.online_api.logic import RequestError
from services.online_api.settings import ApiSettings


def get_reader(request: Request) -> OnlineReader:
    """The app's online reader (created at start-up)."""
    reader: OnlineReader = request.app.state.reader
    return reader


def get_settings(request: Request) -> ApiSettings:
    """The app's validated settings."""
    settings: ApiSettings = request.app.state.settings
    return settings


ReaderDep = Annotated[OnlineReader, Depends(get_reader)]
SettingsDep = Annotated[ApiSettings, Depends(get_settings)]


def check_api_key(settings: SettingsDep, x_api_key: Annotated[str | None, Header()] = None) -> None:
    """401 unless ``X-API-Key`` matches FSTORE_API_KEY (constant-time); open when no key is set."""
    if settings.api_key is None:
        return
    expected = settings.api_key.get_secret_value().encode()
    if x_api_key is None or not hmac.compare_digest(x_api_key.encode(), expected):
        raise RequestError(401, "missing or wrong X-API-Key header")


Secured = [Depends(check_api_key)]
