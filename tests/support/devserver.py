"""Servers as child processes, for the tests and benchmarks that drive the real thing: `tao-dagster dev`,
`tao-dagster serve`, and vLLM's OpenAI-compatible server (an LLM judge's endpoint).

Each runs in its own session and is stopped through its process group, children included: `dagster dev`
started in the background ignores SIGTERM but stops on SIGINT; vLLM's engine core is a process of its own
that must not outlive the server.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.serving.backends import free_port


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
            raise RuntimeError(f"{Path(server.args[0]).name} exited ({server.returncode}) while waiting for {what}")
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
    with log_path.open("w") as log:
        server = start_tao(["dev", "--port", str(port)], env, log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_for("GraphQL endpoint", lambda: graphql(url, "{ version }").get("data"), 180, server)
            yield url, server
        finally:
            stop_group(server, signal.SIGINT)


def start_tao(arguments: list[str], env: dict[str, str], log) -> subprocess.Popen:
    """`tao-dagster <arguments>` from the checkout, in a session of its own, its output in `log`; these variables
    over the environment, except MLFLOW_TRACKING_URI (mlflow.set_tracking_uri exports it)."""
    inherited = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    tao = Path(sys.executable).with_name("tao-dagster")
    return subprocess.Popen(
        [str(tao), *arguments], env={**inherited, **env}, cwd=PROJECT_ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )


def stop_group(server: subprocess.Popen, sig: int, timeout: float = 60) -> None:
    """Send `sig` to the server's process group; kill the group if the server has not exited after `timeout` seconds."""
    os.killpg(server.pid, sig)
    try:
        server.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextlib.contextmanager
def vllm_server(model: str, log_path: Path, api_key: str | None = None, name: str = "judge") -> Iterator[tuple[str, subprocess.Popen]]:
    """vLLM's OpenAI-compatible server for `model` (served as `name`) on a free loopback port, with the engine
    settings generation uses on this CPU; yield (base URL ending in /v1, process) once it lists its model;
    always stop it. With `api_key` it refuses requests without that key (passed in the environment, not
    on the command line where `ps` shows it)."""
    from tao_dagster.generation import EngineSettings

    settings, port = EngineSettings(), free_port()
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", model, "--served-model-name", name]
    command += ["--host", "127.0.0.1", "--port", str(port), "--seed", str(settings.seed), "--enforce-eager"]
    command += ["--max-model-len", str(settings.max_model_len), "--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    command += ["--block-size", str(settings.block_size)]
    env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1")}
    if api_key:
        env["VLLM_API_KEY"] = api_key
    url = f"http://127.0.0.1:{port}/v1"

    def lists_model() -> bool:
        request = urllib.request.Request(f"{url}/models", headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        with urllib.request.urlopen(request, timeout=5) as response:
            return any(m["id"] == name for m in json.loads(response.read())["data"])

    with log_path.open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            wait_for(f"model {name} on the vLLM server", lists_model, 600, server)
            yield url, server
        finally:
            stop_group(server, signal.SIGTERM)


@contextlib.contextmanager
def tao_serve(env: dict[str, str], log_path: Path, stop_signal: int = signal.SIGTERM) -> Iterator[tuple[str, subprocess.Popen]]:
    """Start `tao-dagster serve` with these environment variables on a free port; yield (base URL ending in /v1,
    process) once its first backend answers; always stop it with `stop_signal` to its process group (a
    terminal's Ctrl-C is SIGINT), then kill whatever is left. MLFLOW_TRACKING_URI is not inherited."""
    port = free_port()
    with log_path.open("w") as log:
        server = start_tao(["serve", "--port", str(port)], env, log)
        try:
            url = f"http://127.0.0.1:{port}"

            def healthy() -> bool:
                try:
                    with urllib.request.urlopen(f"{url}/health", timeout=5) as response:
                        return response.status == 200
                except urllib.error.HTTPError:  # 503 while the first backend starts
                    return False

            wait_for("a healthy tao-dagster serve", healthy, 600, server)
            yield f"{url}/v1", server
        finally:
            if server.poll() is None:
                stop_group(server, stop_signal)
