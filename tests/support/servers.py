"""Real servers on 127.0.0.1 for the tests: S3 (moto), PostgreSQL (Debian's package) and an MLflow tracking
server. Each starts on a free port, is waited for, and is always stopped when its `with` block ends."""

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


@contextlib.contextmanager
def postgres_server() -> Iterator[dict[str, str]]:
    """A throwaway PostgreSQL cluster with password authentication; yields the DAGSTER_PG_* variables of
    deploy/dagster.prod.yaml. PostgreSQL refuses to run as root, so as root it runs as the `postgres` user
    that Debian's package creates."""
    bindir = postgres_bin()
    root = os.geteuid() == 0
    as_owner = ["runuser", "-u", "postgres", "--"] if root else []
    folder = Path(tempfile.mkdtemp(prefix="tao-pg-"))
    data, password = folder / "data", secrets.token_hex(12)
    (folder / "pw").write_text(password)
    if root:
        shutil.chown(folder, "postgres")
        shutil.chown(folder / "pw", "postgres")
    port = free_port()

    def pg(*args: str) -> None:
        subprocess.run([*as_owner, *args], check=True, capture_output=True, timeout=120)

    try:
        pg(str(bindir / "initdb"), "-D", str(data), "-U", "tao", "--pwfile", str(folder / "pw"), "-A", "scram-sha-256")
        options = f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off"
        pg(str(bindir / "pg_ctl"), "-D", str(data), "-o", options, "-l", str(folder / "log"), "-w", "-t", "60", "start")
        try:
            yield {
                "DAGSTER_PG_HOST": "127.0.0.1",
                "DAGSTER_PG_PORT": str(port),
                "DAGSTER_PG_DB": "postgres",
                "DAGSTER_PG_USERNAME": "tao",
                "DAGSTER_PG_PASSWORD": password,
            }
        finally:
            pg(str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def mlflow_server(s3_url: str, artifacts: str, folder: Path) -> Iterator[str]:
    """`mlflow server` with a SQLite backend in `folder` and proxied artifacts at `artifacts` (s3://...) on the
    S3 endpoint `s3_url`; yields its URL. Clients reach artifacts through the server, with no S3 credentials."""
    port = free_port()
    env = {**os.environ, **S3_CREDENTIALS, "MLFLOW_S3_ENDPOINT_URL": s3_url}
    command = [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    command += ["--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}", "--artifacts-destination", artifacts]
    with (folder / "mlflow-server.log").open("w") as log:
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/health", server, 90)
            yield url
        finally:
            stop(server)
