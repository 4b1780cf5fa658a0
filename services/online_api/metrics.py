"""Prometheus metrics of the online API: request counters, the ASGI middleware that feeds them, and the
``/metrics`` exposition.

With several uvicorn workers (``fstore serve --workers N``) each worker is its own process: a scrape
reaches one of them. ``fstore serve`` then sets ``PROMETHEUS_MULTIPROC_DIR`` before the workers start, so
``prometheus_client`` keeps every counter in a memory-mapped file per process, and :meth:`Metrics.exposition`
sums the files of all workers (``MultiProcessCollector``): the answer is the same whichever worker takes
the scrape. With one worker the counters live in the app's own registry, as before.

Besides the counters, each scrape probes the store (:class:`StoreProbe`, one Redis round trip): Redis
reachability, the serving batch view's cutover and the speed layer's last commit, as gauges built for
that scrape only (they describe the store, not a process, so nothing to sum across workers). So is
``fstore_plan_stale``: whether the process answering the scrape runs an older plan than the applied record
(which changed but could not be read); ``fstore_plan_reload_failures_total`` counts those reloads.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest, values
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from redis.exceptions import RedisError, ResponseError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fstore.core.timeutil import iso
from fstore.online.reader import OnlineReader
from fstore.redis.layout import HEARTBEAT_KEY, LOST_WRITES_KEY, BatchPointer, Heartbeat

#: The routes whose 5xx answers FstoreApi5xx watches (their error counters are created at 0).
SERVED_ROUTES = (("/features", "GET"), ("/features", "POST"), ("/historical-features", "POST"))


class Metrics:
    """Prometheus metrics of one app instance (own registry, so several apps can live in one process).

    Args:
        multiproc_dir: the ``PROMETHEUS_MULTIPROC_DIR`` the process was started with: when
            ``prometheus_client`` keeps its values in files (:func:`values_in_files`), :meth:`exposition`
            reads every worker's files there; otherwise the variable is ignored.
    """

    def __init__(self, multiproc_dir: str | None = None) -> None:
        # The variable alone proves nothing: some libraries set it when imported (Feast's metrics module
        # does), after prometheus_client chose in-memory values; then the counters are in this registry.
        self.multiproc_dir = multiproc_dir if values_in_files() else None
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "fstore_api_requests_total", "Requests", ["route", "method", "status"], registry=self.registry
        )
        self.latency = Histogram(
            "fstore_api_request_seconds",
            "Request latency",
            ["route", "method"],
            buckets=(0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 2.5),
            registry=self.registry,
        )
        self.redis_errors = Counter("fstore_api_redis_errors_total", "Redis errors", registry=self.registry)
        self.samples = Counter(
            "fstore_api_samples_total", "Served entity rows kept for the consistency replay", registry=self.registry
        )
        self.sample_errors = Counter(
            "fstore_api_sample_write_errors_total",
            "Sample writes that failed (samples dropped)",
            registry=self.registry,
        )
        self.plan_reload_failures = Counter(
            "fstore_plan_reload_failures_total",
            "Changed applied plan records the API could not read (it kept serving the previous plan)",
            registry=self.registry,
        )
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        for route, method in SERVED_ROUTES:  # the error series exist at 0 before their first burst: a series born
            for status in (500, 503):  # with it shows no increase to rate(), and FstoreApi5xx would miss it
                self.requests.labels(route, method, str(status))

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one request and record its latency (labelled children cached per route/method/status)."""
        key = (route, method, status)
        pair = self._children.get(key)
        if pair is None:
            pair = self._children[key] = (
                self.requests.labels(route, method, str(status)),
                self.latency.labels(route, method),
            )
        pair[0].inc()
        pair[1].observe(seconds)

    def exposition(self, probe: StoreProbe | None = None, plan_stale: bool | None = None) -> bytes:
        """The text format of every worker's metrics, then the probe's gauges and ``fstore_plan_stale`` (1
        when the answering process runs an older plan than the applied record, which it could not read)."""
        if self.multiproc_dir:
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=self.multiproc_dir)  # type: ignore[no-untyped-call]
            out = generate_latest(registry)
        else:
            out = generate_latest(self.registry)
        out += probe.exposition() if probe is not None else b""
        if plan_stale is not None:
            out += scrape_gauges(
                [
                    (
                        "fstore_plan_stale",
                        "1 while the applied plan record changed but could not be read: the previous plan is served",
                        int(plan_stale),
                    )
                ]
            )
        return out


class _ScrapeGauges(Collector):
    def __init__(self, gauges: list[tuple[str, str, float]]) -> None:
        self.gauges = gauges

    def collect(self) -> Iterator[Metric]:
        for name, doc, value in self.gauges:
            yield GaugeMetricFamily(name, doc, value=value)


def scrape_gauges(gauges: list[tuple[str, str, float]]) -> bytes:
    """``(name, help, value)`` gauges of this scrape only, in the text format.

    Not ``Gauge`` objects: in multiprocess mode every ``Gauge`` writes its value to the worker's file, which
    each later scrape — answered by any worker — exposes again with a ``pid`` label. Prometheus keeps its
    connection, so one worker answers every scrape, and the other's last probe stayed there for good: a
    Redis outage long over kept a ``fstore_api_redis_up{pid=...} 0`` and FstoreRedisUnreachable firing
    (probe-ops).
    """
    reg = CollectorRegistry()
    reg.register(_ScrapeGauges(gauges))
    return generate_latest(reg)


def values_in_files() -> bool:
    """Whether ``prometheus_client`` keeps this process's metric values in memory-mapped files (multiprocess
    mode: ``PROMETHEUS_MULTIPROC_DIR`` was set when it was first imported)."""
    return values.ValueClass is not values.MutexValue


@dataclass(frozen=True)
class StoreProbe:
    """What one Redis round trip says about the store: reachable, the serving batch view, the speed layer."""

    redis_up: bool
    pointer: BatchPointer | None = None
    heartbeat: Heartbeat | None = None
    error: str | None = None
    lost_writes: str | None = None  # a stream worker found Redis lost its writes: why, and since when
    #: ``(maxmemory-policy, evicted_keys)`` from INFO (standalone Redis; None on a cluster client)
    eviction: tuple[str, int] | None = None

    @property
    def eviction_problem(self) -> str | None:
        """Why values may undercount because Redis evicts keys, or None: every fstore key is rebuildable state
        with a TTL (docs/design.md §7), so any policy but ``noeviction`` may drop a batch-view or speed-tile
        hash, which a read cannot tell from an entity without events."""
        if self.eviction is None:
            return None
        policy, evicted = self.eviction
        out = []
        if evicted:
            out.append(
                f"Redis evicted {evicted} keys since its start (INFO stats evicted_keys): values may undercount; "
                "stop the stream workers, flush Redis and run `fstore repair`, then `redis-cli CONFIG RESETSTAT`"
            )
        if policy != "noeviction":
            out.append(
                f"Redis maxmemory-policy is {policy}: at maxmemory it evicts fstore keys and values undercount "
                "silently; set `maxmemory-policy noeviction`"
            )
        return "; ".join(out) + " (docs/runbook.md, FstoreRedisEvicting)" if out else None

    @classmethod
    async def read(cls, reader: OnlineReader) -> StoreProbe:
        """Ping Redis and read the batch pointer, the speed layer's heartbeat and whether a stream worker
        found that Redis lost its writes (never raises RedisError)."""
        try:
            await reader.client.ping()
            pointer = await reader.refresh_pointer()
            beat = Heartbeat.loads(await reader.client.get(HEARTBEAT_KEY))
            lost = await reader.client.get(LOST_WRITES_KEY)
            eviction = await _eviction(reader.client)
        except RedisError as exc:
            return cls(False, error=type(exc).__name__)
        return cls(
            True, pointer, beat, lost_writes=None if lost is None else lost_writes_message(lost), eviction=eviction
        )

    def exposition(self) -> bytes:
        """Gauges of this probe in the Prometheus text format."""
        gauges: list[tuple[str, str, float]] = [
            ("fstore_api_redis_up", "1 if Redis answered the scrape's ping", int(self.redis_up))
        ]
        if self.pointer is not None:
            gauges.append(
                (
                    "fstore_batch_view_cutover_timestamp_seconds",
                    "Cutover C of the serving batch view (batch tiles before it)",
                    self.pointer.cutover / 1e6,
                )
            )
        if self.heartbeat is not None:
            gauges.append(
                (
                    "fstore_speed_last_commit_timestamp_seconds",
                    "Last speed-tile commit of the stream worker (its heartbeat in Redis)",
                    self.heartbeat.committed_at / 1e6,
                )
            )
        if self.eviction is not None:
            gauges.append(
                ("fstore_api_redis_evicted_keys", "Keys Redis evicted since its start (INFO stats)", self.eviction[1])
            )
            gauges.append(
                (
                    "fstore_api_redis_evicting_policy",
                    "1 if Redis's maxmemory-policy may evict keys (anything but noeviction)",
                    int(self.eviction[0] != "noeviction"),
                )
            )
        return scrape_gauges(gauges)


async def _eviction(client: Any) -> tuple[str, int] | None:
    """``(maxmemory-policy, evicted_keys)`` of a standalone Redis (one INFO round trip), None for a client
    without ``info`` (the Redis Cluster pool) or a Redis that refuses INFO (an ACL user without it, a renamed
    command: nothing to tell, and not an outage)."""
    if getattr(client, "info", None) is None:
        return None
    pipe = client.pipeline(transaction=False)
    pipe.info("memory")
    pipe.info("stats")
    try:
        memory, stats = await pipe.execute()
    except ResponseError:
        return None
    return str(memory.get("maxmemory_policy", "noeviction")), int(stats.get("evicted_keys", 0))


def lost_writes_message(raw: bytes | str) -> str:
    """The text of :data:`~fstore.redis.layout.LOST_WRITES_KEY`: the worker's message and when it found it."""
    try:
        obj = json.loads(raw)
        return f"{obj['message']} (found {iso(int(obj['detected_at']))})"
    except (ValueError, KeyError, TypeError):
        return f"a stream worker found that Redis lost writes: {raw!r}"


class StatusSend:
    """A ``send`` that passes messages on and remembers the response status (0 until it is sent)."""

    __slots__ = ("send", "status")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.status = 0

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.status = message["status"]
        await self.send(message)


class MetricsMiddleware:
    """Pure ASGI middleware: request count and latency per matched route, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        tracked = StatusSend(send)
        try:
            await self.app(scope, receive, tracked)
        finally:
            route = scope.get("route")  # set on this scope by the router when a route matched
            self.metrics.observe(
                getattr(route, "path", "unmatched"), scope["method"], tracked.status or 500, time.perf_counter() - start
            )
