"""`dagster dev` for real: its daemon's sensor turns dropped log files into partitions, and a backfill
launched through the GraphQL API scores them in one run. The server is always stopped."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import dagster as dg
import pytest

from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.resources import PROJECT_ROOT

from .conftest import write_banking_log

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""


def graphql(url: str, query: str, variables: dict | None = None) -> dict:
    body = json.dumps({"query": query, "variables": variables or {}}).encode()
    request = urllib.request.Request(f"{url}/graphql", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def wait_for(what: str, condition, timeout: float, server: subprocess.Popen):
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
        time.sleep(1)
    raise TimeoutError(f"no {what} after {timeout:.0f} s")


@pytest.fixture
def dagster_dev(tmp_path, tiny_model_dir, learnable_domain_file):
    """`tao-dagster dev` on a free loopback port with a fresh project home, the tiny model and two log files."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    logs = tmp_path / "logs"
    logs.mkdir()
    write_banking_log(logs / "day1.csv", 0, 10)
    write_banking_log(logs / "day2.csv", 10, 10)
    env = {
        **os.environ,
        "TAO_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        "TAO_DOMAIN": str(learnable_domain_file),
        "TAO_LOGS": str(logs),
        "TAO_BASE_MODEL": str(tiny_model_dir),
        "TAO_ENGINE": "transformers",
        "TAO_ROUND_MIN_NEW_PROMPTS": "100000",  # no tuning round in this test
    }
    tao = Path(sys.executable).with_name("tao-dagster")
    server = subprocess.Popen(
        [str(tao), "dev", "--port", str(port)],
        env=env,
        cwd=PROJECT_ROOT,
        stdout=open(tmp_path / "dagster-dev.log", "w"),  # noqa: SIM115 - closed with the process
        stderr=subprocess.STDOUT,
        start_new_session=True,  # its own process group, so SIGINT reaches the webserver and the daemon
    )
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for("GraphQL endpoint", lambda: graphql(url, "{ version }").get("data"), 180, server)
        yield url, Path(env["DAGSTER_HOME"]), server
    finally:
        os.killpg(server.pid, signal.SIGINT)
        try:
            server.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()
        print((tmp_path / "dagster-dev.log").read_text()[-3000:])


def test_sensor_and_a_graphql_backfill_in_dagster_dev(dagster_dev):
    url, dagster_home, server = dagster_dev
    instance = dg.DagsterInstance.from_config(str(dagster_home))
    keys = ["day1.csv", "day2.csv"]
    wait_for("partitions from the sensor", lambda: sorted(instance.get_dynamic_partitions(log_files.name)) == keys, 180, server)

    params = {
        "partitionNames": keys,
        "assetSelection": [{"path": [name]} for name in ("raw_prompts", "candidate_responses", "reward_scores")],
        "fromFailure": False,
    }
    launched = graphql(url, LAUNCH_BACKFILL, {"params": params})["data"]["launchPartitionBackfill"]
    assert launched["__typename"] == "LaunchBackfillSuccess", launched
    backfill_id = launched["backfillId"]

    done = {"COMPLETED_SUCCESS", "COMPLETED_FAILED", "FAILED", "CANCELED"}
    backfill = wait_for("finished backfill", lambda: (b := instance.get_backfill(backfill_id)).status.value in done and b, 600, server)
    assert backfill.status.value == "COMPLETED_SUCCESS"
    runs = instance.get_runs(dg.RunsFilter(tags={"dagster/backfill": backfill_id}))
    assert len(runs) == 1, "single-run backfill policy: both partitions in one run, the model loaded once"
    assert runs[0].status == dg.DagsterRunStatus.SUCCESS
    assert runs[0].tags["dagster/asset_partition_range_start"] == "day1.csv"
    assert runs[0].tags["dagster/asset_partition_range_end"] == "day2.csv"
    for asset in ("raw_prompts", "candidate_responses", "reward_scores"):
        assert instance.get_materialized_partitions(dg.AssetKey(asset)) == set(keys), asset
    sensor_runs = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "new_log_files"}))
    assert sorted(r.tags["dagster/partition"] for r in sensor_runs) == keys
