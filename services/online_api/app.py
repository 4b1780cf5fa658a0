"""FastAPI app of the serving layer: thin routes over :mod:`services.online_api.logic`.

Run with ``fstore serve`` (uvicorn). Routes: ``GET/POST /features``, ``GET /health``, ``GET /metrics``,
OpenAPI at ``/docs``. When ``FSTORE_API_KEY`` is set every route but ``/health`` needs header
``X-API-Key``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated

import redis.asyncio as aioredis
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from redis.exceptions import RedisError

from fstore.core.timeutil import iso
from fstore.online import Clock, OnlineReader, wall_clock
from services.online_api.deps import ReaderDep, Secured
from services.online_api.logic import RequestError, historical_features, read_features
from services.online_api.schemas import (
    FeaturesRequest,
    FeaturesResponse,
    HealthResponse,
    HistoricalRequest,
    HistoricalResponse,
)
from services.online_api.settings import ApiSettings, get_api_settings


class Metrics:
    """Prometheus metrics of one app instance (own registry, so several apps can live in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("fstore_api_requests_total", "Requests", ["route", "method", "status"],
                                registry=self.registry)
        self.latency = Histogram("fstore_api_request_seconds", "Request latency", ["route", "method"],
                                 buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
                                 registry=self.registry)
        self.redis_errors = Counter("fstore_api_redis_errors_total", "Redis errors", registry=self.registry)


def create_app(settings: ApiSettings | None = None, clock: Clock = wall_clock) -> FastAPI:
    """Build the app (settings validated here, at start-up).

    Args:
        settings: configuration (default: from the environment).
        clock: the time source for ``as_of`` (tests inject a fixed one).
    """
    cfg = settings or get_api_settings()
    metrics = Metrics()
    timeout = cfg.redis_timeout_ms / 1000

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = aioredis.Redis.from_url(cfg.redis_url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                         retry_on_timeout=False, health_check_interval=0)
        app.state.reader = OnlineReader(client, clock)
        app.state.client = client
        app.state.settings = cfg
        yield
        await client.aclose()

    app = FastAPI(title="fstore online API", version="0.1.0", lifespan=lifespan,
                  description="Merged batch + speed feature values (DESIGN.md §4-§5).")

    @app.middleware("http")
    async def observe(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        metrics.requests.labels(path, request.method, str(response.status_code)).inc()
        metrics.latency.labels(path, request.method).observe(time.perf_counter() - start)
        return response

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        metrics.redis_errors.inc()
        return JSONResponse({"detail": f"the online store (Redis) is unreachable: {type(exc).__name__}; "
                                       "retry later"}, status_code=503)

    @app.get("/features", response_model=FeaturesResponse, dependencies=Secured)
    async def get_features(
        reader: ReaderDep,
        request: Request,
        features: Annotated[list[str], Query(description="view:feature or view; repeat or comma-separate")],
        user_id: Annotated[str | None, Query(description="join key of user_activity")] = None,
        product_id: Annotated[str | None, Query(description="join key of product_engagement")] = None,
    ) -> FeaturesResponse:
        """Feature values of one entity row at `as_of` = now."""
        row = {k: v for k, v in request.query_params.items() if k != "features"}
        return await read_features(reader, [row], features, cfg.api_max_entities)

    @app.post("/features", response_model=FeaturesResponse, dependencies=Secured)
    async def post_features(reader: ReaderDep, body: FeaturesRequest) -> FeaturesResponse:
        """Feature values of many entity rows, all at the same `as_of` (limit FSTORE_API_MAX_ENTITIES)."""
        return await read_features(reader, body.entities, body.features, cfg.api_max_entities)

    @app.post("/historical-features", response_model=HistoricalResponse, dependencies=Secured)
    async def post_historical_features(body: HistoricalRequest) -> HistoricalResponse:
        """Point-in-time correct values per entity row from raw_events (limit FSTORE_API_MAX_ROWS)."""
        rows = await run_in_threadpool(historical_features, body.entity_rows, body.features,
                                       body.full_feature_names, cfg.table("raw_events"), cfg.api_max_rows)
        return HistoricalResponse(rows=rows)

    @app.get("/health", response_model=HealthResponse)
    async def get_health(reader: ReaderDep) -> JSONResponse:
        """Redis reachability and the serving batch view (no API key needed)."""
        try:
            await reader.client.ping()
            ptr = await reader.refresh_pointer()
        except RedisError as exc:
            metrics.redis_errors.inc()
            body = HealthResponse(status="unavailable", redis=f"Redis unreachable: {type(exc).__name__}")
            return JSONResponse(body.model_dump(), status_code=503)
        body = HealthResponse(status="ok", redis="ok", batch_version=ptr.version if ptr else None,
                              batch_cutoff=iso(ptr.cutover) if ptr else None)
        return JSONResponse(body.model_dump())

    @app.get("/metrics", dependencies=Secured)
    async def get_metrics() -> Response:
        """Prometheus metrics of this process."""
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return app
