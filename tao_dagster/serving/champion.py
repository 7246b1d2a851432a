"""Which backend answers: the current champion's, followed through the MLflow registry without dropping requests.

Every `poll_seconds` the champion alias is read (policies.current_version). When it names another policy, a new
backend starts beside the old one; once it is healthy, new requests go to it, the old one finishes the requests
it holds, and then it is stopped. Our checkpoints are merged full models (LoRA folded into the weights, so
the next round trains from them as from any model), so a switch is a new vLLM process rather than a LoRA
adapter loaded into the running one: it costs a second model in memory for the length of a start-up, and any
checkpoint (full fine-tune included) switches the same way.
"""

import asyncio
import logging
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from tao_dagster.policies import current_version, policy_of_version
from tao_dagster.serving.backends import Backend, BackendFailed, start_backend, stop_backend, wait_healthy
from tao_dagster.serving.settings import ServeSettings
from tao_dagster.settings import Settings
from tao_dagster.warehouse import Warehouse

log = logging.getLogger(__name__)


class Champion:
    def __init__(self, core: Settings, serve: ServeSettings, name: str, backend_logs: Path, client: httpx.AsyncClient):
        self.core, self.serve, self.name, self.backend_logs, self.client = core, serve, name, backend_logs, client
        self.db = Warehouse(core.warehouse_path)
        self.active: Backend | None = None
        self.started: list[Backend] = []  # every backend not yet stopped

    async def follow(self, on_first_failure: Callable[[Exception], None]) -> None:
        """Serve the champion, then follow it; if the very first backend cannot start, nothing can be served."""
        try:
            await self.update()
        except Exception as err:
            on_first_failure(err)
            return
        while True:
            await asyncio.sleep(self.serve.poll_seconds)
            try:
                await self.update()
            except Exception as err:  # the registry or a checkpoint's weights out of reach: the current backend serves on
                log.error("keeping %s: %s", self.active.policy.version if self.active else "nothing", err)

    async def update(self) -> None:
        """Switch to the champion if it is not the policy that answers (or that backend died)."""
        version = await asyncio.to_thread(current_version, self.db, self.core.policy, self.core.tracking)
        if self.active and self.active.alive() and self.active.policy.version == version:
            return
        if self.active and not self.active.alive():
            log.error("the backend for %s exited (code %s): starting it again", self.active.policy.version, self.active.process.returncode)
        policy = await asyncio.to_thread(policy_of_version, self.db, self.core.policy, self.core.tracking, version)
        log.info("starting a backend for %s (%s)", version, policy.path)
        began = time.monotonic()
        backend = start_backend(policy, f"{self.name}@{version}", self.core.policy.engine_settings(), self.backend_logs)
        self.started.append(backend)
        try:
            await wait_healthy(backend, self.client, self.serve.start_timeout_seconds)
        except BackendFailed:
            await self.stop(backend)
            raise
        old, self.active = self.active, backend
        log.info(
            "now serving %s as %s (model version %s; healthy after %.0f s)",
            version,
            self.name,
            policy.model_version,
            time.monotonic() - began,
        )
        if old:
            await self.retire(old)

    async def retire(self, old: Backend) -> None:
        """Let the old backend finish what it holds (at most drain_seconds), then stop it."""
        deadline = time.monotonic() + self.serve.drain_seconds
        while old.in_flight and old.alive() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        if old.in_flight:
            log.warning("stopping the backend for %s with %d requests still in flight", old.policy.version, old.in_flight)
        await self.stop(old)
        log.info("stopped the backend for %s", old.policy.version)

    async def stop(self, backend: Backend) -> None:
        await asyncio.to_thread(stop_backend, backend)
        self.started.remove(backend)

    def stop_all(self) -> None:
        for backend in list(self.started):
            stop_backend(backend)
            self.started.remove(backend)
