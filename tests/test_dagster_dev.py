"""`dagster dev` for real: its daemon's sensor turns dropped log files into partitions, and a backfill
launched through the GraphQL API scores them in one run. The server is always stopped."""

from pathlib import Path

import dagster as dg
import pytest

from tao_dagster.defs.partitions import log_files

from .conftest import write_demo_log
from .support.devserver import dagster_dev, graphql, wait_for

LAUNCH_BACKFILL = """
mutation($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
  }
}"""

pytestmark = pytest.mark.servers


@pytest.fixture
def dev_server(tmp_path, tiny_model_dir, learnable_domain_file):
    """`tao-dagster dev` with a fresh project home, the tiny model and two log files in the watched folder."""
    logs = tmp_path / "logs"
    logs.mkdir()
    write_demo_log(logs / "day1.csv", 0, 10)
    write_demo_log(logs / "day2.csv", 10, 10)
    env = {
        "TAO_HOME": str(tmp_path / "home"),
        "DAGSTER_HOME": str(tmp_path / "home" / "dagster"),
        "TAO_DOMAIN": str(learnable_domain_file),
        "TAO_LOGS": str(logs),
        "TAO_BASE_MODEL": str(tiny_model_dir),
        "TAO_ENGINE": "transformers",
        "TAO_ROUND_MIN_NEW_PROMPTS": "100000",  # no tuning round in this test
    }
    with dagster_dev(env, tmp_path / "dagster-dev.log") as (url, server):
        yield url, Path(env["DAGSTER_HOME"]), server


def test_sensor_and_a_graphql_backfill_in_dagster_dev(dev_server):
    url, dagster_home, server = dev_server
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
    [sensor_run] = instance.get_runs(dg.RunsFilter(tags={"dagster/sensor_name": "new_log_files"}))  # files arriving together
    assert [sensor_run.tags[f"dagster/asset_partition_range_{end}"] for end in ("start", "end")] == keys
