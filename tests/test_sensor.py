"""The log sensor against a local folder and against a real S3 endpoint (moto in server mode on 127.0.0.1,
the `s3_endpoint` fixture), through the same LogSourceResource and dagster-aws S3Resource the product uses."""

import json
import os
import time
from pathlib import Path

import dagster as dg
import pytest
from dagster_aws.s3 import S3Resource

from tao_dagster.defs.flywheel.jobs import prompt_assets
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import DomainResource, FlywheelResource, LogSourceResource, PolicyResource, WarehouseResource
from tao_dagster.generation import open_engine
from tao_dagster.paths import PROJECT_ROOT
from tao_dagster.pipeline import candidates
from tao_dagster.storage import partition_key

from .conftest import MODEL_CACHE, sensor_tick, tiny_resources

DOMAIN = str(PROJECT_ROOT / "assets" / "banking" / "domain.yaml")
DAY1 = "\n".join(json.dumps({"prompt": p}) for p in ("Where is my card?", "How do I top up?")) + "\n"
DAY2 = 'text\n"Can I exchange euros?"\n'


def covered(instance, request: dg.RunRequest) -> list[str]:
    """The partitions a run request scores: its partition, or its range of log_files partitions."""
    if request.partition_key:
        return [request.partition_key]
    keys = instance.get_dynamic_partitions(log_files.name)
    start, end = request.partition_key_range
    return keys[keys.index(start) : keys.index(end) + 1]


def requested(instance, result: dg.SensorResult) -> list[str]:
    return sorted(k for r in result.run_requests for k in covered(instance, r))


def sensor_lifecycle(instance, logs: LogSourceResource, put, tmp_path: Path, nested_name: str) -> str:
    """New files, repeated ticks, a restart with and without the cursor, a changed file, a new one.
    Returns the last cursor."""
    put(nested_name, DAY1)
    put("day 2.csv", DAY2)
    put("notes.txt", "not a log file")
    keys = sorted([partition_key(nested_name), partition_key("day 2.csv")])

    first = sensor_tick(instance, logs, None)
    assert requested(instance, first) == keys
    assert sorted(instance.get_dynamic_partitions(log_files.name)) == keys
    assert len(first.run_requests) == 1, "files arriving together share one run"
    assert requested(instance, sensor_tick(instance, logs, first.cursor)) == [], "a repeated tick requests nothing"

    # Ingest both files, then lose the cursor: what was ingested is recognised, not requested again.
    resources = {
        "logs": logs,
        "domain": DomainResource(domain_file=DOMAIN, heldout_fraction=0.0),
        "policy": PolicyResource(cache_dir=str(MODEL_CACHE)),
        "warehouse": WarehouseResource(path=str(tmp_path / "wh.duckdb")),
    }
    tags = {"dagster/asset_partition_range_start": keys[0], "dagster/asset_partition_range_end": keys[-1]}
    ingest = dg.materialize([raw_prompts], instance=instance, resources=resources, tags=tags)
    assert ingest.asset_materializations_for_node("raw_prompts")[0].metadata["accepted"].value == 3
    restarted = sensor_tick(instance, logs, None)
    assert requested(instance, restarted) == []
    assert json.loads(restarted.cursor) == json.loads(first.cursor)

    # A changed file is ingested again under the same partition; a new one gets its own.
    put("day 2.csv", DAY2 + '"What is my PIN?"\n')
    changed = sensor_tick(instance, logs, restarted.cursor)
    assert requested(instance, changed) == [partition_key("day 2.csv")]
    assert changed.run_requests[0].run_key not in {r.run_key for r in first.run_requests}
    assert not changed.dynamic_partitions_requests
    put("day3.jsonl", json.dumps({"prompt": "Close my account"}) + "\n")
    last = sensor_tick(instance, logs, changed.cursor)
    assert requested(instance, last) == ["day3.jsonl"]
    return last.cursor


def test_sensor_on_a_local_folder(tmp_path):
    folder = tmp_path / "logs"
    folder.mkdir()

    def put(name: str, text: str) -> None:
        path = folder / name
        path.write_text(text)
        os.utime(path, ns=(time.time_ns(), time.time_ns()))  # writes within one mtime tick still differ in size

    logs = LogSourceResource(location=str(folder), s3=S3Resource())
    with dg.instance_for_test() as instance:
        sensor_lifecycle(instance, logs, put, tmp_path, "2026-11-07 night.jsonl")


@pytest.mark.servers
def test_sensor_on_an_s3_prefix(s3_endpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("TAO_HOME", str(tmp_path / "home"))  # downloaded logs are cached there
    s3 = S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1")
    client = s3.get_client()
    client.create_bucket(Bucket="prod-logs")
    client.put_object(Bucket="prod-logs", Key="elsewhere/day0.csv", Body=DAY2)  # outside the prefix

    def put(name: str, text: str) -> None:
        client.put_object(Bucket="prod-logs", Key=f"tao/{name}", Body=text.encode())

    logs = LogSourceResource(location="s3://prod-logs/tao", s3=s3)
    with dg.instance_for_test() as instance:
        cursor = sensor_lifecycle(instance, logs, put, tmp_path, "2026/11/07.jsonl")
        # The same bytes uploaded again keep their ETag: skipped. A change within the same second of
        # LastModified is still seen, since the sensor compares ETags, not timestamps.
        put("day3.jsonl", json.dumps({"prompt": "Close my account"}) + "\n")
        assert requested(instance, sensor_tick(instance, logs, cursor)) == []
        put("day3.jsonl", json.dumps({"prompt": "Close my account now"}) + "\n")
        assert requested(instance, sensor_tick(instance, logs, cursor)) == ["day3.jsonl"]


@pytest.mark.servers
def test_a_missing_bucket_names_the_location(s3_endpoint):
    logs = LogSourceResource(location="s3://no-such-bucket/logs", s3=S3Resource(endpoint_url=s3_endpoint, region_name="us-east-1"))
    with pytest.raises(RuntimeError, match="log location s3://no-such-bucket/logs could not be listed"):
        logs.get().list_files()


@pytest.mark.slow
def test_a_burst_of_files_shares_bounded_runs_that_load_the_engine_once_each(tmp_path, tiny_model_dir, learnable_domain_file, monkeypatch):
    logs = tmp_path / "logs"
    logs.mkdir()
    queries = (PROJECT_ROOT / "assets" / "banking" / "logs" / "2026-11-02.csv").read_text().splitlines()[1:]
    for n in range(200):
        (logs / f"burst-{n:03}.jsonl").write_text(json.dumps({"prompt": f"{queries[n % len(queries)]} ({n})"}) + "\n")
    resources = tiny_resources(tmp_path / "home", logs, tiny_model_dir, learnable_domain_file)
    with dg.instance_for_test() as instance:
        tick = sensor_tick(instance, resources["logs"], None, FlywheelResource(max_files_per_run=64))
        groups = [covered(instance, r) for r in tick.run_requests]
        assert [len(g) for g in groups] == [64, 64, 64, 8], "bounded runs, not one per file"
        assert sorted(k for g in groups for k in g) == sorted(resources["logs"].get().list_files()), "each file in one run"
        assert requested(instance, sensor_tick(instance, resources["logs"], tick.cursor)) == []

        engines = []

        def counted_engine(*args):
            engines.append(args)
            return open_engine(*args)

        monkeypatch.setattr(candidates, "open_engine", counted_engine)
        run = dg.materialize(prompt_assets, instance=instance, resources=resources, tags=tick.run_requests[0].tags)
        assert run.success and len(engines) == 1, "one run, one engine for its 64 partitions"
        assert instance.get_materialized_partitions(raw_prompts.key) == set(groups[0])
        assert instance.get_materialized_partitions(dg.AssetKey("reward_scores")) == set(groups[0])
