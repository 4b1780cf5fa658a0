"""FastAPI app of the serving layer: thin routes over :mod:`services.online_api.logic`.

Run with ``fstore serve`` (uvicorn). Routes: ``GET/POST /features``, ``GET /health``, ``GET /metrics``,
OpenAPI at ``/docs``, ``/redoc`` and ``/openapi.json``. When ``FSTORE_API_KEY`` is set every route but
``/health`` needs header ``X-API-Key`` — the docs and the schema too.

Hot path: ``GET`` and ``POST /features`` are answered by a pure ASGI fast path (:class:`FeaturesAPI`,
ahead of Starlette's middleware stack) whenever the request is one the route would accept unchanged;
anything else (a missing or wrong API key, a missing parameter, a body to validate) goes to the FastAPI
route, which answers with its own statuses and bodies. Async dependencies only (no thread-pool hop),
metrics in a pure ASGI middleware (no ``BaseHTTPMiddleware`` task and stream), and ``/features`` returns
orjson bytes built from plain dicts (:func:`services.online_api.logic.shape`); ``response_model`` still
documents the body in OpenAPI, but a returned :class:`~fastapi.Response` is not re-validated.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any
from urllib.parse import parse_qsl

import orjson
from fastapi import FastAPI, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import JSONResponse, PlainTextResponse
from prometheus_client import CONTENT_TYPE_LATEST
from redis.exceptions import RedisError
from starlette.datastructures import Headers
from starlette.types import Message, Receive, Scope, Send

from fstore.clock import Clock, wall_clock
from fstore.core.timeutil import iso
from fstore.online.reader import OnlineReader
from fstore.plan_source import current_plan
from fstore.plan_source import refresh as refresh_plan
from fstore.plan_source import repo_dir as plan_repo
from fstore.plan_source import stale as plan_stale
from fstore.redis.connect import async_client
from fstore.samples import ResponseSampler
from services.online_api.deps import ReaderDep, Secured, key_ok
from services.online_api.logic import RequestError, historical_features, one_entity, read_features
from services.online_api.metrics import Metrics, MetricsMiddleware, StatusSend, StoreProbe
from services.online_api.published import PublishedBatch, missing_message
from services.online_api.schemas import (
    EntityFeaturesResponse,
    FeaturesRequest,
    FeaturesResponse,
    HealthResponse,
    HistoricalRequest,
    HistoricalResponse,
)
from services.online_api.settings import ApiSettings, get_api_settings

log = logging.getLogger("fstore.api")
SAMPLE_FLUSH_S = 1.0
#: How often the API checks whether `fstore apply` or `fstore backfill` changed the applied plan.
PLAN_FOLLOW_S = 1.0


# fstore exports Prometheus metrics (/metrics). FastAPI's native OpenTelemetry hooks (FastAPI >= 0.16x) would
# look up the global OTel providers on every request; they are turned off where FastAPI has them.
NO_OTEL: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI).parameters
    else {}
)

Handler = Callable[[Scope, Receive, Send], Awaitable[Receive | None]]


class FeaturesAPI(FastAPI):
    """FastAPI with a fast path: requests for ``/features`` go to the handler of their method *before*
    Starlette's middleware stack (server-error, body-limit and metrics middleware, router: a third of the
    CPU of a single-entity read). The handler answers and returns ``None``, or declines (nothing sent) and
    returns the ``receive`` for the app (the original one, or one replaying the body it read), so that the
    app handles the request as usual. Fast-path answers are counted in the same metrics; an unexpected
    error gets the 500 the server-error middleware would send, and is re-raised for the server's log."""

    fast_path: str = "/features"
    fast_handlers: dict[str, Handler]
    metrics: Metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = None
        if scope["type"] == "http" and scope["path"] == self.fast_path and not scope.get("root_path"):
            handler = self.fast_handlers.get(scope["method"])
        if handler is None:
            await super().__call__(scope, receive, send)
            return
        scope["app"] = self
        start = time.perf_counter()
        tracked = StatusSend(send)
        try:
            rest = await handler(scope, receive, tracked)
        except Exception:
            if not tracked.status:
                await PlainTextResponse("Internal Server Error", status_code=500)(scope, receive, send)
            self.metrics.observe(self.fast_path, scope["method"], 500, time.perf_counter() - start)
            raise
        if rest is None:
            self.metrics.observe(self.fast_path, scope["method"], tracked.status, time.perf_counter() - start)
            return
        await super().__call__(scope, rest, send)


async def read_body(receive: Receive) -> tuple[bytes | None, Receive]:
    """The whole request body (``None`` if the client went away) and a ``receive`` that replays it."""
    messages: list[Message] = []
    chunks: list[bytes] = []
    while True:
        message = await receive()
        messages.append(message)
        if message["type"] != "http.request":
            body = None
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            body = b"".join(chunks)
            break
    pending = iter(messages)

    async def replay() -> Message:
        return next(pending, None) or await receive()

    return body, replay


def features_body(body: bytes, content_type: str | None) -> tuple[list[dict[str, str]], list[str]] | None:
    """``(entities, features)`` of a POST /features body that FastAPI would accept as it is, else ``None``
    (then FastAPI parses and validates it, with its own errors)."""
    if content_type is not None and content_type.partition(";")[0].strip().lower() != "application/json":
        return None
    try:
        obj = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(obj) is not dict or obj.keys() != {"entities", "features"}:
        return None
    entities, features = obj["entities"], obj["features"]
    if (
        type(entities) is not list
        or type(features) is not list
        or not all(type(f) is str for f in features)
        or not all(type(r) is dict and all(type(v) is str for v in r.values()) for r in entities)
    ):
        return None
    return entities, features


async def send_json(send: Send, body: bytes, status: int = 200) -> None:
    """Send a complete JSON response (the headers :class:`~fastapi.Response` would send)."""
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def empty_receive() -> Message:
    """A ``receive`` for responses sent after the request body was read."""
    return {"type": "http.disconnect"}


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by its text (``"nan"``, ``"inf"``): valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return str(obj)
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [json_safe(v) for v in obj]
    return obj


def json_response(body: Any, status_code: int = 200) -> Response:
    """A JSON response serialised by orjson (no model validation)."""
    return Response(orjson.dumps(body), status_code=status_code, media_type="application/json")


def create_app(settings: ApiSettings | None = None, clock: Clock = wall_clock) -> FastAPI:
    """Build the app (settings validated here, at start-up).

    Args:
        settings: configuration (default: from the environment).
        clock: the time source for ``as_of`` (tests inject a fixed one).
    """
    cfg = settings or get_api_settings()
    current_plan()  # the feature repository, compiled and validated at start-up (PlanError names each mistake)
    metrics = Metrics(cfg.metrics_multiproc_dir)
    published = PublishedBatch(cfg.table("batch_views"))
    timeout = cfg.redis_timeout_ms / 1000
    samples_dir = cfg.samples_path()
    sampler = (
        ResponseSampler(samples_dir, cfg.api_sample_rate, cfg.api_sample_rows)
        if cfg.api_sample_rate > 0 and samples_dir is not None
        else None
    )

    async def write_samples(lines: list[tuple[int, bytes]]) -> None:
        """Append taken samples off the event loop; a failed write drops them (counted, logged), never
        disturbs serving."""
        if not lines or sampler is None:
            return
        try:
            await asyncio.to_thread(sampler.write, lines)
        except OSError as exc:
            metrics.sample_errors.inc(len(lines))
            log.warning("served-response samples not written (%d dropped): %s", len(lines), exc)

    async def flush_samples() -> None:
        while sampler is not None:
            await asyncio.sleep(SAMPLE_FLUSH_S)
            await write_samples(sampler.take())

    def served(body: dict[str, Any]) -> dict[str, Any]:
        """The hot-path hook of every /features answer: keep it when the sampler says so."""
        if sampler is not None and sampler.tick():
            before = sampler.kept
            sampler.add(body)
            metrics.samples.inc(sampler.kept - before)
        return body

    async def follow_plan() -> None:
        """Follow ``fstore apply`` and ``fstore backfill`` between requests (each request also checks the
        record, :func:`fstore.plan_source.follow`): re-read the applied record when it changed (one ``stat``
        a second); a bad record keeps the plan that serves, loudly: logged, counted
        (``fstore_plan_reload_failures_total``), ``fstore_plan_stale`` 1 and GET /health degraded until a
        good record is read."""
        while True:
            await asyncio.sleep(PLAN_FOLLOW_S)
            try:
                if refresh_plan():
                    log.info("serving the applied plan of %s", plan_repo())
            except Exception as exc:  # an unreadable record or repository: keep serving what was applied
                metrics.plan_reload_failures.inc()
                log.error("applied plan not reloaded, still serving the previous one: %s", exc)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        client = async_client(cfg.redis_url, cfg.redis_cluster, timeout=timeout, connect_timeout=timeout)
        app.state.reader = OnlineReader(client, clock)
        app.state.client = client
        app.state.settings = cfg
        app.state.sampler = sampler
        flusher = asyncio.ensure_future(flush_samples()) if sampler is not None else None
        follower = asyncio.ensure_future(follow_plan())
        yield
        follower.cancel()
        if flusher is not None and sampler is not None:
            flusher.cancel()
            await write_samples(sampler.take())
        await app.state.reader.aclose()
        await client.aclose()

    open_docs = cfg.api_key is None  # with a key, the docs are served by secured routes below
    app = FeaturesAPI(
        title="fstore online API",
        version="0.1.0",
        lifespan=lifespan,
        description="Merged batch + speed feature values (docs/design.md §4-§5).",
        docs_url="/docs" if open_docs else None,
        redoc_url="/redoc" if open_docs else None,
        openapi_url="/openapi.json" if open_docs else None,
        **NO_OTEL,
    )

    def client_error(exc: RequestError) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    def redis_unavailable(exc: RedisError) -> JSONResponse:
        metrics.redis_errors.inc()
        return JSONResponse(
            {"detail": f"the online store (Redis) is unreachable: {type(exc).__name__}; retry later"}, status_code=503
        )

    async def answer(
        scope: Scope, send: Send, rows: list[dict[str, str]], features: list[str], one: bool = False
    ) -> None:
        """Read and send ``/features`` (same body, same errors as the routes' handlers below); ``one``: GET's
        body (:func:`one_entity`)."""
        try:
            body = await read_features(scope["app"].state.reader, rows, features, cfg.api_max_entities, published.check)
        except RequestError as exc:
            await client_error(exc)(scope, empty_receive, send)
        except RedisError as exc:
            await redis_unavailable(exc)(scope, empty_receive, send)
        else:
            await send_json(send, orjson.dumps(served(one_entity(body) if one else body)))

    def key_passes(scope: Scope) -> bool:
        return cfg.api_key is None or key_ok(cfg, Headers(scope=scope).get("x-api-key"))

    async def fast_get_features(scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """``GET /features`` without FastAPI's per-request parameter solving (about half the CPU of a
        request). Answers only when FastAPI would reach the handler: the API key passes and ``features`` is
        given; otherwise declines and the route answers (401, 422 as documented)."""
        if not key_passes(scope):
            return receive
        # what starlette's QueryParams does (the last value of a repeated key wins), without the multidict
        params = parse_qsl(scope["query_string"].decode("latin-1"), keep_blank_values=True)
        features = [v for k, v in params if k == "features"]
        if not features:
            return receive
        row = {k: v for k, v in params if k != "features"}
        if len(row) + len(features) != len(params):  # an entity key given twice: the route names it (422)
            return receive
        await answer(scope, send, [row], features, one=True)
        return None

    async def fast_post_features(scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """``POST /features`` without FastAPI's body parsing, validation and parameter solving. Answers
        only when the API key passes and the body is exactly what the route accepts
        (:func:`features_body`); otherwise the route answers, from a replay of the body."""
        if not key_passes(scope):
            return receive
        body, replay = await read_body(receive)
        parsed = None if body is None else features_body(body, Headers(scope=scope).get("content-type"))
        if parsed is None:
            return replay
        await answer(scope, send, *parsed)
        return None

    app.fast_handlers = {"GET": fast_get_features, "POST": fast_post_features}
    app.metrics = metrics
    app.add_middleware(MetricsMiddleware, metrics=metrics)  # every request the fast path does not answer

    @app.exception_handler(RequestError)
    async def request_error(_: Request, exc: RequestError) -> JSONResponse:
        return client_error(exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
        """422 naming the field, as FastAPI's own handler, but JSON-safe: a NaN or ±Infinity that Python's
        JSON parser let through is echoed as text instead of failing the response with a 500."""
        return JSONResponse({"detail": json_safe(jsonable_encoder(exc.errors()))}, status_code=422)

    if not open_docs:

        @app.get("/openapi.json", include_in_schema=False, dependencies=Secured)
        async def get_openapi() -> JSONResponse:
            return JSONResponse(app.openapi())

        @app.get("/docs", include_in_schema=False, dependencies=Secured)
        async def get_docs() -> Response:
            return get_swagger_ui_html(openapi_url="/openapi.json", title=f"{app.title} - docs")

        @app.get("/redoc", include_in_schema=False, dependencies=Secured)
        async def get_redoc() -> Response:
            return get_redoc_html(openapi_url="/openapi.json", title=f"{app.title} - ReDoc")

    @app.exception_handler(RedisError)
    async def redis_down(_: Request, exc: RedisError) -> JSONResponse:
        return redis_unavailable(exc)

    @app.get("/features", response_model=EntityFeaturesResponse, dependencies=Secured)
    async def get_features(
        request: Request,
        features: Annotated[list[str], Query(description="view:feature or view; repeat or comma-separate")],
    ) -> Response:
        """Feature values of one entity row at `as_of` = now. The entity is given by the join keys of the
        feature repository's entities as query parameters, `?<join_key>=<id>` (one per view's entity)."""
        row = {k: v for k, v in request.query_params.items() if k != "features"}
        twice = sorted(k for k in row if len(request.query_params.getlist(k)) > 1)
        if twice:  # one entity per GET: which of the values was meant is not ours to guess
            raise RequestError(
                422, f"entity key(s) given more than once: {', '.join(twice)}; use POST /features for many"
            )
        reader: OnlineReader = request.app.state.reader  # not a dependency: one less solving pass
        return json_response(
            served(one_entity(await read_features(reader, [row], features, cfg.api_max_entities, published.check)))
        )

    @app.post("/features", response_model=FeaturesResponse, dependencies=Secured)
    async def post_features(request: Request, body: FeaturesRequest) -> Response:
        """Feature values of many entity rows, all at the same `as_of` (limit FSTORE_API_MAX_ENTITIES)."""
        reader: OnlineReader = request.app.state.reader
        try:
            rows = body.rows()
        except ValueError as exc:
            raise RequestError(422, str(exc)) from None
        return json_response(
            served(await read_features(reader, rows, body.features, cfg.api_max_entities, published.check))
        )

    @app.post("/historical-features", response_model=HistoricalResponse, dependencies=Secured)
    async def post_historical_features(body: HistoricalRequest) -> HistoricalResponse:
        """Point-in-time correct values per entity row from raw_events (limit FSTORE_API_MAX_ROWS)."""
        rows = await run_in_threadpool(
            historical_features,
            body.entity_rows,
            body.features,
            body.full_feature_names,
            cfg.table("raw_events"),
            cfg.api_max_rows,
        )
        return HistoricalResponse(rows=rows)

    @app.get("/health", response_model=HealthResponse)
    async def get_health(reader: ReaderDep) -> JSONResponse:
        """Redis reachability, the serving batch view, the speed layer's freshness and whether the API and
        the stream worker run the applied plan (no API key needed)."""
        probe = await StoreProbe.read(reader)
        if not probe.redis_up:
            metrics.redis_errors.inc()
            body = HealthResponse(status="unavailable", redis=f"Redis unreachable: {probe.error}")
            return JSONResponse(body.model_dump(), status_code=503)
        ptr, beat = probe.pointer, probe.heartbeat
        now = reader.clock()
        speed: dict[str, Any] = {"last_commit": None, "commit_age_s": None, "newest_event_time": None}
        if beat is not None:
            speed = {
                "last_commit": iso(beat.committed_at),
                "commit_age_s": (now - beat.committed_at) / 1e6,
                "newest_event_time": iso(beat.newest_event_time) if beat.newest_event_time else None,
                "last_log_reset": iso(beat.log_reset_at) if beat.log_reset_at else None,
                "replaying": beat.replaying,
            }
        detail: dict[str, Any] = {"speed_layer": speed}
        status, code = "ok", 200
        if beat is not None and beat.replaying:  # the worker's Kafka log was reset: speed view incomplete
            status, code = "degraded", 503
            speed["message"] = (
                "the stream worker found its Kafka log reset and is replaying it from the start: speed values "
                "may be incomplete until it catches up (docs/runbook.md, 'Kafka log reset')"
            )
        if probe.lost_writes is not None:  # the speed view may undercount until `fstore repair`
            status, code, detail["redis"] = "degraded", 503, probe.lost_writes
        if probe.eviction_problem is not None:  # evicted tiles read as no events: undercounted values
            status, code, detail["eviction"] = "degraded", 503, probe.eviction_problem
        stale = [f"the API: {e}" for e in [plan_stale()] if e]
        if beat is not None and beat.plan_error:
            stale.append(f"the stream worker: {beat.plan_error}")
        if stale:  # a changed applied record could not be read: the previous plan still runs
            status, code = "degraded", 503
            detail["plan"] = (
                "the applied plan record changed but could not be read, the previous plan still runs in "
                + "; in ".join(stale)
            )
        if ptr is None:
            try:
                lost = await published.latest()
            except RequestError as exc:
                status, code, detail["batch_view"] = "degraded", 503, str(exc)
            else:
                if lost is not None:  # Redis lost a published batch view: /features answers 503 until repaired
                    status, code, detail["batch_view"] = "degraded", 503, missing_message(lost)
        body = HealthResponse(
            status=status,
            redis="ok",
            batch_version=ptr.version if ptr else None,
            batch_cutoff=iso(ptr.cutover) if ptr else None,
            detail=detail,
        )
        return JSONResponse(body.model_dump(), status_code=code)

    @app.get("/metrics", dependencies=Secured)
    async def get_metrics(reader: ReaderDep) -> Response:
        """Prometheus metrics of every worker process, and a probe of the store (Redis up, batch view
        cutover, speed layer's last commit)."""
        probe = await StoreProbe.read(reader)
        if not probe.redis_up:
            metrics.redis_errors.inc()
        return Response(metrics.exposition(probe, plan_stale() is not None), media_type=CONTENT_TYPE_LATEST)

    return app
