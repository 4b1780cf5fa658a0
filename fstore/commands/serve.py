"""``fstore serve``: the online API (FastAPI under uvicorn)."""

from __future__ import annotations

import click


@click.command()
@click.option("--host", default=None, help="Bind address  [default: FSTORE_API_HOST, 127.0.0.1]")
@click.option("--port", default=None, type=int, help="Port  [default: FSTORE_API_PORT, 8000]")
@click.option("--workers", default=1, show_default=True, help="uvicorn worker processes")
@click.option("--log-level", default="warning", show_default=True)
def serve(host: str | None, port: int | None, workers: int, log_level: str) -> None:
    """Serve GET/POST /features, /health, /metrics and OpenAPI docs at /docs.

    Values merge the batch view (tiles before the cutover) and the speed view (tiles after it) from
    Redis (FSTORE_REDIS_URL). Set FSTORE_API_KEY to require the X-API-Key header.
    """
    import uvicorn

    from services.online_api.http import HeadBodyProtocol
    from services.online_api.settings import get_api_settings

    cfg = get_api_settings()
    h, p = host or cfg.api_host, port if port is not None else cfg.api_port
    click.echo(f"fstore serve: http://{h}:{p}/docs (Redis {cfg.redis_url})", err=True)
    # uvloop + httptools (C event loop and HTTP parser), head and body in one write, no access log: the
    # serving hot path.
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
