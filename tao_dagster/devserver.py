"""`tao-dagster dev` as a child process, for the tests and benchmarks that drive the real daemon.

`dagster dev` started in the background ignores SIGTERM; in its own session, SIGINT to the process group
stops the webserver and the daemon together.
"""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tao_dagster.defs.resources import PROJECT_ROOT


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(what: str, condition, timeout: float, server: subprocess.Popen, poll: float = 1.0):
    """Poll `condition` until it returns something truthy, which is returned; fail if the server exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise RuntimeError(f"dagster dev exited ({server.returncode}) while waiting for {what}")
        try:
            value = condition()
        except OSError:  # the server is not listening yet
            value = None
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


@contextlib.contextmanager
def dagster_dev(env: dict[str, str], log_path: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `tao-dagster dev` with these environment variables on a free port; yield (url, process) once
    GraphQL answers; always stop it. MLFLOW_TRACKING_URI is not inherited (mlflow.set_tracking_uri exports
    it): the server uses the store under its TAO_HOME unless `env` names one."""
    port = free_port()
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    tao = Path(sys.executable).with_name("tao-dagster")
    with log_path.open("w") as log:
        server = subprocess.Popen(
            [str(tao), "dev", "--port", str(port)],
            env={**inherited, **env},
            cwd=PROJECT_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for("GraphQL endpoint", lambda: graphql(url, "{ version }").get("data"), 180, server)
            yield url, server
        finally:
            os.killpg(server.pid, signal.SIGINT)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
                server.wait()
