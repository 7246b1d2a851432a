"""Run the endpoint: the champion follower, the log and the proxy under uvicorn."""

import logging

import httpx

from tao_dagster.paths import tao_home
from tao_dagster.serving.champion import Champion
from tao_dagster.serving.proxy import Proxy, build_app
from tao_dagster.serving.tracelog import TraceLog
from tao_dagster.settings import Settings

log = logging.getLogger(__name__)


def run_server(core: Settings) -> int:
    """Serve until SIGINT or SIGTERM (uvicorn's handlers: requests in flight finish, then every backend stops);
    1 if the first backend could not start."""
    import uvicorn

    serve = core.serve
    domain = core.domain.load()
    name = serve.served_name(domain.name)
    client = httpx.AsyncClient(timeout=httpx.Timeout(None, connect=10))
    champion = Champion(core, serve, name, tao_home() / "serve", client)
    traces = TraceLog(core.logs, tao_home() / "cache" / "serve-spool", serve.rotate_bytes, serve.rotate_seconds)
    failures = []

    def on_first_failure(err: Exception) -> None:
        log.error("nothing to serve: %s", err)
        failures.append(err)
        server.should_exit = True

    app = build_app(Proxy(champion, domain, traces, serve, client), on_first_failure)
    server = uvicorn.Server(
        uvicorn.Config(app, host=serve.host, port=serve.port, log_level="warning", timeout_graceful_shutdown=int(serve.drain_seconds))
    )
    log.info("endpoint http://%s:%d/v1, model %r; request log in %s", serve.host, serve.port, name, core.logs.location)
    server.run()
    return 1 if failures else 0
