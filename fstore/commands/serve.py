"""``fstore serve``: the online API (FastAPI under uvicorn)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="Bind address  [default: FSTORE_API_HOST, 127.0.0.1]")
@click.option("--port", default=None, type=click.IntRange(0, 65535), help="Port  [default: FSTORE_API_PORT, 8000]")
@click.option("--workers", default=1, type=click.IntRange(min=1), show_default=True, help="uvicorn worker processes")
@click.option("--log-level", default="warning", show_default=True)
def serve(host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Serve GET/POST /features, /health, /metrics and OpenAPI docs at /docs.

    Values merge the batch view (tiles before the cutover) and the speed view (tiles after it) from
    Redis (FSTORE_REDIS_URL). Set FSTORE_API_KEY to require the X-API-Key header.

    With --workers N > 1, /metrics sums the counters of every worker (Prometheus multiprocess mode, in
    PROMETHEUS_MULTIPROC_DIR: a fresh temporary folder unless set; its *.db files are wiped at start).
    FSTORE_API_SAMPLE_RATE of the answers (default 0.001) are appended to FSTORE_SAMPLES_DIR (default
    <data_dir>/served_samples) for `fstore check-consistency --from-samples`.
    """
    import os
    import shutil
    import tempfile
    from pathlib import Path

    import uvicorn

    from services.online_api.http import HeadBodyProtocol
    from services.online_api.settings import get_api_settings

    cfg = get_api_settings()
    h, p = host or cfg.api_host, port if port is not None else cfg.api_port
    click.echo(f"fstore serve: http://{h}:{p}/docs (Redis {cfg.redis_url})", err=True)
    own_dir = None
    if cfg.metrics_multiproc_dir:  # values of a previous run must not be summed into this one
        for stale in Path(cfg.metrics_multiproc_dir).glob("*.db"):
            stale.unlink()
    elif workers > 1:  # read by prometheus_client in each worker, before it makes any metric
        own_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fstore-api-metrics-")
    # uvloop + httptools (C event loop and HTTP parser), head and body in one write, no access log: the
    # serving hot path.
    try:
        uvicorn.run(
            "services.online_api.main:app",
            host=h,
            port=p,
            workers=workers,
            log_level=log_level,
            factory=False,
            loop="uvloop",
            http=HeadBodyProtocol,
            access_log=False,
            server_header=False,  # no version banner
        )
    finally:
        if own_dir:
            shutil.rmtree(own_dir, ignore_errors=True)
