"""Real servers on 127.0.0.1 for the tests: S3 (moto), PostgreSQL (Debian's package) and an MLflow tracking
server. Each starts on a free port, is waited for, and is always stopped when its `with` block ends. The fault
tests stop one mid-round and start it again on the same port with the same state: `stop()` and `start()`."""

import contextlib
import glob
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from .devserver import free_port

BIN = Path(sys.executable).parent
S3_CREDENTIALS = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}


def wait_http(url: str, server: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(url, timeout=2)
            return
        except OSError:
            if time.monotonic() > deadline or server.poll() is not None:
                raise RuntimeError(f"{url} did not answer (exit code {server.poll()})") from None
            time.sleep(0.3)


def stop(server: subprocess.Popen) -> None:
    """Stop a server started in its own session, with whatever processes it spawned."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGTERM)
    try:
        server.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
        server.wait()


@contextlib.contextmanager
def s3_server() -> Iterator[str]:
    """moto's S3 server; yields its URL. Clients need S3_CREDENTIALS in the environment (any values do)."""
    port = free_port()
    server = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_http(url, server, 30)
        yield url
    finally:
        stop(server)


def postgres_bin() -> Path | None:
    """Debian's PostgreSQL programs (not on PATH there), or None when the server is not installed."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb")) or ([shutil.which("initdb")] if shutil.which("initdb") else [])
    return Path(found[-1]).parent if found else None


class PostgresServer:
    """A throwaway PostgreSQL cluster with password authentication; `variables` are the DAGSTER_PG_* variables of
    deploy/dagster.prod.yaml. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user that
    Debian's package creates."""

    def __init__(self, folder: Path):
        self.folder, self.data, self.port = folder, folder / "data", free_port()
        password = secrets.token_hex(12)
        (folder / "pw").write_text(password)
        self.as_owner = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_owner:
            shutil.chown(folder, "postgres")
            shutil.chown(folder / "pw", "postgres")
        self.pg("initdb", "-D", str(self.data), "-U", "tao", "--pwfile", str(folder / "pw"), "-A", "scram-sha-256")
        self.variables = {
            "DAGSTER_PG_HOST": "127.0.0.1",
            "DAGSTER_PG_PORT": str(self.port),
            "DAGSTER_PG_DB": "postgres",
            "DAGSTER_PG_USERNAME": "tao",
            "DAGSTER_PG_PASSWORD": password,
        }

    def pg(self, program: str, *args: str) -> None:
        subprocess.run([*self.as_owner, str(postgres_bin() / program), *args], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.folder} -c fsync=off"
        self.pg("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.folder / "log"), "-w", "-t", "60", "start")

    def stop(self) -> None:
        """A fast shutdown: open connections are closed, as a restarted database server closes them."""
        self.pg("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")


@contextlib.contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    folder = Path(tempfile.mkdtemp(prefix="tao-pg-"))
    try:
        server = PostgresServer(folder)
        server.start()
        try:
            yield server
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):  # already stopped by the test
                server.stop()
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class MlflowServer:
    """`mlflow server` with a SQLite backend in `folder` and proxied artifacts at `artifacts` (s3://...) on the
    S3 endpoint `s3_url`. Clients reach artifacts through the server, with no S3 credentials."""

    def __init__(self, s3_url: str, artifacts: str, folder: Path):
        self.port, self.folder, self.process = free_port(), folder, None
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_url}
        self.command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1"]
        self.command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", artifacts]

    def start(self) -> None:
        with (self.folder / "mlflow-server.log").open("a") as log:
            self.process = subprocess.Popen(self.command, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        wait_http(f"{self.url}/health", self.process, 90)

    def stop(self) -> None:
        stop(self.process)


@contextlib.contextmanager
def mlflow_server(s3_url: str, artifacts: str, folder: Path) -> Iterator[MlflowServer]:
    server = MlflowServer(s3_url, artifacts, folder)
    try:
        server.start()
        yield server
    finally:
        if server.process:
            stop(server.process)


class RestartableS3:
    """moto's S3 for the tests that restart it, in a process of its own (restartable_s3.py) that keeps its buckets
    while `stop()` and `start()` take its HTTP server down and up on the same port, where a restarted moto_server
    would start empty."""

    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        script = Path(__file__).with_name("restartable_s3.py")
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(self.port)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True
        )
        self._answer()

    def _answer(self) -> None:
        if self.process.stdout.readline().strip() != "ok":
            raise RuntimeError(f"the S3 server on port {self.port} did not answer (exit code {self.process.poll()})")

    def _send(self, command: str) -> None:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        self._answer()

    def start(self) -> None:
        self._send("start")

    def stop(self) -> None:
        self._send("stop")


@contextlib.contextmanager
def restartable_s3_server() -> Iterator[RestartableS3]:
    """A RestartableS3, serving; its process, with its buckets, ends with the block."""
    server = RestartableS3()
    try:
        wait_http(server.url, server.process, 30)
        yield server
    finally:
        stop(server.process)
