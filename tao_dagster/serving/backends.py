"""The model behind the endpoint: vLLM's OpenAI server as a child process, one per policy.

Each backend listens on a free loopback port and requires a key of its own, so nothing else on the machine
reaches the model past the proxy (and its log). It runs in a process group of its own: stopping it signals the
whole group (the API server, vLLM's engine core and workers), and it is sent SIGTERM if the serving process
dies, even by SIGKILL, so no backend outlives the server. It stays in the server's session: Linux's autogroup
scheduling makes each session a CPU group of its own, and a backend in a session of its own, busy under steady
traffic on 2 cores, left the next backend's start-up about 1% of a core (not healthy after 10 minutes); in one
session the two share the cores by thread, and the start-up took 58 s.
"""

import asyncio
import contextlib
import ctypes
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from tao_dagster.generation import EngineSettings
from tao_dagster.hardware import compute_precision, vllm_cpu_environment
from tao_dagster.policies import Policy
from tao_dagster.serving.settings import API_KEY_VARIABLE

# An exception line, bare or behind vLLM's "(Worker pid=1) ERROR 12-01 18:20:17 [file.py:953] " prefix.
FIRST_ERROR = re.compile(r"^(?:\(\w+ pid=\d+\) ERROR [^\]]*\] )?((?:\w+\.)*\w*(?:Error|Exception): .*)$", re.MULTILINE)
PR_SET_PDEATHSIG = 1
_prctl = getattr(ctypes.CDLL(None), "prctl", None)  # Linux; resolved here so the forked child only calls it


class BackendFailed(RuntimeError):
    """A backend exited or did not become healthy in time."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Backend:
    policy: Policy
    name: str  # the name vLLM serves it under, which a response carries as its `model`
    url: str  # ends in /v1
    key: str
    process: subprocess.Popen
    log_path: Path
    in_flight: int = 0

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    def alive(self) -> bool:
        return self.process.poll() is None

    def first_error(self) -> str:
        """The first exception its log names (vLLM's root cause: later ones only say that a process failed)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "its log could not be read"
        found = FIRST_ERROR.search(text)
        return found.group(1) if found else "no exception in its log"


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGTERM when the thread that started it exits. Backends are
    started from the event loop's thread, which lives as long as the server."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def backend_command(policy: Policy, name: str, port: int, settings: EngineSettings, gpu: bool) -> list[str]:
    command = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", policy.path, "--served-model-name", name]
    command += ["--host", "127.0.0.1", "--port", str(port), "--seed", str(settings.seed), "--dtype", compute_precision().dtype]
    command += ["--max-model-len", str(settings.max_model_len), "--gpu-memory-utilization", str(settings.gpu_memory_utilization)]
    command += ["--tensor-parallel-size", str(settings.tensor_parallel_size)]
    if settings.block_size:
        command += ["--block-size", str(settings.block_size)]
    if not gpu:
        command.append("--enforce-eager")  # compiling adds about 90 s of start-up on a CPU for the same throughput
    return command


def backend_environment(key: str, settings: EngineSettings, gpu: bool) -> dict[str, str]:
    """The server's environment without its own API key, plus the backend's key and, on a CPU, the engine's
    core binding (variables the user set win). vLLM's server always runs its engine in a process of its own."""
    cpu = {} if gpu else vllm_cpu_environment(settings.tensor_parallel_size)
    cpu.pop("VLLM_ENABLE_V1_MULTIPROCESSING", None)
    inherited = {k: v for k, v in os.environ.items() if k != API_KEY_VARIABLE}
    return {**cpu, **inherited, "VLLM_API_KEY": key}


def start_backend(policy: Policy, name: str, settings: EngineSettings, log_dir: Path) -> Backend:
    """Start vLLM's OpenAI server for `policy`; it is healthy once `wait_healthy` returns."""
    import torch

    gpu, port, key = torch.cuda.is_available(), free_port(), secrets.token_urlsafe(24)
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)}-{port}.log"
    with log_path.open("w") as log:
        process = subprocess.Popen(
            backend_command(policy, name, port, settings, gpu),
            env=backend_environment(key, settings, gpu),
            stdout=log,
            stderr=subprocess.STDOUT,
            process_group=0,
            preexec_fn=_die_with_parent,
        )
    return Backend(policy, name, f"http://127.0.0.1:{port}/v1", key, process, log_path)


async def wait_healthy(backend: Backend, client: httpx.AsyncClient, timeout: float) -> None:
    """Return once the backend lists its model (vLLM answers only when its engine is ready); BackendFailed if it
    exits or the timeout passes first."""
    deadline = time.monotonic() + timeout
    while True:
        if not backend.alive():
            raise BackendFailed(
                f"the backend for {backend.policy.version} exited with code {backend.process.returncode}: "
                f"{backend.first_error()} (its whole log: {backend.log_path})"
            )
        with contextlib.suppress(httpx.TransportError):
            answer = await client.get(f"{backend.url}/models", headers=backend.headers, timeout=5)
            if answer.status_code == 200 and any(m.get("id") == backend.name for m in answer.json().get("data", [])):
                return
        if time.monotonic() > deadline:
            raise BackendFailed(f"the backend for {backend.policy.version} was not healthy after {timeout:.0f} s: see {backend.log_path}")
        await asyncio.sleep(0.5)


def stop_backend(backend: Backend, timeout: float = 30) -> None:
    """SIGTERM to the backend's process group, SIGKILL to whatever of it is left after `timeout` seconds."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(backend.process.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        backend.process.wait(timeout=timeout)
    with contextlib.suppress(ProcessLookupError):  # an engine process that outlived its server
        os.killpg(backend.process.pid, signal.SIGKILL)
    backend.process.wait()
