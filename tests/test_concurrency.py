"""Two runs ingesting into one warehouse at the same moment: nothing corrupted, duplicated or lost."""

import json
import subprocess
import sys
import time

from tao_dagster.defs.resources import WarehouseResource

from .conftest import BANKING, MODEL_CACHE

INGEST = """
import sys, time
from pathlib import Path
import dagster as dg
from dagster_aws.s3 import S3Resource
from tao_dagster.defs.partitions import log_files
from tao_dagster.defs.prompts.assets import raw_prompts
from tao_dagster.defs.resources import DomainResource, LogSourceResource, PolicyResource, WarehouseResource

domain, logs, warehouse, key, ready, go, cache = sys.argv[1:]
resources = {
    "domain": DomainResource(domain_file=domain),
    "policy": PolicyResource(cache_dir=cache),
    "logs": LogSourceResource(location=logs, s3=S3Resource()),
    "warehouse": WarehouseResource(path=warehouse),
}
with dg.instance_for_test() as instance:
    instance.add_dynamic_partitions(log_files.name, [key])
    Path(ready).touch()
    while not Path(go).exists():  # start together once both processes have imported everything
        time.sleep(0.01)
    assert dg.materialize([raw_prompts], instance=instance, resources=resources, partition_key=key).success
"""


def test_two_ingest_runs_at_once_share_prompts_without_duplicates(tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    queries = [json.loads(line)["prompt"] for line in (BANKING / "logs" / "2026-11-04.jsonl").read_text().splitlines()]
    shared, only_a, only_b = queries[:60], queries[60:80], queries[80:100]
    for name, rows in (("a.jsonl", shared + only_a), ("b.jsonl", only_b + shared)):
        (logs / name).write_text("".join(json.dumps({"prompt": q}) + "\n" for q in rows * 20))  # repeats make the runs longer
    warehouse = tmp_path / "wh.duckdb"
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                INGEST,
                str(BANKING / "domain.yaml"),
                str(logs),
                str(warehouse),
                key,
                str(tmp_path / f"{key}.ready"),
                str(tmp_path / "go"),
                str(MODEL_CACHE),
            ]
        )
        for key in ("a.jsonl", "b.jsonl")
    ]
    try:
        deadline = time.monotonic() + 120
        while not all((tmp_path / f"{k}.ready").exists() for k in ("a.jsonl", "b.jsonl")):
            assert time.monotonic() < deadline and all(p.poll() is None for p in processes), "an ingest process did not get ready"
            time.sleep(0.05)
        (tmp_path / "go").touch()
        assert [p.wait(timeout=120) for p in processes] == [0, 0]
    finally:
        for p in processes:
            p.kill()

    db = WarehouseResource(path=str(warehouse)).get()
    assert db.query("select count(*) as n, count(distinct prompt_id) as d from prompts").rows() == [(100, 100)]
    sources = db.query("select prompt_id, count(*) filter (where not duplicate) as firsts from prompt_sources group by prompt_id")
    assert sources.height == 100 and set(sources["firsts"]) == {1}, "every prompt is new in exactly one file"
    assert db.query("select count(*) as n from prompt_sources")["n"][0] == 2 * 80 * 20
